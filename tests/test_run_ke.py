"""`efficientdl ke train|bench` follow the run protocol, run as a user runs them (subprocesses):
run-folder refusals leave every file untouched, a failed start does not block the retry,
divergence and user errors are one line, Ctrl-C prints the command that finishes the run,
--tensorboard writes the scalars, checkpoints hold plain data only."""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path

import pytest
import torch

from conftest import (
    assert_one_error,
    folder_md5,
    interrupt_when_exists,
    run_cli,
    write_digits,
    write_ke_config,
)
from efficientdl.core import load_checkpoint


@pytest.fixture(scope="module")
def digits(tmp_path_factory) -> Path:
    """A generated digits.csv.gz data root (120 images: 80 train / 40 test)."""
    return write_digits(tmp_path_factory.mktemp("data"))


def tiny(folder: Path, root, *, generations=2, epochs=2, extra="") -> Path:
    """A tiny KE config file (a few seconds of training)."""
    return write_ke_config(
        folder / "tiny.yaml", root, generations=generations, epochs=epochs, extra_yaml=extra
    )


def ke_train(cwd, *args, **kwargs):
    return run_cli("ke", "train", "--quiet", *args, cwd=cwd, **kwargs)


PLAIN = (torch.Tensor, str, int, float, bool, type(None))


def assert_plain(value, where="") -> None:
    """Only tensors and plain Python containers/values, all the way down."""
    if isinstance(value, dict):
        for k, v in value.items():
            assert isinstance(k, str | int), (where, k)
            assert_plain(v, f"{where}.{k}")
    elif isinstance(value, list | tuple):
        for i, v in enumerate(value):
            assert_plain(v, f"{where}[{i}]")
    else:
        assert isinstance(value, PLAIN), (where, type(value))


def scalars(run_dir: Path) -> dict[str, list[tuple[int, float]]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run_dir / "tensorboard"))
    events.Reload()
    return {t: [(e.step, e.value) for e in events.Scalars(t)] for t in events.Tags()["scalars"]}


def test_train_refusals_resume_and_tensorboard(tmp_path, digits):
    config, run = tiny(tmp_path, digits), tmp_path / "run"
    args = ["--config", config, "--run-dir", run, "--set", "lr=5e-2"]
    first = ke_train(tmp_path, *args, "--tensorboard")
    assert first.returncode == 0, first.stderr[-2000:]
    assert json.loads(first.stdout)["accuracy"]["dense"]
    stored = json.loads((run / "config.json").read_text())
    assert stored["method"] == "ke" and stored["config"]["lr"] == 0.05  # `5e-2` is a float
    summary = json.loads((run / "summary.json").read_text())
    assert summary["generations"] == 2 and summary["world_size"] == 1

    # --tensorboard: per-epoch train scalars on a global step, per-generation accuracies
    tb = scalars(run)
    epochs = [r for g in (1, 2) for r in json.loads((run / f"gen_0{g}/metrics.json").read_text())]
    assert [s for s, _ in tb["train/loss"]] == [1, 2, 3, 4]
    for tag, key in (("train/loss", "train_loss"), ("train/lr", "lr"),
                     ("train/accuracy", "train_accuracy")):  # fmt: skip
        assert [v for _, v in tb[tag]] == pytest.approx([r[key] for r in epochs], rel=1e-6)
    history = json.loads((run / "history.json").read_text())
    for net in ("dense", "fit", "reset"):
        got = tb[f"accuracy/{net}"]
        assert got == [(r["generation"], pytest.approx(r[net]["accuracy"])) for r in history]

    # checkpoints are data: tensors and plain values only
    for path in sorted(run.rglob("*.pt")):
        assert_plain(load_checkpoint(path), path.name)

    before = folder_md5(run)
    again = ke_train(tmp_path, *args)  # a finished run, no --resume
    assert_one_error(again, str(run), "--resume")
    changed = ke_train(tmp_path, *args, "--resume", "--set", "lr=0.1")
    assert_one_error(changed, "'lr'", "stored 0.05", "new 0.1")
    assert folder_md5(run) == before

    # --resume without --config continues with the stored config; more generations extend it
    more = ke_train(tmp_path, "--run-dir", run, "--resume", "--set", "generations=3")
    assert more.returncode == 0, more.stderr[-2000:]
    assert len(json.loads(more.stdout)["accuracy"]["dense"]) == 3
    assert json.loads((run / "config.json").read_text())["config"]["generations"] == 3
    after = folder_md5(run)
    for name in ("gen_01/final.pt", "gen_02/final.pt", "masks.pt"):
        assert after[name] == before[name], name  # finished generations are kept, not redone


def test_resume_needs_a_run_and_run_dir_must_be_a_folder(tmp_path, digits):
    config = tiny(tmp_path, digits)
    empty = tmp_path / "empty"
    empty.mkdir()
    proc = ke_train(tmp_path, "--config", config, "--run-dir", empty, "--resume")
    assert_one_error(proc, str(empty), "holds no run")
    assert list(empty.iterdir()) == []
    missing = tmp_path / "missing"
    proc = ke_train(tmp_path, "--run-dir", missing, "--resume")  # no --config either
    assert_one_error(proc, str(missing), "holds no run")
    assert not missing.exists()
    file = tmp_path / "a_file"
    file.write_text("not a folder\n")
    proc = ke_train(tmp_path, "--config", config, "--run-dir", file)
    assert_one_error(proc, str(file), "is a file")
    assert file.read_text() == "not a folder\n"


def test_failed_start_on_missing_data_does_not_block_the_retry(tmp_path):
    root = tmp_path / "later"
    config = tiny(tmp_path, root, generations=1, extra="lr: 1e-3\n")  # YAML 1.2 float
    run = tmp_path / "run"
    command = ["--config", config, "--run-dir", run]
    failed = ke_train(tmp_path, *command)
    assert_one_error(failed, "digits not found", str(root))
    assert not (run / "config.json").exists()
    assert not run.exists() or list(run.iterdir()) == []
    write_digits(root)  # the user fetches the data, then repeats the same command
    retry = ke_train(tmp_path, *command)
    assert retry.returncode == 0, retry.stderr[-2000:]
    assert json.loads((run / "config.json").read_text())["config"]["lr"] == 0.001


def test_divergence_stops_with_one_line_and_no_checkpoint_of_it(tmp_path, digits):
    run = tmp_path / "run"
    proc = ke_train(tmp_path, "--config", tiny(tmp_path, digits), "--run-dir", run,
                    "--set", "lr=1e6")  # fmt: skip
    assert_one_error(proc, "ke diverged in generation 1, epoch 1, step 2", "lower the learning")
    assert (run / "gen_01" / "start.pt").exists()
    assert not (run / "gen_01" / "train.pt").exists()  # nothing after the last good state


def test_user_errors_are_one_line(tmp_path, digits, capsys):
    from efficientdl.cli import main

    config = tiny(tmp_path, digits)
    run = tmp_path / "run"
    proc = ke_train(tmp_path, "--config", config, "--run-dir", run, "--set", "model=nope")
    assert_one_error(proc, "config key 'model'", "unknown model 'nope'")
    assert not run.exists()  # the failed start took its empty folder with it
    bench = ["ke", "bench", "--quiet", "--config", str(config), "--batch", "1", "--runs", "1"]
    proc = run_cli(*bench, "--set", "scheme=wels", cwd=tmp_path)
    assert_one_error(proc, "'scheme'", "kels")
    for extra, fragment in ((["--input-size", "1"], "--input-size 1: small_cnn does not run"),
                            (["--batch", "0"], "--batch must be ≥ 1")):  # fmt: skip
        assert main(bench + extra) == 2  # in-process: the same `main` as above, faster
        assert capsys.readouterr().err.startswith(f"error: {fragment}")


def test_ctrl_c_names_the_command_that_finishes_the_run(tmp_path, digits):
    config = tiny(tmp_path, digits, generations=2, epochs=15)
    code, out, err = interrupt_when_exists(
        ["ke", "train", "--quiet", "--config", config],
        cwd=tmp_path,
        pattern="runs/ke/tiny-*/gen_01/train.pt",
    )
    assert code == 130, err[-2000:]
    assert "Traceback" not in err and out == ""
    found = re.search(r"^interrupted; continue with: (.*)$", err, re.M)
    assert found, err
    words = shlex.split(found.group(1))
    run_dir = words[words.index("--run-dir") + 1]
    assert re.fullmatch(r"runs/ke/tiny-\d{8}-\d{6}", run_dir) and words[-1] == "--resume"
    assert not (tmp_path / run_dir / "gen_02" / "final.pt").exists()
    assert words[0] == "efficientdl"
    finish = run_cli(*words[1:], cwd=tmp_path)
    assert finish.returncode == 0, finish.stderr[-2000:]
    summary = json.loads(finish.stdout)
    assert len(summary["accuracy"]["dense"]) == 2 and summary["total_epochs"] == 30
    epochs = json.loads((tmp_path / run_dir / "gen_01" / "metrics.json").read_text())
    assert [r["epoch"] for r in epochs] == list(range(1, 16))  # no epoch lost or repeated
