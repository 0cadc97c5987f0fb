"""fit(): exact resume after a crash, 2-process DDP equals one process, NaN loss is an error."""

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from efficientdl.core import load_checkpoint
from efficientdl.data import ArrayDataset
from efficientdl.snn import train as train_module
from efficientdl.snn.config import recipe

ROOT = Path(__file__).resolve().parents[1]


def synthetic(n, shape, seed, classes=10):
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % classes
    images = torch.randn(n, *shape, generator=g) + labels.float().reshape(-1, *[1] * len(shape))
    return ArrayDataset(images, labels)


def _cifar_recipe(run_dir, **kw):
    # cifar10_cnn1 has dropout, so exact resume needs the RNG state restored too
    return recipe(
        "cifar10_cnn1", T=2, batch_size=4, epochs=2, checkpoint_every=3, device="cpu", seed=5, **kw
    )


def _data():
    return synthetic(14, (3, 32, 32), 0), synthetic(8, (3, 32, 32), 1)


class Crash(Exception):
    pass


@pytest.mark.parametrize(
    "crash_at, checkpoint",
    [
        (6, (1, 0)),  # 2nd step of epoch 2: resume from the end-of-epoch-1 checkpoint
        (8, (1, 3)),  # 4th step of epoch 2: resume mid-epoch, after its 3rd step
    ],
)
def test_resume_after_crash_equals_uninterrupted_run(tmp_path, monkeypatch, crash_at, checkpoint):
    full = train_module.fit(
        _cifar_recipe(None), run_dir=tmp_path / "full", datasets=_data(), progress=False
    )
    real_step, calls = train_module.train_step, {"n": 0}

    def crashing_step(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == crash_at:
            raise Crash
        return real_step(*args, **kwargs)

    monkeypatch.setattr(train_module, "train_step", crashing_step)
    with pytest.raises(Crash):
        train_module.fit(
            _cifar_recipe(None), run_dir=tmp_path / "cut", datasets=_data(), progress=False
        )
    state = load_checkpoint(tmp_path / "cut" / "checkpoint.pt")
    assert (state["epoch"], state["step"]) == checkpoint
    monkeypatch.setattr(train_module, "train_step", real_step)
    resumed = train_module.fit(
        _cifar_recipe(None), run_dir=tmp_path / "cut", datasets=_data(), progress=False, resume=True
    )
    a = load_checkpoint(tmp_path / "full" / "checkpoint.pt")["model"]
    b = load_checkpoint(tmp_path / "cut" / "checkpoint.pt")["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)
    hist_a = json.loads((tmp_path / "full" / "metrics.json").read_text())
    hist_b = json.loads((tmp_path / "cut" / "metrics.json").read_text())
    strip = lambda h: [{k: v for k, v in r.items() if "seconds" not in k} for r in h]  # noqa: E731
    assert strip(hist_a) == strip(hist_b)
    assert full["final_test_accuracy"] == resumed["final_test_accuracy"]


def test_nan_loss_is_a_clear_error(tmp_path):
    train, test = synthetic(8, (1, 28, 28), 0), synthetic(4, (1, 28, 28), 1)
    train.images[3] = float("nan")
    r = recipe("mnist_cnn", batch_size=4, epochs=1, device="cpu")
    with pytest.raises(FloatingPointError, match=r"snn diverged in epoch 1, .*gradient norm nan"):
        train_module.fit(r, run_dir=tmp_path, datasets=(train, test), progress=False)


DDP_SCRIPT = textwrap.dedent("""
    import sys, torch
    sys.path.insert(0, {tests!r})
    from test_snn_train import synthetic
    from efficientdl.snn.train import fit
    from efficientdl.snn.config import recipe
    r = recipe("mnist_cnn", batch_size=8, epochs=2, device="cpu", seed=3, threads=1)
    data = (synthetic(24, (1, 28, 28), 0), synthetic(8, (1, 28, 28), 1))
    fit(r, run_dir=sys.argv[1], datasets=data, progress=False)
""")


def test_two_process_ddp_equals_one_process_with_same_global_batch(tmp_path):
    script = tmp_path / "ddp_run.py"
    script.write_text(DDP_SCRIPT.format(tests=str(ROOT / "tests")))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    subprocess.run(
        [sys.executable, str(script), str(tmp_path / "single")], check=True, env=env, timeout=300
    )
    subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--nproc_per_node=2",
            "--master_port=29517",
            str(script),
            str(tmp_path / "ddp"),
        ],
        check=True,
        env=env,
        timeout=300,
        capture_output=True,
    )
    single = load_checkpoint(tmp_path / "single" / "checkpoint.pt")
    ddp = load_checkpoint(tmp_path / "ddp" / "checkpoint.pt")
    assert ddp["epoch"] == single["epoch"] == 2
    for key, value in single["model"].items():
        torch.testing.assert_close(ddp["model"][key], value, atol=2e-5, rtol=1e-4)
    summary_single = json.loads((tmp_path / "single" / "summary.json").read_text())
    summary_ddp = json.loads((tmp_path / "ddp" / "summary.json").read_text())
    assert summary_ddp["world_size"] == 2
    assert summary_single["final_test_accuracy"] == summary_ddp["final_test_accuracy"]
    history_single = json.loads((tmp_path / "single" / "metrics.json").read_text())
    history_ddp = json.loads((tmp_path / "ddp" / "metrics.json").read_text())
    assert [r["train_samples"] for r in history_ddp] == [24, 24]  # each sample once per epoch
    for a, b in zip(history_single, history_ddp):
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-5)
