"""AdaShare trainer under DDP: two gloo CPU processes against one process, NaN on one rank,
resume, rank 0 as the only writer.

The two ranks are launched as torchrun would (MASTER_ADDR/PORT, RANK, WORLD_SIZE, LOCAL_RANK) and
run warm-up, search, sampling, re-training, selection and a final evaluation; rank 1 gets a NaN
loss at search iteration 9, both ranks must stop naming it, and a second launch resumes.

Reference: with local BN a rank normalises by its half-batch statistics and each task loss is a
mean over that half's valid pixels, so no plain one-process run on the global batch computes the
same thing (exact agreement would need equal halves). The honest reference is one process that
does exactly what DDP specifies: every training forward runs the two half-batches separately
(own BN batch statistics, running statistics as after the first half, i.e. rank 0's, which DDP
shares), and the loss is the mean of the two half-batch losses, so that its gradient is the mean
of the two half-batch gradients. DDP must match it to float rounding (rtol 1e-4); the two ranks
must agree exactly.
"""

import builtins
import io
import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from adashare_support import TINY
from efficientdl.adashare.config import AdaShareConfig
from efficientdl.adashare.model import AdaShareNet
from efficientdl.adashare.objectives import tasks
from efficientdl.adashare.phases import AdaShareRun, ddp, search, training
from efficientdl.core import DistContext
from efficientdl.core.config import ConfigError, apply_overrides, from_dict

pytestmark = pytest.mark.usefixtures("one_thread")

NAN_ITER = 9
CONFIG = apply_overrides(TINY, ["threads=1", "retrain.iters=3", "retrain.val_freq=3"])


def instrument(patch, trainer, *, nan_at: int | None = None) -> dict:
    """Record, via `patch(owner, name, value)`: the Gumbel gates per search iteration, every hard
    policy drawn, and the in-memory state after the last step of each phase. `nan_at` makes the
    loss of that (1-based) search iteration NaN."""
    record = {"gates": {}, "policies": [], "finals": {}, "now": {}}
    real_step, real_gates, real_policy = (
        search.Search._step,
        AdaShareNet.sample_gates,
        AdaShareNet.sample_policy,
    )
    real_sync, real_loss = ddp.synchronise, search.weighted_loss

    def step(self, phase):
        record["now"]["it"] = self.state["it"]
        return real_step(self, phase)

    def gates(self, *args, **kwargs):
        out = real_gates(self, *args, **kwargs)
        record["gates"][record["now"]["it"]] = out.detach().clone()
        return out

    def policy(self, *args, **kwargs):
        out = real_policy(self, *args, **kwargs)
        record["policies"].append(out.execute.clone())
        return out

    def sync(model, ctx):
        record["now"]["model"] = model
        return real_sync(model, ctx)

    def loss(*args):
        total, parts = real_loss(*args)
        return (total * torch.nan if record["now"]["it"] + 1 == nan_at else total), parts

    def after_step(r):
        state = record["now"]["model"].state_dict()
        record["finals"][r["phase"].split("_")[0]] = {k: v.clone() for k, v in state.items()}

    patch(search.Search, "_step", step)
    patch(AdaShareNet, "sample_gates", gates)
    patch(AdaShareNet, "sample_policy", policy)
    patch(search, "weighted_loss", loss)
    for module in (training, search):
        patch(module, "synchronise", sync)
    trainer.callbacks.append(after_step)
    return record


def run_all(trainer, record: dict) -> dict:
    """Every phase up to a final evaluation; the record plus history, test metrics or the error."""
    try:
        trainer.select()
        record["test"] = trainer.evaluate("test")
    except RuntimeError as err:
        record["error"] = str(err)
    record["history"] = trainer.logger.history
    record.pop("now")
    return record


def guard_writes(run_dir: Path) -> list[str]:
    """Collect (instead of performing) every attempt to write a file under `run_dir`."""
    root, attempts = os.path.realpath(run_dir), []
    real_open, real_os_open = builtins.open, os.open

    def inside(path) -> bool:
        return not isinstance(path, int) and os.path.realpath(path).startswith(root)

    def guarded_open(file, mode="r", *args, **kwargs):
        if any(c in mode for c in "wax+") and inside(file):
            attempts.append(str(file))
            file = os.devnull
        return real_open(file, mode, *args, **kwargs)

    def guarded_os_open(path, flags, *args, **kwargs):
        if flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT) and inside(path):
            attempts.append(str(path))
            path = os.devnull
        return real_os_open(path, flags, *args, **kwargs)

    builtins.open = io.open = guarded_open
    os.open = guarded_os_open
    return attempts


RANK_SCRIPT = textwrap.dedent("""
    import os, sys
    from pathlib import Path
    import torch
    sys.path.insert(0, {tests!r})
    import test_adashare_ddp as t
    run_dir, out, nan_at = Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3]) or None
    rank = int(os.environ["RANK"])
    writes = t.guard_writes(run_dir) if rank else []
    tr = t.AdaShareRun(t.from_dict(t.AdaShareConfig, t.CONFIG), run_dir=run_dir)
    record = t.instrument(setattr, tr, nan_at=nan_at if rank == 1 else None)
    record = t.run_all(tr, record)
    record["writes"] = writes
    torch.save(record, out / f"rank{{rank}}.pt")
""")


def launch(tmp_path, run_dir: Path, out: Path, nan_at: int | None) -> list[dict]:
    """Run the two ranks; their records."""
    script = tmp_path / "rank.py"
    script.write_text(RANK_SCRIPT.format(tests=str(Path(__file__).parent)))
    out.mkdir()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    procs = []
    for rank in range(2):
        env = {
            **os.environ,
            "OMP_NUM_THREADS": "1",
            "MASTER_ADDR": "127.0.0.1",
            "MASTER_PORT": str(port),
            "RANK": str(rank),
            "LOCAL_RANK": str(rank),
            "WORLD_SIZE": "2",
        }
        args = [sys.executable, str(script), str(run_dir), str(out), str(nan_at or 0)]
        with open(out / f"rank{rank}.log", "w") as log:
            procs.append(subprocess.Popen(args, env=env, stdout=log, stderr=subprocess.STDOUT))
    try:
        for p in procs:
            p.wait(timeout=240)
    finally:
        for p in procs:
            p.kill()
    logs = [(out / f"rank{r}.log").read_text()[-3000:] for r in range(2)]
    assert [p.returncode for p in procs] == [0, 0], logs
    return [torch.load(out / f"rank{r}.pt", weights_only=False) for r in range(2)]


def two_rank_reference(monkeypatch, tmp_path) -> dict:
    """One process doing what the two ranks do (see the module docstring)."""
    real_forward, real_loss = AdaShareNet.forward, tasks.weighted_loss

    def forward(self, x, *args, **kwargs):
        if not self.training:
            return real_forward(self, x, *args, **kwargs)
        half = len(x) // 2
        first = real_forward(self, x[:half], *args, **kwargs)
        rank0_stats = [(m, n, b.clone()) for m in self.modules() for n, b in m._buffers.items()]
        second = real_forward(self, x[half:], *args, **kwargs)
        for module, name, saved in rank0_stats:  # new tensors: autograd saved the old ones
            setattr(module, name, saved)
        return {t: torch.cat([first[t], second[t]]) for t in first}

    def mean_of_halves(outputs, batch, spec):
        half = len(batch["image"]) // 2
        a, b = (
            real_loss(
                {t: o[part] for t, o in outputs.items()},
                {k: v[part] for k, v in batch.items()},
                spec,
            )
            for part in (slice(0, half), slice(half, None))
        )
        return (a[0] + b[0]) / 2, {t: (a[1][t] + b[1][t]) / 2 for t in a[1]}

    monkeypatch.setattr(AdaShareNet, "forward", forward)
    monkeypatch.setattr(training, "weighted_loss", mean_of_halves)
    monkeypatch.setattr(search, "weighted_loss", mean_of_halves)
    tr = AdaShareRun(from_dict(AdaShareConfig, CONFIG), run_dir=tmp_path / "single")
    return run_all(tr, instrument(monkeypatch.setattr, tr))


def _close(a, b, **tol):
    torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6, **tol)


def test_two_ranks_agree_with_each_other_and_with_the_one_process_reference(tmp_path, monkeypatch):
    run_dir = tmp_path / "ddp"
    stopped = launch(tmp_path, run_dir, tmp_path / "stopped", NAN_ITER)
    for r in stopped:  # the NaN of rank 1 stops both ranks, naming the iteration
        assert f"loss became nan at iteration {NAN_ITER}" in r["error"], r.get("error")
    kept = torch.load(run_dir / "search" / "latest.pt", weights_only=False)
    assert kept["state"]["it"] < NAN_ITER  # the last good checkpoint, from rank 0
    ranks = launch(tmp_path, run_dir, tmp_path / "resumed", None)
    reference = two_rank_reference(monkeypatch, tmp_path)

    zero, one = ranks
    assert "error" not in zero and "error" not in one and "error" not in reference
    assert one["writes"] == [] and stopped[1]["writes"] == []  # only rank 0 writes
    # identical on both ranks, and the reference's values to float rounding
    assert zero["test"] == one["test"] and zero["history"] == one["history"]
    assert set(stopped[0]["finals"]) == {"warmup", "search"}
    assert set(zero["finals"]) == {"search", "retrain"}  # warm-up was done in the first launch
    for (a, b), phases in (((stopped), ["warmup"]), ((zero, one), ["search", "retrain"])):
        for phase in phases:
            for key, value in a["finals"][phase].items():
                assert torch.equal(value, b["finals"][phase][key]), (phase, key)
                _close(value, reference["finals"][phase][key], msg=f"{phase} {key}")
    gates = [{**s["gates"], **r["gates"]} for s, r in zip(stopped, ranks)]  # before/after resume
    assert gates[0].keys() == gates[1].keys() == reference["gates"].keys()
    for it, value in gates[0].items():
        assert torch.equal(value, gates[1][it]), it
        _close(value, reference["gates"][it])
    drawn = [s["policies"] + r["policies"] for s, r in zip(stopped, ranks)]
    assert len(drawn[0]) == len(drawn[1]) == len(reference["policies"])
    for p, q, ref in zip(*drawn, reference["policies"]):
        assert torch.equal(p, q) and torch.equal(p, ref)
    assert [r.pop("phase") for r in zero["history"]] == [
        r.pop("phase") for r in reference["history"]
    ]
    for ours, theirs in zip(zero["history"], reference["history"], strict=True):
        assert ours == pytest.approx(theirs, rel=1e-4, abs=1e-6)
    for task, metrics in zero["test"].items():
        assert metrics == pytest.approx(reference["test"][task], rel=1e-4, abs=1e-6)


def test_global_batch_must_split_evenly_over_the_ranks(tmp_path, monkeypatch):
    from efficientdl.adashare.phases import context as context_module

    monkeypatch.setattr(context_module, "init_distributed", lambda device: DistContext(0, 3, 0))
    with pytest.raises(ConfigError, match="'train.batch_size'.* 4 .* 3 ranks"):
        AdaShareRun(from_dict(AdaShareConfig, CONFIG), run_dir=tmp_path)
