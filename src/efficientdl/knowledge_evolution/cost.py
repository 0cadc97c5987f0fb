"""Parameter and operation counts of a network: MACs, and the official profiler's
operation count with its quirks, only to reproduce the paper's 3.632 → 0.968 GOps."""

from __future__ import annotations

import math

import torch
from torch import nn

_CONV = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
_BN = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)
_POOL = (nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d)


def _count(module: nn.Module, x: torch.Tensor, out: torch.Tensor) -> tuple[int, int]:
    """(MACs, official ops) of one call of a leaf module, over the whole batch."""
    if isinstance(module, _CONV):
        k = math.prod(module.kernel_size)
        cin = module.in_channels // module.groups
        bias = 1 if module.bias is not None else 0
        return out.numel() * cin * k, out.numel() * (2 * k * cin - 1 + bias)
    if isinstance(module, nn.Linear):
        rows = out.numel() // module.out_features
        return rows * module.in_features * module.out_features, out.numel() * (
            2 * module.in_features - 1
        )
    if isinstance(module, _BN):
        return 0, 2 * x.numel()
    if isinstance(module, nn.ReLU):
        return 0, x.numel()
    if isinstance(module, _POOL) and isinstance(module.kernel_size, int):
        return 0, (module.kernel_size - 1) * out.numel()
    return 0, 0


@torch.no_grad()
def cost(model: nn.Module, example_input: torch.Tensor) -> dict[str, int]:
    """{'params', 'macs', 'ops_official'} per sample of `example_input` (batch N ≥ 1).

    params: parameters only (never buffers or masks). macs: conv out_elems·(C_in/groups)·k_h·k_w
    plus linear in·out. ops_official: conv out_elems·(2k²C_in − 1 + bias), BN 2 per input element,
    ReLU input numel per call, max-pool (kernel_size − 1)·out for an int kernel size, adaptive
    pooling not counted, linear (2·in − 1)·out. Runs one eval-mode forward; the mode is restored.
    """
    totals = [0, 0]

    def hook(module, inputs, output):
        macs, ops = _count(module, inputs[0], output)
        totals[0] += macs
        totals[1] += ops

    leaves = [m for m in model.modules() if not list(m.children())]
    handles = [m.register_forward_hook(hook) for m in leaves]
    was_training = model.training
    try:
        model.eval()
        model(example_input)
    finally:
        model.train(was_training)
        for handle in handles:
            handle.remove()
    n = example_input.shape[0]
    params = sum(p.numel() for p in model.parameters())
    return {"params": params, "macs": totals[0] // n, "ops_official": totals[1] // n}
