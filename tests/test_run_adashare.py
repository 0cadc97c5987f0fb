"""`efficientdl adashare` under the run protocol, as a user runs it (subprocesses on the tiny
procedural config): run folders and --resume, config.json and summary.json, divergence, YAML 1.2
floats, Ctrl-C, TensorBoard scalars, one-line user errors and data-only checkpoints."""

import json
import math
import re
import shlex
import shutil

import pytest
import torch
import yaml

from adashare_support import TINY
from conftest import assert_one_error, folder_md5, interrupt_when_exists, run_cli
from efficientdl.adashare.config import AdaShareConfig
from efficientdl.adashare.phases import AdaShareRun, search, training
from efficientdl.core import DivergenceError, RunFolderError
from efficientdl.core.config import apply_overrides, from_dict
from efficientdl.core.run import holds_run

pytestmark = pytest.mark.usefixtures("one_thread")


def write_tiny(folder, *overrides) -> str:
    """The tiny config on one thread as a YAML file in `folder` (dotted overrides applied)."""
    path = folder / "tiny.yaml"
    path.write_text(yaml.safe_dump(apply_overrides(TINY, ["threads=1", *overrides])))
    return str(path)


def ada(action, *args, cwd, **kwargs):
    return run_cli("adashare", action, *args, "--quiet", cwd=cwd, **kwargs)


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """A finished tiny pipeline run with --tensorboard: (work folder, run folder, config)."""
    work = tmp_path_factory.mktemp("finished")
    config = write_tiny(work)
    proc = ada("pipeline", "--config", config, "--run-dir", "R", "--tensorboard", cwd=work)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return work, work / "R", config


def test_a_finished_run_is_refused_without_resume_and_with_a_changed_seed(finished):
    work, run, config = finished
    before = folder_md5(run)
    stored = json.loads((run / "config.json").read_text())
    assert stored["method"] == "adashare" and stored["config"]["seed"] == 5
    assert not (run / "config.yaml").exists()
    summary = json.loads((run / "summary.json").read_text())
    assert summary["action"] == "pipeline" and "adashare" in summary["result"]["runs"]
    refused = ada("pipeline", "--run-dir", "R", "--set", "seed=1", cwd=work)
    assert_one_error(refused, "R", "--resume")
    changed = ada("pipeline", "--run-dir", "R", "--resume", "--set", "seed=1", cwd=work)
    assert_one_error(changed, "'seed'", "stored 5", "new 1")
    assert folder_md5(run) == before


def test_resuming_a_finished_pipeline_skips_every_phase(finished, tmp_path):
    work, run, _ = finished
    shutil.copytree(run, tmp_path / "R")
    proc = run_cli("adashare", "pipeline", "--run-dir", "R", "--resume", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "skipped" in proc.stderr and "resuming" in proc.stderr
    ours, theirs = (json.loads((r / "results.json").read_text()) for r in (run, tmp_path / "R"))
    assert ours == theirs
    assert (tmp_path / "R" / "config.json").read_bytes() == (run / "config.json").read_bytes()


def test_tensorboard_scalars_of_every_phase(finished):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    _, run, _ = finished
    events = EventAccumulator(str(run / "tensorboard"))
    events.Reload()
    tags = set(events.Tags()["scalars"])
    for tag in (
        "warmup/train_loss",
        "search/tau",
        "search/lr",
        "search/val/seg/miou",
        "policy/seg/block_7",
        "policy/depth/block_0",
        "retrain/sample_00/val_score",
    ):
        assert tag in tags, sorted(tags)
    taus = [e.value for e in events.Scalars("search/tau")]
    assert taus[0] == pytest.approx(5.0) and taus == sorted(taus, reverse=True) and len(taus) > 2
    probs = [e.value for e in events.Scalars("policy/seg/block_7")]
    assert all(0 < p < 1 for p in probs)


def test_checkpoints_hold_only_data(finished):
    _, run, _ = finished
    paths = sorted(run.rglob("*.pt"))
    assert {p.relative_to(run).as_posix() for p in paths} >= {
        "search/latest.pt",
        "warmup/checkpoint.pt",
        "retrain/sample_00/best.pt",
    }
    for path in paths:  # plain torch: no allow-listed globals at all
        torch.load(path, weights_only=True)


def test_phases_one_by_one_and_yaml_floats(tmp_path):
    # `lr: 1e-3` in the file and `--set train.backbone_lr=1e-3` (YAML 1.2 spellings)
    text = yaml.safe_dump({**TINY, "threads": 1}).replace("\ntrain:\n", "\ntrain:\n  lr: 1e-3\n")
    (tmp_path / "tiny.yaml").write_text(text)
    assert "lr: 1e-3" in text
    first = ada(
        "warmup", "--config", "tiny.yaml", "--run-dir", "R", "--set", "train.backbone_lr=1e-3",
        cwd=tmp_path,
    )  # fmt: skip
    assert first.returncode == 0, first.stderr[-3000:]
    stored = json.loads((tmp_path / "R" / "config.json").read_text())["config"]
    assert stored["train"]["lr"] == stored["train"]["backbone_lr"] == 0.001
    assert json.loads((tmp_path / "R" / "summary.json").read_text())["action"] == "warmup"
    before = folder_md5(tmp_path / "R")
    assert_one_error(ada("search", "--run-dir", "R", cwd=tmp_path), "R", "--resume")
    assert folder_md5(tmp_path / "R") == before
    # evaluate / visualize read a run: nothing selected or drawn yet is a one-line error
    assert_one_error(ada("evaluate", "--run-dir", "R", cwd=tmp_path), "adashare_result.json")
    assert_one_error(ada("visualize", "--run-dir", "R", cwd=tmp_path), "policies")
    assert folder_md5(tmp_path / "R") == before
    # without --config, --resume continues with the stored config; total_iters may only grow
    second = ada(
        "search", "--run-dir", "R", "--resume", "--set", "train.total_iters=18", cwd=tmp_path
    )
    assert second.returncode == 0, second.stderr[-3000:]
    assert json.loads((tmp_path / "R" / "search" / "done.json").read_text())["iters"] == 18
    stored = json.loads((tmp_path / "R" / "config.json").read_text())["config"]
    assert stored["train"]["total_iters"] == 18 and stored["train"]["lr"] == 0.001


def test_run_folder_misuse_is_one_line(tmp_path):
    config = write_tiny(tmp_path)
    (tmp_path / "empty").mkdir()
    assert_one_error(
        ada("warmup", "--config", config, "--run-dir", "empty", "--resume", cwd=tmp_path),
        "empty",
        "no run",
    )
    (tmp_path / "afile").write_text("x")
    assert_one_error(ada("search", "--config", config, "--run-dir", "afile", cwd=tmp_path), "afile")
    assert_one_error(ada("evaluate", "--run-dir", "nowhere", cwd=tmp_path), "nowhere")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["afile", "empty", "tiny.yaml"]
    assert not any((tmp_path / "empty").iterdir())


def test_user_errors_are_one_line_and_leave_nothing(tmp_path):
    config = write_tiny(tmp_path)
    assert_one_error(
        ada("baseline", "--config", config, "--name", "bogus", cwd=tmp_path), "bogus", "single_task"
    )
    assert_one_error(
        ada("retrain", "--config", config, "--run-dir", "R", "--sample", "3", cwd=tmp_path),
        "--sample",
        "0..0",
    )
    assert_one_error(
        ada("warmup", "--config", config, "--set", "model.width=0", cwd=tmp_path), "model.width"
    )
    assert_one_error(
        ada("pipeline", "--config", config, "--set", "selection_reference=none.json", cwd=tmp_path),
        "none.json",
    )
    leftovers = sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*"))
    assert not any(holds_run(p) for p in tmp_path.rglob("*") if p.is_dir())
    assert not (tmp_path / "R").exists() and "tiny.yaml" in leftovers


def test_divergence_stops_the_cli_with_one_line(tmp_path):
    config = write_tiny(tmp_path, "train.warmup_iters=12", "train.ckpt_every=1")
    proc = ada("warmup", "--config", config, "--run-dir", "R", "--set", "train.lr=1.0e+6",
               cwd=tmp_path)  # fmt: skip
    line = assert_one_error(proc, "adashare warmup", "loss became", "at iteration")
    at = int(line.split("at iteration ")[1].split()[0])
    kept = torch.load(tmp_path / "R" / "warmup" / "checkpoint.pt", weights_only=True)
    assert kept["state"]["it"] == at - 1  # the last good checkpoint, before the bad step
    assert not (tmp_path / "R" / "warmup" / "result.json").exists()


def tiny(*overrides):
    return from_dict(AdaShareConfig, apply_overrides(TINY, list(overrides)))


@pytest.mark.parametrize("where", ["search (weight)", "search (policy)", "retrain_00"])
def test_divergence_guard_in_every_loop(tmp_path, monkeypatch, where):
    tr = AdaShareRun(tiny(), run_dir=tmp_path)
    module = training if where.startswith("retrain") else search
    real, calls = module.weighted_loss, {"n": 0}
    blow_at = {"search (weight)": 3, "search (policy)": 5, "retrain_00": 2}[where]

    def exploding(*args):  # the n-th loss of this loop is 1e6 times too large
        loss, parts = real(*args)
        calls["n"] += 1
        return (
            loss * 1e6 if calls["n"] == blow_at - (2 if module is search else 0) else loss
        ), parts

    if module is training:
        tr.sample()  # warm-up and search first, undisturbed
    monkeypatch.setattr(module, "weighted_loss", exploding)
    message = rf"adashare {re.escape(where)}: loss became .* at iteration {blow_at} \(above 1000×"
    with pytest.raises(DivergenceError, match=message):
        tr.retrain_all() if module is training else tr.search()
    folder = tmp_path / ("search" if module is search else "retrain/sample_00")
    kept = folder / ("latest.pt" if module is search else "checkpoint.pt")
    if kept.is_file():  # the last checkpoint is from before the bad iteration
        assert torch.load(kept, weights_only=True)["state"]["it"] < blow_at
    assert not (folder / ("done.json" if module is search else "result.json")).exists()
    assert math.isfinite(tr.guard.first)


def test_longer_search_continues_until_policies_are_drawn(tmp_path):
    AdaShareRun(tiny(), run_dir=tmp_path).search()
    longer = AdaShareRun(tiny("train.total_iters=18"), run_dir=tmp_path)
    assert longer.search()["iters"] == 18
    history = json.loads((tmp_path / "logits_history.json").read_text())
    assert history[-1]["iter"] == 18
    longer.sample()
    with pytest.raises(RunFolderError, match="total_iters=22.*policies were already drawn"):
        AdaShareRun(tiny("train.total_iters=22"), run_dir=tmp_path).search()
    assert AdaShareRun(tiny("train.total_iters=18"), run_dir=tmp_path).search()["iters"] == 18


def test_ctrl_c_names_the_command_that_continues(tmp_path):
    config = write_tiny(tmp_path, "train.warmup_iters=24", "train.total_iters=28",
                        "train.ckpt_every=2")  # fmt: skip
    code, _, err = interrupt_when_exists(
        ["adashare", "pipeline", "--config", config, "--quiet"],
        cwd=tmp_path,
        pattern="runs/adashare/*/warmup/checkpoint.pt",
    )
    assert code == 130, err[-3000:]
    assert "Traceback" not in err
    (line,) = [x for x in err.splitlines() if x.startswith("interrupted; continue with: ")]
    words = shlex.split(line.removeprefix("interrupted; continue with: "))
    (run,) = tmp_path.glob("runs/adashare/adashare-*")
    assert words[:3] == ["efficientdl", "adashare", "pipeline"] and words[-1] == "--resume"
    assert words[words.index("--run-dir") + 1] == str(run.relative_to(tmp_path))
    again = run_cli(*words[1:], cwd=tmp_path)
    assert again.returncode == 0, again.stderr[-3000:]
    assert (run / "adashare_result.json").is_file() and (run / "summary.json").is_file()
