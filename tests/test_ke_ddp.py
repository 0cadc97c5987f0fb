"""`torchrun --nproc_per_node=2 -m efficientdl.cli ke train` (gloo on CPU) equals one process
with the same global batch, and only rank 0 writes or prints.

The reference is plain `ke train` in one process. Under torchrun each rank trains on
`batch[rank::2]`; its loss is scaled by shard/batch and the gradients are summed, BatchNorm uses
the statistics of the whole global batch (all-reduced), and random crops and CS-KD partners are
drawn for the whole batch first. So both runs compute the same numbers, up to float32 rounding
(the sums are ordered differently): after 2 generations × 2 epochs the weights agree to ~1e-6,
and we allow rtol 1e-4 / atol 1e-5. Batch size 7 makes the two shards unequal (4 and 3), which a
plain mean per rank would get wrong; local (per-rank) BatchNorm statistics would differ by ~1e-1.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

from conftest import run_cli, write_digits, write_ke_config
from efficientdl.core import load_checkpoint


def test_two_ranks_equal_one_process_with_the_same_global_batch(tmp_path):
    config = write_ke_config(
        tmp_path / "ddp.yaml",
        write_digits(tmp_path / "data"),
        name="ddp",
        batch_size=7,
        lr=0.1,
        cskd=True,
        label_smoothing=0.1,
    )
    args = ["ke", "train", "--quiet", "--config", str(config)]
    single = run_cli(*args, "--run-dir", tmp_path / "single", cwd=tmp_path)
    assert single.returncode == 0, single.stderr[-2000:]

    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    env.pop("EFFICIENTDL_DEBUG", None)
    logs = tmp_path / "logs"
    ddp = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
         "--log-dir", str(logs), "--redirects", "1", "-m", "efficientdl.cli", *args,
         "--run-dir", str(tmp_path / "ddp")],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert ddp.returncode == 0, ddp.stderr[-3000:]
    stdout = {int(p.parent.name): p.read_text() for p in logs.rglob("stdout.log")}
    assert sorted(stdout) == [0, 1]
    assert stdout[1] == ""  # ranks other than 0 print nothing
    printed = json.loads(stdout[0])
    assert printed["world_size"] == 2

    a, b = tmp_path / "single", tmp_path / "ddp"
    files = sorted(str(p.relative_to(a)) for p in a.rglob("*") if p.is_file())
    assert files == sorted(str(p.relative_to(b)) for p in b.rglob("*") if p.is_file())
    for name in ("masks.pt", "gen_01/start.pt"):  # identical before any training
        x, y = load_checkpoint(a / name), load_checkpoint(b / name)
        x, y = x.get("model", x), y.get("model", y)
        assert all(torch.equal(x[k], y[k]) for k in x), name
    for g in (1, 2):
        x = load_checkpoint(a / f"gen_0{g}" / "final.pt")["model"]
        y = load_checkpoint(b / f"gen_0{g}" / "final.pt")["model"]
        for key in x:
            torch.testing.assert_close(y[key], x[key], rtol=1e-4, atol=1e-5, msg=key)
        epochs = [json.loads((d / f"gen_0{g}" / "metrics.json").read_text()) for d in (a, b)]
        for one, two in zip(*epochs, strict=True):
            assert one["train_loss"] == pytest.approx(two["train_loss"], rel=1e-4)
            assert one["train_accuracy"] == two["train_accuracy"]
    history = [json.loads((d / "history.json").read_text()) for d in (a, b)]
    for one, two in zip(*history, strict=True):
        for net in ("dense", "fit", "reset"):
            assert one[net]["accuracy"] == two[net]["accuracy"], (one["generation"], net)
            assert one[net]["loss"] == pytest.approx(two[net]["loss"], rel=1e-4)
    summaries = [json.loads((d / "summary.json").read_text()) for d in (a, b)]
    assert summaries[0]["world_size"] == 1 and summaries[1]["world_size"] == 2
    assert summaries[0]["accuracy"] == summaries[1]["accuracy"]
