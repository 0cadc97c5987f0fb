"""Dense vs slim cost and measured latency, shared by `efficientdl ke bench` and
benchmarks/ke_slim.py."""

from __future__ import annotations

import contextlib
import statistics
import time
from collections.abc import Callable

import torch
from torch import nn

from efficientdl.knowledge_evolution.cost import cost


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def latency(
    fns: dict[str, Callable[[], object]], *, device: torch.device, warmup: int = 10, runs: int = 50
) -> dict[str, float]:
    """Median wall time in milliseconds of each `fns[name]()` after `warmup` calls each, the timed
    calls interleaved round-robin so that load from other processes hits every variant alike
    (CUDA synchronised around each call)."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    _sync(device)
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(runs):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            _sync(device)
            times[name].append(1000.0 * (time.perf_counter() - t0))
    return {name: statistics.median(t) for name, t in times.items()}


def forward_fn(
    model: nn.Module, x: torch.Tensor, *, bf16: bool = False, channels_last: bool = False
) -> Callable[[], object]:
    """A no-argument eval-mode, inference-mode forward of `model` on `x` (optionally bf16
    autocast and channels_last), for `latency`."""
    model.eval()
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    device_type = x.device.type

    def run():
        ctx = (
            torch.autocast(device_type, dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()
        )
        with torch.inference_mode(), ctx:
            return model(x)

    return run


def timed(fn: Callable[[], object], repeats: int = 3) -> float:
    """Best-of-`repeats` wall time of one call of `fn()` in seconds."""
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def cost_row(name: str, model: nn.Module, example_input: torch.Tensor) -> dict:
    """{'net', 'params', 'macs', 'ops_official'} of `model` at `example_input` (batch 1)."""
    return {"net": name, **cost(model, example_input[:1])}
