"""The run protocol (`efficientdl.core.run`) and the divergence guard, in process."""

from __future__ import annotations

import json
import math
import sys

import pytest

from conftest import folder_md5
from efficientdl import __version__
from efficientdl.core.checkpoint import load_checkpoint, save_checkpoint
from efficientdl.core.divergence import LossGuard
from efficientdl.core.errors import DivergenceError, RunFolderError, UserError
from efficientdl.core.run import (
    CONFIG_FILE,
    SUMMARY_FILE,
    config_differences,
    flatten,
    holds_run,
    open_run,
    stored_run,
    write_json_atomic,
)

CONFIG = {
    "seed": 0,
    "epochs": 4,
    "threads": 1,
    "train": {"lr": 0.1, "total_iters": 200, "lambdas": {"seg": 1.0, "depth": 2.0}},
    "tasks": ["seg", "depth"],
}
EXTENDS = ("epochs", "train.total_iters")
FREE = ("threads", "device")


def started_run(path, config=CONFIG, method="snn"):
    """A folder holding a begun run of `method` with `config`."""
    run = open_run(path, method=method, config=config)
    run.begin(config)
    return run


def changed(config, **dotted):
    """A deep copy of `config` with dotted keys set."""
    out = json.loads(json.dumps(config))
    for key, value in dotted.items():
        *parents, leaf = key.split("__")
        node = out
        for part in parents:
            node = node[part]
        node[leaf] = value
    return out


# --- opening and beginning ---------------------------------------------------------------------


def test_nothing_is_written_before_begin(tmp_path):
    path = tmp_path / "runs" / "a"
    run = open_run(path, method="snn", config=CONFIG)
    assert path.is_dir() and list(path.iterdir()) == []
    assert run.created and not run.resume and not run.started
    assert not holds_run(path) and stored_run(path) is None
    run.begin(CONFIG)
    record = json.loads((path / CONFIG_FILE).read_text())
    assert record == {"method": "snn", "version": __version__, "config": CONFIG}
    assert stored_run(path) == record and holds_run(path)
    assert [p.name for p in path.iterdir()] == [CONFIG_FILE]  # no temporary left behind
    run.write_summary({"best": 0.5})
    assert json.loads((path / SUMMARY_FILE).read_text()) == {"best": 0.5}


def test_a_folder_holding_a_run_is_refused_without_resume(tmp_path):
    started_run(tmp_path / "r")
    (tmp_path / "r" / ".checkpoint.pt.x1.tmp").write_bytes(b"partial")
    before = folder_md5(tmp_path / "r")
    with pytest.raises(RunFolderError) as info:
        open_run(tmp_path / "r", method="snn", config=CONFIG)
    message = str(info.value)
    assert str(tmp_path / "r") in message and "--resume" in message and "\n" not in message
    assert folder_md5(tmp_path / "r") == before  # not even the stale temporary was removed


@pytest.mark.parametrize("marker", ["config.yaml", "checkpoint.pt", "ke.json"])
def test_an_older_efficientdl_run_counts_as_a_run(tmp_path, marker):
    (tmp_path / "old").mkdir()
    (tmp_path / "old" / marker).write_text("x")
    before = folder_md5(tmp_path / "old")
    with pytest.raises(RunFolderError, match="already holds a run; continue it with --resume"):
        open_run(tmp_path / "old", method="ke", config=CONFIG)
    with pytest.raises(RunFolderError, match="older efficientdl"):
        open_run(tmp_path / "old", method="ke", config=CONFIG, resume=True)
    assert folder_md5(tmp_path / "old") == before


def test_resume_continues_an_identical_run(tmp_path):
    started_run(tmp_path / "r")
    run = open_run(tmp_path / "r", method="snn", config=CONFIG, resume=True)
    assert run.resume and not run.created


@pytest.mark.parametrize("exists", [False, True], ids=["missing", "empty"])
def test_resume_without_a_run_is_refused(tmp_path, exists):
    path = tmp_path / "r"
    if exists:
        path.mkdir()
    with pytest.raises(RunFolderError, match=f"--resume: {path} holds no run to continue"):
        open_run(path, method="snn", config=CONFIG, resume=True)
    assert path.exists() == exists  # a refused resume creates nothing


def test_resume_of_another_methods_run_is_refused(tmp_path):
    started_run(tmp_path / "r", method="ke")
    before = folder_md5(tmp_path / "r")
    with pytest.raises(RunFolderError, match="holds a ke run, not a snn run"):
        open_run(tmp_path / "r", method="snn", config=CONFIG, resume=True)
    assert folder_md5(tmp_path / "r") == before


@pytest.mark.parametrize(
    "key, value, stored",
    [
        ("seed", 1, 0),
        ("train__lr", 0.2, 0.1),
        ("train__lambdas__seg", 5.0, 1.0),
        ("tasks", ["seg"], ["seg", "depth"]),
    ],
)
def test_resume_with_a_changed_key_names_it_with_both_values(tmp_path, key, value, stored):
    started_run(tmp_path / "r")
    before = folder_md5(tmp_path / "r")
    dotted = key.replace("__", ".")
    with pytest.raises(RunFolderError) as info:
        open_run(
            tmp_path / "r", method="snn", config=changed(CONFIG, **{key: value}), resume=True,
            extends=EXTENDS, free=FREE,
        )  # fmt: skip
    message = str(info.value)
    assert f"config key '{dotted}' differs: stored {stored!r}, new {value!r}" in message
    assert str(tmp_path / "r") in message
    assert folder_md5(tmp_path / "r") == before


def test_extending_keys_may_grow_but_not_shrink(tmp_path):
    started_run(tmp_path / "r")
    grown = changed(CONFIG, epochs=10, train__total_iters=400)
    open_run(tmp_path / "r", method="snn", config=grown, resume=True, extends=EXTENDS)
    for key, value, stored in [("epochs", 3, 4), ("train__total_iters", 100, 200)]:
        shrunk = changed(CONFIG, **{key: value})
        with pytest.raises(RunFolderError) as info:
            open_run(tmp_path / "r", method="snn", config=shrunk, resume=True, extends=EXTENDS)
        dotted = key.replace("__", ".")
        assert f"'{dotted}' can only grow on --resume: stored {stored}, new {value}" in str(
            info.value
        )
    # without declaring it as extending, a longer run is a changed config
    with pytest.raises(RunFolderError, match="config key 'epochs' differs: stored 4, new 10"):
        open_run(tmp_path / "r", method="snn", config=changed(CONFIG, epochs=10), resume=True)


def test_free_keys_are_ignored_on_resume(tmp_path):
    started_run(tmp_path / "r")
    other = changed(CONFIG, threads=8)
    other["device"] = "cuda"  # a key the stored config did not have
    open_run(tmp_path / "r", method="snn", config=other, resume=True, free=FREE)
    with pytest.raises(RunFolderError, match="config key 'device' differs: stored None"):
        open_run(tmp_path / "r", method="snn", config=other, resume=True, free=("threads",))


def test_a_file_as_run_dir_is_refused(tmp_path):
    (tmp_path / "f").write_text("not a folder")
    for resume in (False, True):
        with pytest.raises(RunFolderError, match=f"--run-dir {tmp_path / 'f'} is a file"):
            open_run(tmp_path / "f", method="snn", config=CONFIG, resume=resume)
    assert (tmp_path / "f").read_text() == "not a folder"


def test_stale_temporaries_are_removed_on_the_next_start(tmp_path):
    path = tmp_path / "r"
    (path / "sub").mkdir(parents=True)
    stale = [path / ".checkpoint.pt.abc123.tmp", path / "sub" / ".metrics.json.x.tmp"]
    kept = [path / "notes.tmp", path / ".hidden", path / "sub" / "data.bin"]
    for file in stale + kept:
        file.write_text("x")
    open_run(path, method="snn", config=CONFIG)
    assert not any(f.exists() for f in stale)
    assert all(f.exists() for f in kept)
    # and on a resume
    started = tmp_path / "s"
    started_run(started)
    (started / ".checkpoint.pt.zz.tmp").write_text("x")
    open_run(started, method="snn", config=CONFIG, resume=True)
    assert not (started / ".checkpoint.pt.zz.tmp").exists()


def test_abandon_removes_only_an_empty_folder_it_created(tmp_path):
    made = open_run(tmp_path / "new", method="snn", config=CONFIG)
    made.abandon()
    assert not (tmp_path / "new").exists()
    # retrying after the failed start is not refused
    open_run(tmp_path / "new", method="snn", config=CONFIG).begin(CONFIG)

    (tmp_path / "mine").mkdir()
    open_run(tmp_path / "mine", method="snn", config=CONFIG).abandon()
    assert (tmp_path / "mine").is_dir()  # the user's own (empty) folder stays

    written = open_run(tmp_path / "w", method="snn", config=CONFIG)
    (tmp_path / "w" / "log.txt").write_text("x")
    written.abandon()
    assert (tmp_path / "w" / "log.txt").exists()

    begun = open_run(tmp_path / "b", method="snn", config=CONFIG)
    begun.begin(CONFIG)
    begun.abandon()
    assert (tmp_path / "b" / CONFIG_FILE).exists()


def test_other_ranks_write_nothing(tmp_path):
    run = open_run(tmp_path / "r", method="snn", config=CONFIG, is_main=False)
    run.begin(CONFIG)
    assert run.write_summary({"x": 1}) is None
    assert not (tmp_path / "r").exists()


def test_a_damaged_or_foreign_config_json_is_a_run_folder_error(tmp_path):
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / CONFIG_FILE).write_text("{not json")
    with pytest.raises(RunFolderError, match="is not valid JSON"):
        open_run(tmp_path / "bad", method="snn", config=CONFIG, resume=True)
    (tmp_path / "old").mkdir()
    (tmp_path / "old" / CONFIG_FILE).write_text(json.dumps({"lr": 0.1}))  # a bare config
    with pytest.raises(RunFolderError, match="older efficientdl"):
        open_run(tmp_path / "old", method="snn", config=CONFIG, resume=True)


# --- config_differences, flatten, write_json_atomic --------------------------------------------


def test_config_differences_on_nested_dicts():
    stored = {"a": 1, "train": {"lr": 0.1, "iters": 10, "opt": {"name": "sgd"}}, "t": [1, 2]}
    assert config_differences(stored, json.loads(json.dumps(stored))) == []
    # a tuple (from a dataclass) equals the list JSON stored
    assert config_differences(stored, {**stored, "t": (1, 2)}) == []
    current = {"a": 1, "train": {"lr": 0.2, "opt": {"name": "adam"}}, "t": [1, 2], "new": True}
    assert config_differences(stored, current) == [
        "config key 'new' differs: stored None, new True",
        "config key 'train.iters' differs: stored 10, new None",
        "config key 'train.lr' differs: stored 0.1, new 0.2",
        "config key 'train.opt.name' differs: stored 'sgd', new 'adam'",
    ]
    assert (
        config_differences(
            stored, current, free=("new", "train.opt.name"), extends=("train.iters", "train.lr")
        )
        == []
    )
    assert config_differences({"x": {"n": 5}}, {"x": {"n": 4}}, extends=["x.n"]) == [
        "'x.n' can only grow on --resume: stored 5, new 4"
    ]


def test_flatten_makes_dotted_keys():
    assert flatten({"a": {"b": {"c": 1}, "d": (1, 2)}, "e": {}}) == {
        "a.b.c": 1,
        "a.d": [1, 2],
        "e": {},
    }


def test_write_json_atomic_leaves_no_temporary(tmp_path):
    path = write_json_atomic(tmp_path / "deep" / "x.json", {"p": tmp_path, "n": 1})
    assert json.loads(path.read_text()) == {"p": str(tmp_path), "n": 1}
    assert [p.name for p in path.parent.iterdir()] == ["x.json"]


class _Unwritable:
    """A value neither pickle nor JSON can write."""

    def __reduce__(self):
        raise RuntimeError("boom")

    def __str__(self):
        raise RuntimeError("boom")


@pytest.mark.parametrize(
    "write, read, name",
    [
        (save_checkpoint, load_checkpoint, "checkpoint.pt"),
        (write_json_atomic, lambda path: json.loads(path.read_text()), "x.json"),
    ],
    ids=["checkpoint", "json"],
)
def test_a_failed_atomic_write_keeps_the_old_file_and_no_temporary(tmp_path, write, read, name):
    path = write(tmp_path / name, {"v": 1})
    with pytest.raises(RuntimeError, match="boom"):
        write(path, {"v": _Unwritable()})
    assert read(path) == {"v": 1}
    assert [p.name for p in tmp_path.iterdir()] == [name]


# --- LossGuard -----------------------------------------------------------------------------------


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf], ids=["nan", "inf", "-inf"])
def test_a_non_finite_loss_stops_the_run_naming_method_place_and_value(value):
    guard = LossGuard("adashare")
    guard.check(2.0, phase="warmup", iteration=1)
    with pytest.raises(DivergenceError) as info:
        guard.check(value, phase="warmup", epoch=None, iteration=7)
    message = str(info.value)
    assert message.startswith("adashare diverged in phase warmup, iteration 7: ")
    assert f"training loss {value}" in message and "is not finite" in message
    assert "epoch" not in message  # None places are left out
    assert "last good checkpoint is kept" in message
    assert isinstance(info.value, UserError) and isinstance(info.value, FloatingPointError)


def test_a_non_finite_first_loss_stops_the_run():
    with pytest.raises(DivergenceError, match=r"^snn diverged in epoch 0, batch index 3: "):
        LossGuard("snn").check(float("nan"), epoch=0, batch_index=3)


def test_the_growth_limit_counts_from_the_first_loss():
    guard = LossGuard("ke")
    assert guard.check(2.0, generation=1) == 2.0
    assert guard.check(1999.0) == 1999.0  # below 1000 × 2
    assert guard.check(-1999.0) == -1999.0
    with pytest.raises(DivergenceError) as info:
        guard.check(2001.0, generation=2, epoch=5)
    message = str(info.value)
    assert message.startswith("ke diverged in generation 2, epoch 5: training loss 2001 ")
    assert "exceeds 2e+03" in message


def test_a_small_first_loss_allows_growth_up_to_the_floor():
    guard = LossGuard("snn")
    guard.check(0.01)
    assert guard.check(999.0) == 999.0  # 1000 × max(0.01, 1)
    with pytest.raises(DivergenceError, match="exceeds 1e\\+03"):
        guard.check(1001.0)


def test_healthy_losses_pass_and_come_back_as_floats():
    import torch

    guard = LossGuard("snn", growth=10.0)
    values = [guard.check(v) for v in (torch.tensor(3.0), 2.5, 1, 0.0, 29.9)]
    assert values == [3.0, 2.5, 1.0, 0.0, 29.9] and all(type(v) is float for v in values)
    with pytest.raises(DivergenceError, match=r"exceeds 30 \(10× its start\)"):
        guard.check(30.1)


# --- TensorBoard scalars -----------------------------------------------------------------------


def read_scalars(folder) -> dict[str, list[tuple[int, float]]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(folder))
    events.Reload()
    return {
        tag: [(e.step, e.value) for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]
    }


def test_scalars_are_written_and_read_back(tmp_path):
    from efficientdl.core.tensorboard import Scalars

    scalars = Scalars(tmp_path, enabled=True)
    assert scalars.enabled
    scalars.log(1, {"loss": 0.5, "lr": 1e-3, "done": True, "name": "x", "prob": {"seg": 0.25}},
                prefix="train/")  # fmt: skip
    scalars.log(2, {"loss": 0.25, "prob": {"seg": 0.75}}, prefix="train")
    scalars.log(2, {"accuracy": 91})
    scalars.close()
    scalars.log(3, {"loss": 9.0})  # after close: ignored, no error
    assert (tmp_path / "tensorboard").is_dir()
    values = read_scalars(tmp_path / "tensorboard")
    assert values == {
        "train/loss": [(1, 0.5), (2, 0.25)],
        "train/lr": [(1, pytest.approx(1e-3))],
        "train/prob/seg": [(1, 0.25), (2, 0.75)],
        "accuracy": [(2, 91.0)],
    }  # bools and strings are not scalars


def test_disabled_scalars_write_nothing(tmp_path):
    from efficientdl.core.tensorboard import Scalars

    for scalars in (Scalars(tmp_path, enabled=False), Scalars(None, enabled=True)):
        assert not scalars.enabled
        scalars.log(1, {"loss": 1.0})
        scalars.close()
    assert list(tmp_path.iterdir()) == []


def test_missing_tensorboard_is_a_user_error_naming_the_extra(tmp_path, monkeypatch):
    from efficientdl.core.tensorboard import Scalars

    monkeypatch.setitem(sys.modules, "tensorboard", None)  # `import tensorboard` now fails
    with pytest.raises(UserError) as info:
        Scalars(tmp_path, enabled=True)
    message = str(info.value)
    assert "efficientdl[tensorboard]" in message and "--tensorboard" in message
    assert "\n" not in message
    assert list(tmp_path.iterdir()) == []
    Scalars(tmp_path, enabled=False).close()  # a rank that writes nothing needs no package


def test_a_run_dir_under_a_file_is_a_run_folder_error(tmp_path):
    (tmp_path / "f").write_text("x")
    with pytest.raises(RunFolderError, match=f"--run-dir {tmp_path / 'f' / 'run'} cannot be"):
        open_run(tmp_path / "f" / "run", method="snn", config=CONFIG)
