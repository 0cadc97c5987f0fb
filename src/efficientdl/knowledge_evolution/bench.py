"""Dense vs slim cost and the forward timed for latency, shared by `efficientdl ke bench` and
benchmarks/ke_slim.py (timed with `efficientdl.core.benchmark.time_variants`)."""

from __future__ import annotations

import contextlib
from collections.abc import Callable

import torch
from torch import nn

from efficientdl.core import registry
from efficientdl.core.errors import ConfigError
from efficientdl.knowledge_evolution.config import KEConfig
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


def bench_shape(
    config: KEConfig, *, input_size: int | None = None, num_classes: int | None = None
) -> tuple[tuple[int, int, int], int]:
    """((C, H, W), classes) of the net `ke bench` measures: `input_size` / `num_classes` where
    given (its --input-size, --classes), else the config keys `in_channels`, `input_size`,
    `num_classes`, else the registered shape of the config's dataset and 10 classes."""
    try:
        shape = registry.get("dataset", config.dataset).input_shape
    except ConfigError as err:
        raise ConfigError(f"config key 'dataset': {err}") from None
    if shape is None or len(shape) != 3:
        raise ConfigError(
            f"config key 'dataset': {config.dataset!r} is not an image-classification dataset"
        )
    channels = config.in_channels or shape[0]
    side = input_size or config.input_size or shape[-1]
    return (channels, side, side), num_classes or config.num_classes or 10
