"""`efficientdl snn train|evaluate|stats` follow the core run protocol, run as a user would (a
subprocess per command) on a small generated MNIST in IDX files: run folders and --resume,
divergence, Ctrl-C, overrides evaluate cannot honour, TensorBoard scalars, one-line errors."""

from __future__ import annotations

import json
import math
import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import assert_one_error, folder_md5, interrupt_when_exists, run_cli
from efficientdl.core import load_checkpoint
from efficientdl.data import write_idx

N_TRAIN, N_TEST = 60, 250


def write_fake_mnist(root: Path) -> Path:
    """MNIST-shaped IDX files (60 train / 250 test); a class-dependent bright band per image."""
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for prefix, n in (("train", N_TRAIN), ("t10k", N_TEST)):
        labels = (np.arange(n) % 10).astype(np.uint8)
        images = rng.integers(0, 60, size=(n, 28, 28), dtype=np.uint8)
        for i, label in enumerate(labels):
            images[i, 2 * label : 2 * label + 6, 4:24] = 255
        write_idx(root / f"{prefix}-images-idx3-ubyte.gz", images)
        write_idx(root / f"{prefix}-labels-idx1-ubyte.gz", labels)
    return root


@pytest.fixture(scope="module")
def data_root(tmp_path_factory) -> Path:
    return write_fake_mnist(tmp_path_factory.mktemp("mnist"))


def tiny(data: Path, *extra: str, epochs: int = 1, checkpoint_every: int = 3) -> list[str]:
    """`snn train` of the packaged demo recipe, shrunk to a few seconds on the fake MNIST."""
    sets = {
        "data_root": str(data),
        "T": 2,
        "batch_size": 10,
        "epochs": epochs,
        "train_subset": "null",
        "checkpoint_every": checkpoint_every,
        "threads": 1,
    }
    args = ["snn", "train", "--config", "demo", "--no-report"]
    for key, value in sets.items():
        args += ["--set", f"{key}={value}"]
    return [*args, *extra]


@pytest.fixture(scope="module")
def finished(tmp_path_factory, data_root):
    """A finished 2-epoch run (test subset of 200, TensorBoard on) and its process."""
    cwd = tmp_path_factory.mktemp("finished")
    args = tiny(data_root, "--set", "test_subset=200", "--tensorboard", "--run-dir", "run",
                epochs=2)  # fmt: skip
    proc = run_cli(*args, cwd=cwd)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return cwd / "run", proc


def copy_run(src: Path, tmp_path: Path) -> Path:
    dst = tmp_path / "run"
    shutil.copytree(src, dst)
    return dst


def summary_of(proc) -> dict:
    out = proc.stdout
    return json.loads(out[out.index("{") :])


# --- run folders ----------------------------------------------------------------------------


def test_a_finished_run_is_refused_without_resume_and_left_untouched(finished, data_root, tmp_path):
    run = copy_run(finished[0], tmp_path)
    before = folder_md5(run)
    proc = run_cli(*tiny(data_root, "--quiet", "--run-dir", "run", epochs=2), cwd=tmp_path)
    assert_one_error(proc, "run already holds a run", "--resume")
    assert folder_md5(run) == before


@pytest.mark.parametrize("kind", ["empty", "file"])
def test_resume_needs_a_folder_that_holds_a_run(kind, data_root, tmp_path):
    target = tmp_path / "target"
    if kind == "empty":
        target.mkdir()
        fragments = ("--resume", "target holds no run")
    else:
        target.write_text("not a folder")
        fragments = ("--run-dir target is a file",)
    proc = run_cli(*tiny(data_root, "--quiet", "--run-dir", "target", "--resume"), cwd=tmp_path)
    assert_one_error(proc, *fragments)
    if kind == "empty":
        assert list(target.iterdir()) == []


def test_resume_with_a_changed_value_is_refused_naming_key_and_values(
    finished, data_root, tmp_path
):
    run = copy_run(finished[0], tmp_path)
    before = folder_md5(run)
    args = tiny(data_root, "--quiet", "--set", "test_subset=200", "--set", "lr=0.1", epochs=2)
    proc = run_cli(*args, "--run-dir", "run", "--resume", cwd=tmp_path)
    assert_one_error(proc, "'lr'", "stored 0.0005", "new 0.1")
    assert folder_md5(run) == before


def test_resume_without_config_uses_the_stored_recipe_and_epochs_may_grow(
    finished, data_root, tmp_path
):
    run = copy_run(finished[0], tmp_path)
    proc = run_cli(
        "snn", "train", "--resume", "--run-dir", "run", "--no-report", "--set", "epochs=3",
        cwd=tmp_path,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "resume: epoch 3, step 0" in proc.stderr  # the resume point is logged
    history = json.loads((run / "metrics.json").read_text())
    assert [r["epoch"] for r in history] == [1, 2, 3]
    stored = json.loads((run / "config.json").read_text())
    assert stored["method"] == "snn" and stored["config"]["epochs"] == 3
    assert stored["config"]["T"] == 2  # the stored recipe, not the demo file's T=5
    assert summary_of(proc)["epochs"] == 3


def test_a_start_that_fails_on_missing_data_does_not_block_the_retry(data_root, tmp_path):
    later = tmp_path / "later"  # the data root the user will fill
    args = tiny(later, "--quiet", "--run-dir", "run")
    proc = run_cli(*args, cwd=tmp_path)
    assert_one_error(proc, "MNIST not found", str(later))
    assert not (tmp_path / "run" / "config.json").exists()
    shutil.copytree(data_root, later)
    proc = run_cli(*args, cwd=tmp_path)  # the same command, no --resume
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["epochs"] == 1


# --- divergence, numbers, errors ------------------------------------------------------------


def test_divergence_stops_with_one_line_and_keeps_the_last_good_checkpoint(data_root, tmp_path):
    args = tiny(data_root, "--quiet", "--set", "lr=1e6", "--set", "weight_clamp=1e30",
                "--run-dir", "run", checkpoint_every=1)  # fmt: skip
    proc = run_cli(*args, cwd=tmp_path)
    line = assert_one_error(proc, "snn diverged in epoch 1, step 4", "gradient norm inf")
    assert "last good checkpoint is kept" in line
    state = load_checkpoint(tmp_path / "run" / "checkpoint.pt")
    assert (state["epoch"], state["step"]) == (0, 3)
    assert all(torch.isfinite(v).all() for v in state["model"].values())


def test_numbers_in_any_spelling_in_set_and_yaml(data_root, tmp_path):
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("model: mnist_cnn\ndataset: mnist\nlr: 1e-3\nweight_decay: 1E-2\n")
    args = tiny(data_root, "--quiet", "--set", "grad_clip=5e-1", "--run-dir", "run")
    args[args.index("demo")] = str(recipe)
    proc = run_cli(*args, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    config = json.loads((tmp_path / "run" / "config.json").read_text())["config"]
    assert (config["lr"], config["weight_decay"], config["grad_clip"]) == (1e-3, 1e-2, 0.5)


@pytest.mark.parametrize(
    "args, fragments",
    [
        (["--set", "backend=gpu"], ("backend: expected one of", "'gpu'")),
        (["--set", "tau_m=0.5"], ("tau_m: expected > 1",)),
    ],
)
def test_bad_values_are_one_line_errors_and_leave_no_run(args, fragments, data_root, tmp_path):
    proc = run_cli(*tiny(data_root, "--quiet", *args, "--run-dir", "run"), cwd=tmp_path)
    assert_one_error(proc, *fragments)
    assert not (tmp_path / "run").exists()


def test_evaluate_without_a_checkpoint_is_one_line(tmp_path):
    (tmp_path / "empty").mkdir()
    proc = run_cli("snn", "evaluate", "--quiet", "--run-dir", "empty", cwd=tmp_path)
    assert_one_error(proc, "checkpoint.pt does not exist")


# --- Ctrl-C ---------------------------------------------------------------------------------


def test_ctrl_c_names_the_command_that_continues_the_run(data_root, tmp_path):
    args = tiny(data_root, "--quiet", epochs=8, checkpoint_every=1)  # default runs/<name>-<time>
    code, _, err = interrupt_when_exists(args, cwd=tmp_path, pattern="runs/*/checkpoint.pt")
    assert code == 130, err[-3000:]
    assert "Traceback" not in err
    (run,) = tmp_path.glob("runs/mnist_cnn-*")
    prefix = "interrupted; continue with: "
    (line,) = [x for x in err.splitlines() if x.startswith(prefix)]
    command = shlex.split(line[len(prefix) :])
    assert command[:3] == ["efficientdl", "snn", "train"] and command[-1] == "--resume"
    assert command[command.index("--run-dir") + 1] == str(run.relative_to(tmp_path))
    metrics = run / "metrics.json"
    assert not metrics.exists() or len(json.loads(metrics.read_text())) < 8  # it was cut short
    done = run_cli(*command[1:], cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    history = json.loads((run / "metrics.json").read_text())
    assert [r["epoch"] for r in history] == list(range(1, 9))


# --- evaluate / stats -----------------------------------------------------------------------


def test_evaluate_honours_test_subset(finished, tmp_path):
    run, _ = finished
    last = json.loads((run / "metrics.json").read_text())[-1]
    proc = run_cli("snn", "evaluate", "--quiet", "--run-dir", run, "--set", "test_subset=200",
                   "--set", "threads=1", cwd=tmp_path)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout)
    # the same seeded 200 images the run was tested on: the same loss, to the last digit
    assert result["samples"] == 200
    assert (result["accuracy"], result["loss"]) == (last["test_accuracy"], last["test_loss"])
    proc = run_cli("snn", "evaluate", "--quiet", "--run-dir", run, "--set", "test_subset=null",
                   cwd=tmp_path)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads(proc.stdout)["samples"] == N_TEST


@pytest.mark.parametrize(
    "action, override",
    [("evaluate", "epochs=5"), ("evaluate", "T=4"), ("stats", "test_subset=100")],
)
def test_evaluate_and_stats_refuse_overrides_they_cannot_honour(
    finished, tmp_path, action, override
):
    key = override.split("=")[0]
    proc = run_cli("snn", action, "--quiet", "--run-dir", finished[0], "--set", override,
                   cwd=tmp_path)  # fmt: skip
    line = assert_one_error(proc, f"snn {action} cannot honour --set {key}", "reads only")
    assert "data_root" in line and "batch_size" in line


# --- TensorBoard, logging, torchrun ---------------------------------------------------------


def test_tensorboard_scalars_per_epoch(finished):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run, _ = finished
    events = EventAccumulator(str(run / "tensorboard"))
    events.Reload()
    history = json.loads((run / "metrics.json").read_text())
    expected = {
        "train/loss": [r["train_loss"] for r in history],
        "train/accuracy": [r["train_accuracy"] for r in history],
        "test/loss": [r["test_loss"] for r in history],
        "test/accuracy": [r["test_accuracy"] for r in history],
        "train/lr": [5e-4] * len(history),
    }
    assert set(expected) <= set(events.Tags()["scalars"])
    for tag, values in expected.items():
        scalars = events.Scalars(tag)
        assert [s.step for s in scalars] == [1, 2]
        assert [s.value for s in scalars] == pytest.approx(values, rel=1e-6)


def test_the_run_logs_its_backend_and_data(finished, data_root):
    _, proc = finished
    assert "efficientdl: backend: " in proc.stderr
    assert f"efficientdl: data: mnist from {data_root}" in proc.stderr


def test_torchrun_only_rank_0_prints(data_root, tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2",
         "--master_port=29533", "-m", "efficientdl.cli",
         *tiny(data_root, "--quiet", "--run-dir", "run")],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = summary_of(proc)
    assert summary["world_size"] == 2 and proc.stdout.count('"world_size"') == 1
    assert math.isfinite(summary["final_test_accuracy"])
