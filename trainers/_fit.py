"""Train one candidate with PyTorch Lightning: answer-token LM loss, exact-match accuracy."""

from __future__ import annotations

import contextlib
import math
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

import lightning as L
import numpy as np
import torch
import torch.nn.functional as F
import torchmetrics
from lightning.pytorch.utilities.types import STEP_OUTPUT
from pydantic import Field, field_validator
from pydantic.dataclasses import dataclass as pydantic_dataclass

from common import CONFIG, busy, checked
from search_spaces import (
    ArchConfig,
    EncodedVQA,
    VlmModel,
    add_lora,
    backbone_for,
    build_model,
    cut_down,
    exact_match,
    greedy_decode,
    merge_lora,
    model_from_config,
)

from ._recipes import Teacher, align, distillation_loss, similarities
from .data import (
    ImageCache,
    Record,
    VQAData,
    WordTokenizer,
    augment_batch,
    conversation_ids,
    encode_eval,
    encode_train,
    paraphrase,
    policy_for,
)

EpochReport = Callable[[int, dict[str, float]], None]
Positive = Annotated[int, Field(ge=1)]


@checked(ValueError, where="trainer")
@pydantic_dataclass(config=CONFIG)
class TrainerConfig:
    """The `trainer` config group: the training budget and recipe of every trial."""

    max_epochs: Positive = 8
    batch_size: Positive = 32
    lr: Annotated[float, Field(gt=0.0)] = 1e-3
    weight_decay: Annotated[float, Field(ge=0.0)] = 0.01
    warmup_fraction: Annotated[float, Field(ge=0.0, le=1.0)] = 0.1
    seed: int = 0
    threads: Positive = 2  # torch intra-op threads; 2 = all of the reference machine's cores
    val_batch_size: Positive = 128
    # Recompute each transformer block's activations in backward instead of keeping them.
    grad_checkpointing: bool = False
    # Distillation teacher (for candidates with recipe.distill_weight > 0): "baseline"
    # (the search space's baseline trained for teacher_epochs, once per study and
    # cached) or the path of an exported candidate folder (config.yaml + model).
    teacher: str = "baseline"
    teacher_epochs: Positive = 16

    @field_validator("teacher")
    @classmethod
    def _teacher_exists(cls, teacher: str) -> str:
        if teacher != "baseline" and not (Path(teacher) / "config.yaml").is_file():
            raise ValueError(
                "allowed 'baseline' or an exported candidate folder (with config.yaml and"
                " model.pt or model.onnx)"
            )
        return teacher


@dataclass
class TrainResult:
    checkpoint: Path
    model: VlmModel
    metrics: dict[str, float]
    val_accuracy_history: list[float] = field(default_factory=list)


class ExactMatchAccuracy(torchmetrics.Metric):
    """Share of answers whose greedy decoding equals the reference exactly."""

    correct: torch.Tensor  # states registered by add_state
    total: torch.Tensor

    def __init__(self) -> None:
        super().__init__()
        self.add_state("correct", default=torch.tensor(0), dist_reduce_fx="sum")
        self.add_state("total", default=torch.tensor(0), dist_reduce_fx="sum")

    def update(self, matches: torch.Tensor) -> None:
        self.correct += matches.sum()
        self.total += matches.numel()

    def compute(self) -> torch.Tensor:
        return self.correct.float() / self.total.clamp(min=1)


def torch_forward(
    model: torch.nn.Module,
) -> Callable[[np.ndarray, np.ndarray, np.ndarray], np.ndarray]:
    """Wrap a model as the numpy `forward` that `greedy_decode` expects."""

    def forward(pixels: np.ndarray, index: np.ndarray, ids: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return model(
                torch.from_numpy(pixels), torch.from_numpy(index), torch.from_numpy(ids)
            ).numpy()

    return forward


class VQAModule(L.LightningModule):
    """Stage 2, the task. Batches are rows of `train_rows`: (pixels, tile_mask,
    image_index, input_ids, labels, row, allow_flip, allow_jitter, teacher_ok)."""

    def __init__(
        self,
        model: VlmModel,
        cfg: TrainerConfig,
        max_answer_tokens: int,
        teacher: Teacher | None = None,
    ) -> None:
        super().__init__()
        self.model = model
        self.cfg = cfg
        self.max_answer_tokens = max_answer_tokens
        self.val_accuracy = ExactMatchAccuracy()
        self.recipe = model.arch.recipe
        self.teacher = None if teacher is None else torch.from_numpy(teacher.logits)
        self.augment_rng = torch.Generator().manual_seed(cfg.seed + 1)

    def training_step(self, batch: list[torch.Tensor], batch_idx: int) -> torch.Tensor:
        pixels, mask, index, ids, labels, row, allow_flip, allow_jitter, teacher_ok = batch
        if self.recipe.augment:
            pixels = augment_batch(pixels, mask, allow_flip, allow_jitter, self.augment_rng)
        logits = self.model(pixels, index, ids)
        loss = F.cross_entropy(logits.flatten(0, 1), labels.flatten(), ignore_index=-100)
        if self.teacher is not None and self.recipe.distill_weight > 0:
            # Rows whose question was paraphrased have no teacher logits for their text.
            kd_labels = labels.masked_fill(~teacher_ok.unsqueeze(1), -100)
            kd = distillation_loss(
                logits, self.teacher[row].float(), kd_labels, self.recipe.distill_temperature
            )
            self.log("distill_loss", kd, on_step=False, on_epoch=True)
            w = self.recipe.distill_weight
            loss = (1 - w) * loss + w * kd
        if not torch.isfinite(loss):
            raise FloatingPointError(f"training loss is {loss.item()} at step {self.global_step}")
        self.log("train_loss", loss, on_step=False, on_epoch=True)
        return loss

    def transfer_batch_to_device(self, batch, device, dataloader_idx):  # type: ignore[no-untyped-def]
        # Validation batches are numpy `EncodedVQA` for the runtime-neutral decoder; CPU only.
        if isinstance(batch, EncodedVQA):
            return batch
        return super().transfer_batch_to_device(batch, device, dataloader_idx)

    def validation_step(self, batch: EncodedVQA, batch_idx: int) -> None:
        predicted = greedy_decode(torch_forward(self.model), batch, self.max_answer_tokens)
        self.val_accuracy.update(torch.from_numpy(exact_match(predicted, batch)))
        self.log("val_accuracy", self.val_accuracy, on_step=False, on_epoch=True)

    def configure_optimizers(self):  # type: ignore[no-untyped-def]
        opt = torch.optim.AdamW(
            [p for p in self.parameters() if p.requires_grad],
            lr=self.cfg.lr,
            weight_decay=self.cfg.weight_decay,
        )
        total = max(int(self.trainer.estimated_stepping_batches), 1)
        warmup = max(int(total * self.cfg.warmup_fraction), 1)

        def schedule(step: int) -> float:
            if step < warmup:
                return (step + 1) / warmup
            return 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(total - warmup, 1)))

        sched = torch.optim.lr_scheduler.LambdaLR(opt, schedule)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}


class _ReportEpochs(L.Callback):
    def __init__(self, report: EpochReport | None) -> None:
        self.report = report
        self.history: list[float] = []

    def on_validation_epoch_end(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        acc = float(trainer.callback_metrics["val_accuracy"])
        self.history.append(acc)
        if self.report is not None:
            loss = trainer.callback_metrics.get("train_loss")
            metrics = {"val_accuracy": acc, "epoch": trainer.current_epoch + 1}
            if loss is not None:
                metrics["train_loss"] = float(loss)
            self.report(trainer.current_epoch + 1, metrics)


class _HoldCoresPerBatch(L.Callback):
    """Holds `busy()` across every training and validation batch.

    A latency measurement of another trial on this host (`measuring()`) then waits for the
    batch in flight and keeps the next one from starting, instead of sharing the cores with
    it. Between batches the lock is free, so a measurement waits at most one batch.
    """

    def __init__(self) -> None:
        self._held = contextlib.ExitStack()

    def _acquire(self) -> None:
        # Drop a hold left by a batch whose end hook never ran (a skipped batch) first.
        self._release()
        self._held.enter_context(busy())

    def _release(self) -> None:
        self._held.close()  # idempotent: a closed ExitStack holds nothing

    def on_train_batch_start(
        self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        self._acquire()

    def on_train_batch_end(
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        outputs: STEP_OUTPUT,
        batch: Any,
        batch_idx: int,
    ) -> None:
        self._release()

    def on_validation_batch_start(
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        self._acquire()

    def on_validation_batch_end(
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        outputs: STEP_OUTPUT,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        self._release()

    def on_exception(
        self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException
    ) -> None:
        self._release()

    def teardown(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        self._release()


# Training rows block influence is measured on (lm.drop_layers of a cut-down candidate)
CALIBRATION_ROWS = 32


def model_for(
    arch: ArchConfig,
    data: VQAData,
    images: ImageCache | None = None,
    *,
    seed: int | None = None,
) -> VlmModel:
    """The untrained model of `arch`: built at its sizes for `data`'s vocabulary, or cut
    from its checkpoint (`arch.backbone`), the checkpoint's weights loaded.

    With `seed`, its random parts (every weight from scratch; the adapters a cut installs)
    are drawn from `torch.manual_seed(seed)` and the global generator is left as it was,
    so two calls with one seed give the same model: what `fit` builds when it is not
    handed one."""
    if seed is not None:
        with torch.random.fork_rng():
            torch.manual_seed(seed)
            return model_for(arch, data, images)
    if arch.backbone is None:
        return _model_for(arch, data.tokenizer)
    calibration: list[tuple[torch.Tensor, ...]] = []
    if arch.lm.drop_layers:
        rows = encode_train(
            data.train[:CALIBRATION_ROWS],
            data.tokenizer,
            arch,
            data.text_len,
            images or ImageCache(),
        )
        pixels, _, index, ids, _ = rows.tensors
        calibration = [
            (pixels[i : i + 8], index[i : i + 8], ids[i : i + 8]) for i in range(0, len(ids), 8)
        ]
    return cut_down(backbone_for(arch), arch, calibration)


def needs_training(arch: ArchConfig) -> bool:
    """Whether `fit` has anything to train: always from scratch; for a cut-down candidate
    only LoRA or the adapters it adds (a plain cut is training-free)."""
    f = arch.fusion
    return arch.backbone is None or bool(arch.adapt.lora_rank or f.cross or f.share_ratio < 1.0)


def save_weights(model: VlmModel, folder: Path) -> Path:
    """`model.pt` (the weights) and `config.json` (the transformers structure they fit),
    what `load_trained` reads back."""
    folder.mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), folder / "model.pt")
    model.hf.config.to_json_file(str(folder / "config.json"))
    return folder / "model.pt"


def load_trained(arch: ArchConfig, folder: Path) -> VlmModel:
    """The trained model from a folder `fit` wrote (a trial's): `model.pt` into the
    structure its `config.json` records."""
    model = model_from_config(folder / "config.json", arch)
    model.load_state_dict(torch.load(folder / "model.pt", weights_only=True))
    return model.eval()


def _model_for(arch: ArchConfig, tok: WordTokenizer) -> VlmModel:
    return build_model(
        arch,
        vocab_size=len(tok),
        image_token_id=tok.image_id,
        pad_token_id=tok.pad_id,
        eos_token_id=tok.eos_id,
    )


def _trainable(model: VlmModel, arch: ArchConfig) -> Any:
    """For a cut-down candidate, freeze the checkpoint: LoRA (returned, to be merged) and
    the adapters vlmnas installed train, nothing else. From scratch, everything trains."""
    if arch.backbone is None:
        return None
    lora = add_lora(model.hf, arch.adapt.lora_rank) if arch.adapt.lora_rank else None
    for name, p in model.hf.named_parameters():
        if "lora_" not in name:
            p.requires_grad_(any(part in name for part in _ADAPTER_PARTS))
    return lora


# parameter names of the modules `search_spaces._adapters` installs
_ADAPTER_PARTS = (".xattn.", ".image_mlp.")


def train_rows(
    arch: ArchConfig, data: VQAData, images: ImageCache, seed: int
) -> tuple[torch.utils.data.TensorDataset, int]:
    """The training rows `VQAModule` reads, one per training record: (pixels, tile_mask,
    image_index, input_ids, labels, row, allow_flip, allow_jitter, teacher_ok); and how many records
    got paraphrased questions (`recipe.augment`; a paraphrase that would not fit the
    model's text length is not used)."""
    records: list[Record] = list(data.train)
    original = [True] * len(records)
    if arch.recipe.augment:
        rng = random.Random(seed)
        for i, r in enumerate(records):
            new = paraphrase(r, rng)
            if new != r and len(conversation_ids(data.tokenizer, new)[0]) <= data.text_len:
                records[i], original[i] = new, False
    base = encode_train(records, data.tokenizer, arch, data.text_len, images)
    policy = [policy_for(r) for r in records]
    extra = (
        torch.arange(len(records)),
        torch.tensor([p[0] for p in policy]),
        torch.tensor([p[1] for p in policy]),
        torch.tensor(original),
    )
    return torch.utils.data.TensorDataset(*base.tensors, *extra), original.count(False)


def fit(
    arch: ArchConfig,
    data: VQAData,
    cfg: TrainerConfig,
    out_dir: Path,
    *,
    report: EpochReport | None = None,
    images: ImageCache | None = None,
    teacher: Teacher | None = None,
    model: VlmModel | None = None,
) -> TrainResult:
    """Train `arch` on `data` for `cfg.max_epochs` with `arch.recipe`; writes `model.pt`
    and `word_tokenizer.json`.

    `model` is the untrained model as `model_for(arch, data, images, seed=cfg.seed)`
    returns it, where the caller has built it already (a trial's step 1 did, to time
    it): it is trained in place instead of being built, or for a cut loaded from the
    checkpoint, a second time. Either way the weights are the same.

    With `report`, the model is validated after every epoch and `report(epoch,
    {"val_accuracy": ...})` called, so a scheduler can stop the trial early; without
    one, only after the last epoch (the history then has one entry; the Quick start's
    baseline trained in 135 s against 141 s with every epoch validated, BENCHMARKS §1).
    The weights are the same either way. With `recipe.align_epochs`, stage 1 (contrastive
    alignment, and the similarity filter) runs first; `teacher` is needed when
    `recipe.distill_weight > 0`.
    """
    recipe = arch.recipe
    if recipe.distill_weight > 0 and teacher is None:
        raise ValueError("recipe.distill_weight > 0 needs a teacher (trainers.study_teacher)")
    torch.set_num_threads(cfg.threads)
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    images = images or ImageCache()
    tok = data.tokenizer
    if model is None:
        model = model_for(arch, data, images, seed=cfg.seed)
    lora = _trainable(model, arch)
    model.set_checkpointing(cfg.grad_checkpointing)
    with busy():  # decoding and resizing every image is training work too
        train_set, paraphrased = train_rows(arch, data, images, cfg.seed)
        val_set = encode_eval(data.val, tok, arch, data.text_len, images)
    stage1: dict[str, float] = {"paraphrased": float(paraphrased)} if recipe.augment else {}
    start = time.perf_counter()
    if recipe.align_epochs:
        losses = align(
            model,
            train_set,
            epochs=recipe.align_epochs,
            batch_size=cfg.batch_size,
            lr=cfg.lr,
            pad_id=tok.pad_id,
            generator=torch.Generator().manual_seed(cfg.seed),
        )
        stage1.update({"align_loss_first": losses[0], "align_loss_last": losses[-1]})
        if recipe.filter_threshold > -1.0:
            keep = similarities(model, train_set, tok.pad_id) >= recipe.filter_threshold
            stage1["filtered_pairs"] = float((~keep).sum())
            if not keep.any():
                raise ValueError(
                    f"recipe.filter_threshold={recipe.filter_threshold} dropped every"
                    f" training pair; lower it"
                )
            train_set = torch.utils.data.TensorDataset(*(t[keep] for t in train_set.tensors))
        model.train()  # stage 2 starts in training mode
    align_s = time.perf_counter() - start
    val_batches = [
        val_set.slice(i, i + cfg.val_batch_size) for i in range(0, len(val_set), cfg.val_batch_size)
    ]
    generator = torch.Generator().manual_seed(cfg.seed)
    train_loader = torch.utils.data.DataLoader(
        train_set, batch_size=cfg.batch_size, shuffle=True, generator=generator, drop_last=False
    )
    # pre-sliced batches, passed through as they are (batch_size=None)
    val_loader: torch.utils.data.DataLoader[EncodedVQA] = torch.utils.data.DataLoader(
        val_batches,  # type: ignore[arg-type]  # a list is a map-style dataset
        batch_size=None,
        collate_fn=_identity,  # type: ignore[arg-type]  # no batching: one item each
    )

    module = VQAModule(model, cfg, data.max_answer_tokens, teacher)
    epochs = _ReportEpochs(report)
    trainer = L.Trainer(
        max_epochs=cfg.max_epochs,
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        check_val_every_n_epoch=1 if report is not None else cfg.max_epochs,
        callbacks=[epochs, _HoldCoresPerBatch()],
    )
    start = time.perf_counter()
    trainer.fit(module, train_loader, val_loader)
    train_s = time.perf_counter() - start + align_s
    model.set_checkpointing(False)
    if lora is not None:  # fold LoRA into the weights: the result is plain again
        model.hf = merge_lora(lora)
    for p in model.parameters():
        p.requires_grad_(True)

    checkpoint = save_weights(model, out_dir)
    (out_dir / "word_tokenizer.json").write_text(tok.to_json())
    metrics = {
        "val_accuracy": epochs.history[-1] if epochs.history else float("nan"),
        "train_s": train_s,
        "epochs": float(trainer.current_epoch),
        **stage1,
    }
    return TrainResult(checkpoint, model.eval(), metrics, epochs.history)


def _identity(x: EncodedVQA) -> EncodedVQA:
    return x
