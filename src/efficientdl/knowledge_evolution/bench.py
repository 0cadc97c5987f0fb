"""Dense vs slim cost and the forward timed for latency, shared by `efficientdl ke bench` and
benchmarks/ke_slim.py (timed with `efficientdl.core.benchmark.time_variants`)."""

from __future__ import annotations

import contextlib
from collections.abc import Callable

import torch
from torch import nn

from efficientdl.knowledge_evolution.cost import cost


def forward_fn(
    model: nn.Module, x: torch.Tensor, *, bf16: bool = False, channels_last: bool = False
) -> Callable[[], object]:
    """A no-argument eval-mode, inference-mode forward of `model` on `x` (optionally bf16
    autocast and channels_last), a variant for `time_variants`."""
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


def cost_row(name: str, model: nn.Module, example_input: torch.Tensor) -> dict:
    """{'net', 'params', 'macs', 'ops_official'} of `model` at `example_input` (batch 1)."""
    return {"net": name, **cost(model, example_input[:1])}
