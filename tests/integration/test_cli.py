"""Whole commands, as a user runs them: `vlmnas search`, `vlmnas export`, bad input."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import onnxruntime as ort
import optuna
import pytest
import yaml
from mlflow.tracking import MlflowClient

from dashboards import tracking_uri_for
from hardware_profiles import GENERATION_PHASES
from tests.integration._cli import REPO, TINY, vlmnas


@pytest.fixture(scope="session")
def searched(tiny_study: Path) -> Path:
    return tiny_study


@pytest.mark.slow
def test_search_records_three_complete_trials_in_optuna(searched: Path) -> None:
    study = optuna.load_study(study_name="tiny", storage=f"sqlite:///{searched / 'optuna.db'}")
    trials = study.get_trials()
    assert [t.state for t in trials] == [optuna.trial.TrialState.COMPLETE] * 3
    # the LLaVA-NeXT baseline runs first
    assert trials[0].user_attrs.get("baseline") is True
    assert (
        trials[0].params["fusion.placement"] == "early"
        and trials[0].params["fusion.share_ratio"] == 1.0
    )
    assert not any(t.user_attrs.get("baseline") for t in trials[1:])
    for t in trials:
        assert len(t.values) == 2 and 0 <= t.values[0] <= 1 and t.values[1] > 0
        assert Path(t.user_attrs["trial_dir"]) == searched / "tiny" / "trials" / str(t.number)
        assert Path(t.user_attrs["trial_dir"], "config.yaml").is_file()


@pytest.mark.slow
def test_search_logs_one_parent_and_three_children_in_mlflow(searched: Path) -> None:
    client = MlflowClient(tracking_uri_for(searched))
    exp = client.get_experiment_by_name("tiny")
    runs = client.search_runs([exp.experiment_id])
    parents = [r for r in runs if r.data.tags.get("vlmnas.role") == "study"]
    under = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parents[0].info.run_id]
    children = [r for r in under if r.data.tags.get("vlmnas.role") == "trial"]
    assert len(parents) == 1 and len(children) == 3
    # the rest are the default sampler's (auto) measurements of untrained candidates
    assert {r.data.tags.get("vlmnas.role") for r in under} == {"trial", "cheap"}
    assert all(r.info.status == "FINISHED" for r in runs)
    for child in children:
        assert {
            "cpu/accuracy",
            "cpu/latency_p50_ms",
            "cpu/size_mb",
            "val_accuracy",
            "params",
            "image_tokens",
            "prompt_tokens",
            *(f"cpu/{m}" for m in GENERATION_PHASES),  # timed with the KV-cache graphs
        } <= set(child.data.metrics)
        m = child.data.metrics
        assert 0 < m["cpu/vision_ms"] < m["cpu/ttft_ms"] <= m["cpu/e2e_ms"]
        # the profile's latency is a whole answer: the median of the same timed runs
        assert m["cpu/latency_p50_ms"] == pytest.approx(m["cpu/e2e_ms"], rel=1e-6)
        assert child.data.tags["state"] == "complete" and len(child.data.tags["arch_id"]) == 12
        assert child.data.tags["cpu/latency_source"] == "measured"
        assert child.data.tags["cpu/generation"] == "kv_cache"
        assert "lm.width" in child.data.params
        artifacts = {a.path for a in client.list_artifacts(child.info.run_id)}
        assert {"config.yaml", "metrics.json"} <= artifacts


@pytest.mark.slow
def test_export_writes_loadable_front(searched: Path) -> None:
    run = vlmnas("export", f"study.workdir={searched}", "study.name=tiny", *TINY)
    assert run.returncode == 0, run.stderr
    front = json.loads((searched / "tiny" / "pareto.json").read_text())
    exported = sorted((searched / "tiny" / "export").iterdir())
    assert [int(p.name) for p in exported] == sorted(m["number"] for m in front)
    for folder in exported:
        cfg = yaml.safe_load((folder / "config.yaml").read_text())
        assert {"arch", "arch_id", "trainer", "data"} <= set(cfg)
        metrics = json.loads((folder / "metrics.json").read_text())
        assert metrics["objectives"]["cpu/accuracy"] == metrics["metrics"]["cpu/accuracy"]
        assert cfg["deployment"]["model"] == "generation/"
        manifest = json.loads((folder / "generation" / "generation.json").read_text())
        for part in ("vision", "embedding", "decoder"):
            graph = manifest["graphs"][part]
            sess = ort.InferenceSession(
                str(folder / "generation" / graph["file"]), providers=["CPUExecutionProvider"]
            )
            # an input the graph never reads is left out of it by the exporter
            assert {i.name for i in sess.get_inputs()} <= set(graph["inputs"])
            assert [o.name for o in sess.get_outputs()] == graph["outputs"]


@pytest.mark.slow
def test_rerun_with_same_name_keeps_finished_trials(searched: Path) -> None:
    run = vlmnas(
        "search", f"study.workdir={searched}", "study.name=tiny", "study.n_trials=3", *TINY
    )
    assert run.returncode == 0, run.stderr[-2000:]
    assert "3 trials finished, 0 to run" in run.stdout
    study = optuna.load_study(study_name="tiny", storage=f"sqlite:///{searched / 'optuna.db'}")
    assert len(study.get_trials()) == 3


def make_bars(root: Path, train: int, val: int) -> Path:
    """A user data set from another generator than shapes-VQA (examples/bars_vqa.py)."""
    script = REPO / "examples" / "bars_vqa.py"
    subprocess.run(
        [sys.executable, str(script), str(root), "--train", str(train), "--val", str(val)],
        check=True,
    )
    return root


@pytest.mark.slow
def test_search_on_user_llava_data(tmp_path: Path) -> None:
    data = make_bars(tmp_path / "bars", 40, 10)
    workdir = tmp_path / "runs"
    run = vlmnas(
        "search",
        "data=llava",
        f"data.root={data}",
        f"study.workdir={workdir}",
        "study.name=bars",
        "study.n_trials=2",
        *(arg for arg in TINY if not arg.startswith("data.")),  # llava data has its own size
    )
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    study = optuna.load_study(study_name="bars", storage=f"sqlite:///{workdir / 'optuna.db'}")
    assert len([t for t in study.get_trials() if t.state == optuna.trial.TrialState.COMPLETE]) == 2


def _bad_llava(tmp_path: Path) -> Path:
    root = make_bars(tmp_path / "bad", 3, 2)
    records = json.loads((root / "val.json").read_text())
    records[1]["conversations"][0]["from"] = "gpt"
    (root / "val.json").write_text(json.dumps(records))
    return root


def _has_cuda() -> bool:
    import torch

    return torch.cuda.is_available()


# Each case runs `vlmnas search` in this interpreter (`studies.cli.main`, the function the
# console script calls): a fresh Python per case costs ~16 s of imports on 2 cores. One
# case, below, runs the real command in its own process for the exit status and stderr.
@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["data=llava"], "data.root is required"),
        (
            ["data=llava", "data.root=/nonexistent/dir"],
            "data.root='/nonexistent/dir' is not a directory",
        ),
        (
            ["hardware=[tpu]"],
            "hardware='tpu' is not a known option; allowed ['cpu', 'gpu', 'npu_htp']",
        ),
        pytest.param(
            ["hardware=[cpu,gpu]"],
            "hardware.gpu: needs a CUDA device",
            marks=pytest.mark.skipif(_has_cuda(), reason="this machine has a CUDA device"),
        ),
        (
            ["study.optional_profiles=[gpu]"],
            "study.optional_profiles has 'gpu', which is not selected; hardware=['cpu']",
        ),
        (["search_space=huge"], "search_space='huge' is not a known option"),
        (
            ["study.n_trials=many"],
            "study.n_trials='many': must be an integer",
        ),
        (["trainer.max_epochs=1.5"], "trainer.max_epochs"),
        (
            ["study.sampler=grid"],
            "study.sampler='grid': allowed 'auto', 'nsga2', 'nsga3', 'tpe', 'gp', 'random'",
        ),
        ("BAD_LLAVA", "val.json record 1"),
    ],
)
def test_bad_input_is_one_line_before_anything_is_written(
    tmp_path: Path, args, needle: str, capsys
) -> None:
    from studies.cli import main

    if args == "BAD_LLAVA":
        args = ["data=llava", f"data.root={_bad_llava(tmp_path)}"]
    workdir = tmp_path / "runs"
    assert main(["search", f"study.workdir={workdir}", *args]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("vlmnas: error: "), lines
    assert needle in lines[0]
    assert not (workdir / "optuna.db").exists() and not (workdir / "mlflow.db").exists()


@pytest.mark.slow
def test_bad_input_exits_2_with_one_line_from_the_command(tmp_path: Path) -> None:
    workdir = tmp_path / "runs"
    run = vlmnas(
        "search", f"study.workdir={workdir}", "data=llava", f"data.root={_bad_llava(tmp_path)}"
    )
    assert run.returncode == 2
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("vlmnas: error: "), run.stderr
    assert "val.json record 1" in lines[0]
    assert not (workdir / "optuna.db").exists() and not (workdir / "mlflow.db").exists()


@pytest.mark.slow
def test_dashboard_serves_the_study_on_loopback(searched: Path) -> None:
    import time
    import urllib.request

    from tests.integration._net import free_port, start_dashboard

    port = free_port()
    server = start_dashboard(searched, "tiny", port)
    try:
        api = f"http://127.0.0.1:{port}/api/2.0/mlflow/experiments/get-by-name?experiment_name=tiny"
        deadline = time.monotonic() + 90
        while True:
            try:
                with urllib.request.urlopen(api, timeout=5) as response:
                    body = json.loads(response.read())
                break
            except OSError:
                assert server.poll() is None, server.stdout.read() if server.stdout else ""
                assert time.monotonic() < deadline, "the MLflow UI did not come up"
                time.sleep(1)
        assert body["experiment"]["name"] == "tiny"
    finally:
        server.terminate()
        output, _ = server.communicate(timeout=30)
    assert f"MLflow UI at http://127.0.0.1:{port}/#/experiments/" in output
    assert "optuna-dashboard sqlite:///" in output
