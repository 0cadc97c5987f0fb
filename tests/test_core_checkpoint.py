"""Checkpoints are data, never code (`efficientdl.core.checkpoint`), and RNG state round-trips."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch

from efficientdl.core.checkpoint import load_checkpoint, rng_state, save_checkpoint, set_rng_state
from efficientdl.core.errors import DataError, RunFolderError, UnsafeFileError

PLAIN = (str, int, float, bool, type(None))


def draws(n: int = 4):
    """The next values of every stream a run uses (python, python gauss, numpy, numpy gauss,
    torch)."""
    return (
        [random.random() for _ in range(n)],
        [random.gauss(0, 1) for _ in range(n)],
        np.random.rand(n).tolist(),
        np.random.randn(n).tolist(),
        torch.rand(n).tolist(),
        torch.randn(n).tolist(),
    )


def seeded_mid_stream(seed: int) -> None:
    """Seed every stream and leave the gaussian caches filled (odd number of gaussian draws)."""
    random.seed(seed), np.random.seed(seed), torch.manual_seed(seed)
    random.gauss(0, 1)
    np.random.randn(1)
    torch.randn(3)


def assert_plain(value, where="state"):
    """Only tensors and plain Python types, as `weights_only=True` requires."""
    if isinstance(value, dict):
        for key, item in value.items():
            assert isinstance(key, str), (where, key)
            assert_plain(item, f"{where}.{key}")
    elif isinstance(value, list | tuple):
        for i, item in enumerate(value):
            assert_plain(item, f"{where}[{i}]")
    else:
        assert isinstance(value, (torch.Tensor, *PLAIN)), (where, type(value))


def assert_restores(path, expected, **fields) -> None:
    """Loading `path` gives `fields`, and its RNG state replays the `expected` draws."""
    loaded = load_checkpoint(path)
    assert {key: loaded[key] for key in fields} == fields
    set_rng_state(loaded["rng"])
    assert draws() == expected


def test_rng_state_round_trip_restores_every_stream_exactly(tmp_path):
    seeded_mid_stream(7)
    assert random.getstate()[2] is not None and np.random.get_state()[3] == 1  # caches filled
    state = rng_state()
    assert_plain(state)
    expected = draws()
    path = save_checkpoint(tmp_path / "ck.pt", {"rng": state, "step": 3})
    seeded_mid_stream(99)  # move every stream elsewhere
    assert draws() != expected
    assert_restores(path, expected, step=3)


def test_legacy_checkpoint_with_raw_rng_tuples_loads_and_restores(tmp_path):
    seeded_mid_stream(3)
    legacy = {
        "python": random.getstate(),
        "numpy": np.random.get_state(),  # holds a numpy array: pickled as numpy objects
        "torch": torch.get_rng_state(),
    }
    expected = draws()
    for zipfile in (True, False):
        path = tmp_path / f"legacy-{zipfile}.pt"
        torch.save({"rng": legacy, "epoch": 2}, path, _use_new_zipfile_serialization=zipfile)
        seeded_mid_stream(11)
        assert_restores(path, expected, epoch=2)


def test_legacy_checkpoint_written_under_numpy_1_loads(tmp_path):
    # numpy 1.x names the array rebuilder `numpy.core.multiarray._reconstruct` (numpy 2.x:
    # `numpy._core...`); rewrite the one GLOBAL of a legacy-format file to that spelling
    seeded_mid_stream(5)
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": None}
    state["torch"] = torch.get_rng_state()
    expected = draws()
    path = tmp_path / "np1.pt"
    torch.save({"rng": state}, path, _use_new_zipfile_serialization=False)
    data = path.read_bytes()
    new, old = b"cnumpy._core.multiarray\n", b"cnumpy.core.multiarray\n"
    if data.count(new) == 1:
        path.write_bytes(data.replace(new, old))
    assert path.read_bytes().count(old) == 1
    seeded_mid_stream(12)
    assert_restores(path, expected)


class _Payload:
    """Unpickling this would create `marker` (through `open(marker, "w")`)."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


class _Exec:
    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (exec, (f"open({self.marker!r}, 'w').close()",))


@pytest.mark.parametrize("payload", [_Payload, _Exec], ids=["open", "exec"])
@pytest.mark.parametrize("zipfile", [True, False], ids=["zip", "legacy"])
def test_a_crafted_checkpoint_is_refused_and_nothing_in_it_runs(tmp_path, payload, zipfile):
    marker = tmp_path / "PWNED"
    path = tmp_path / "checkpoint.pt"
    state = {"model": {"w": torch.zeros(2)}, "evil": payload(marker)}
    torch.save(state, path, _use_new_zipfile_serialization=zipfile)
    assert not marker.exists()  # saving did not run it either
    with pytest.raises(UnsafeFileError) as info:
        load_checkpoint(path)
    message = str(info.value)
    assert str(path) in message and "nothing in it ran" in message and "\n" not in message
    assert "open" in message or "exec" in message  # names what it asked for
    assert not marker.exists()


def test_a_pickled_object_of_a_custom_class_is_refused(tmp_path):
    torch.save({"cfg": RunFolderError("x")}, tmp_path / "c.pt")
    with pytest.raises(UnsafeFileError, match="efficientdl.core.errors.RunFolderError"):
        load_checkpoint(tmp_path / "c.pt")


@pytest.mark.parametrize("cut", [0.5, 0.9, 0.0], ids=["half", "tail", "empty"])
def test_a_truncated_checkpoint_is_a_data_error(tmp_path, cut):
    path = save_checkpoint(tmp_path / "ck.pt", {"w": torch.randn(256, 256), "rng": rng_state()})
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * cut)])
    with pytest.raises(DataError) as info:
        load_checkpoint(path)
    assert not isinstance(info.value, UnsafeFileError)
    message = str(info.value)
    assert message.startswith(f"checkpoint {path} is damaged or truncated") and "\n" not in message


@pytest.mark.parametrize(
    "content",
    [b"hello, I am text\n" * 20, bytes(range(256)) * 4, b"\x80\x02}q\x00(X\x01", b"PK\x03\x04junk"],
    ids=["text", "bytes", "cut-pickle", "bad-zip"],
)
def test_a_file_that_is_no_checkpoint_is_a_data_error_not_unsafe(tmp_path, content):
    (tmp_path / "ck.pt").write_bytes(content)
    with pytest.raises(DataError, match="damaged or truncated") as info:
        load_checkpoint(tmp_path / "ck.pt")
    assert not isinstance(info.value, UnsafeFileError)


def test_a_missing_checkpoint_is_a_run_folder_error(tmp_path):
    with pytest.raises(RunFolderError, match=f"checkpoint {tmp_path / 'no.pt'} does not exist"):
        load_checkpoint(tmp_path / "no.pt")
    (tmp_path / "dir.pt").mkdir()
    with pytest.raises(RunFolderError, match="does not exist"):
        load_checkpoint(tmp_path / "dir.pt")


def test_save_checkpoint_leaves_no_temporary_and_replaces_atomically(tmp_path):
    path = save_checkpoint(tmp_path / "run" / "checkpoint.pt", {"v": 1})
    save_checkpoint(path, {"v": 2, "t": torch.ones(3)})
    assert [p.name for p in path.parent.iterdir()] == ["checkpoint.pt"]
    loaded = load_checkpoint(path)
    assert loaded["v"] == 2 and torch.equal(loaded["t"], torch.ones(3))
