from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from trainers import TrainerConfig, fit, model_for, torch_forward
from trainers.data import ImageCache, encode_eval, encode_train


def test_labels_cover_answers_only(shapes_data, tiny_arch) -> None:
    ds = encode_train(
        shapes_data.train[:4], shapes_data.tokenizer, tiny_arch, shapes_data.text_len, ImageCache()
    )
    _, _, _, ids, labels = ds.tensors
    tok = shapes_data.tokenizer
    row, lab = ids[0].tolist(), labels[0].tolist()
    predicted = [row[t + 1] for t, label in enumerate(lab) if label != -100]
    assert predicted == [label for label in lab if label != -100]
    answers = [a for _, a in shapes_data.train[0].turns]
    expected = []
    for a in answers:
        expected += tok.encode(a) + [tok.eos_id]
    assert predicted == expected


def test_one_training_step_lowers_loss(shapes_data, tiny_arch) -> None:
    torch.manual_seed(0)
    ds = encode_train(
        shapes_data.train[:16], shapes_data.tokenizer, tiny_arch, shapes_data.text_len, ImageCache()
    )
    model = model_for(tiny_arch, shapes_data)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    pixels, _, index, ids, labels = ds.tensors

    def loss() -> torch.Tensor:
        return F.cross_entropy(
            model(pixels, index, ids).flatten(0, 1), labels.flatten(), ignore_index=-100
        )

    before = loss()
    before.backward()
    opt.step()
    with torch.no_grad():
        assert loss().item() < before.item()


def test_fit_reports_every_epoch_and_saves(tmp_path: Path, shapes_data, tiny_arch) -> None:
    seen = []
    cfg = TrainerConfig(max_epochs=2, batch_size=16, threads=1)
    result = fit(
        tiny_arch,
        shapes_data,
        cfg,
        tmp_path,
        report=lambda e, m: seen.append((e, m["val_accuracy"])),
    )
    assert [e for e, _ in seen] == [1, 2]
    assert result.val_accuracy_history == [a for _, a in seen]
    assert (tmp_path / "model.pt").is_file() and (tmp_path / "word_tokenizer.json").is_file()
    # the reported accuracy is the exact-match rate of greedy decoding
    val = encode_eval(
        shapes_data.val, shapes_data.tokenizer, tiny_arch, shapes_data.text_len, ImageCache()
    )
    from search_spaces import decode_accuracy

    acc = decode_accuracy(
        torch_forward(result.model), val, max_new_tokens=shapes_data.max_answer_tokens
    )
    assert np.isclose(acc, result.metrics["val_accuracy"], atol=1e-6)


def test_fit_is_seeded(tmp_path: Path, shapes_data, tiny_arch) -> None:
    cfg = TrainerConfig(max_epochs=1, batch_size=16, threads=1, seed=5)
    a = fit(tiny_arch, shapes_data, cfg, tmp_path / "a")
    b = fit(tiny_arch, shapes_data, cfg, tmp_path / "b")
    for pa, pb in zip(a.model.parameters(), b.model.parameters(), strict=True):
        assert torch.equal(pa, pb)


def test_a_model_built_beforehand_trains_to_the_same_weights(
    tmp_path: Path, shapes_data, tiny_arch
) -> None:
    # A trial's step 1 builds the untrained model to time it; fit trains that one
    # instead of building it again, and must end where building it itself would.
    cfg = TrainerConfig(max_epochs=1, batch_size=16, threads=1, seed=3)
    torch.manual_seed(123)
    state = torch.random.get_rng_state()
    given = model_for(tiny_arch, shapes_data, seed=cfg.seed)
    assert torch.equal(torch.random.get_rng_state(), state)  # the global generator untouched
    again = model_for(tiny_arch, shapes_data, seed=cfg.seed)
    for pa, pb in zip(given.parameters(), again.parameters(), strict=True):
        assert torch.equal(pa, pb)
    built = fit(tiny_arch, shapes_data, cfg, tmp_path / "built")
    handed = fit(tiny_arch, shapes_data, cfg, tmp_path / "handed", model=given)
    assert handed.model is given
    for pa, pb in zip(built.model.parameters(), handed.model.parameters(), strict=True):
        assert torch.equal(pa, pb)
    assert not all(
        torch.equal(pa, pb) for pa, pb in zip(given.parameters(), again.parameters(), strict=True)
    )  # it trained


def test_without_a_listener_it_validates_once_and_trains_the_same(
    tmp_path: Path, shapes_data, tiny_arch
) -> None:
    cfg = TrainerConfig(max_epochs=2, batch_size=16, threads=1)
    listened = fit(tiny_arch, shapes_data, cfg, tmp_path / "a", report=lambda e, m: None)
    alone = fit(tiny_arch, shapes_data, cfg, tmp_path / "b")
    assert len(listened.val_accuracy_history) == 2 and len(alone.val_accuracy_history) == 1
    assert alone.metrics["val_accuracy"] == listened.metrics["val_accuracy"]
    assert alone.metrics["epochs"] == listened.metrics["epochs"] == 2
    for pa, pb in zip(listened.model.parameters(), alone.model.parameters(), strict=True):
        assert torch.equal(pa, pb)


def test_cached_fit_trains_once_per_architecture(tmp_path: Path, shapes_data, tiny_arch) -> None:
    import dataclasses

    from trainers import cached_fit

    cfg = TrainerConfig(max_epochs=2, batch_size=16, threads=1)
    cache = tmp_path / "cache"
    first, hit1 = cached_fit(
        tiny_arch, shapes_data, cfg, tmp_path / "a", cache, report=lambda e, m: None
    )
    replayed = []
    # same architecture, other quantization: same weights, no training
    requant = dataclasses.replace(tiny_arch, quant=(("cpu", "int8_dynamic"),))
    second, hit2 = cached_fit(
        requant, shapes_data, cfg, tmp_path / "b", cache, report=lambda e, m: replayed.append(e)
    )
    assert (hit1, hit2) == (False, True)
    assert replayed == [1, 2] and second.val_accuracy_history == first.val_accuracy_history
    for pa, pb in zip(first.model.parameters(), second.model.parameters(), strict=True):
        assert torch.equal(pa, pb)
    assert (tmp_path / "b" / "model.pt").is_file()
    # another budget is another entry
    _, hit3 = cached_fit(
        tiny_arch, shapes_data, dataclasses.replace(cfg, max_epochs=1), tmp_path / "c", cache
    )
    assert hit3 is False
