"""Parameter and operation counts of a network: MACs, and the official profiler's
operation count with its quirks, only to reproduce the paper's 3.632 → 0.968 GOps.

MACs are counted by `torch.utils.flop_counter.FlopCounterMode` on the aten ops a forward runs,
so functional calls (`F.conv2d`, `@`, `einsum`, attention) count as much as modules do:
MACs = its FLOPs / 2, where it counts 2 FLOPs per multiply-accumulate of convolutions (any
groups, transposed too), matrix products (`mm`, `addmm`, `bmm`, `baddbmm`: linear layers,
`matmul`, `@`, `einsum`) and scaled-dot-product attention (CPU kernel included). Nothing else
counts: bias adds, element-wise ops (activations, residual adds, gates), normalisation and
pooling are 0 MACs.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode, flop_registry

_CONV = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
_BN = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)
_POOL = (nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d)


def _official_ops(module: nn.Module, x: torch.Tensor, out: torch.Tensor) -> int:
    """The official profiler's operation count of one call of a leaf module, over the batch."""
    if isinstance(module, _CONV):
        k = math.prod(module.kernel_size)
        cin = module.in_channels // module.groups
        bias = 1 if module.bias is not None else 0
        return out.numel() * (2 * k * cin - 1 + bias)
    if isinstance(module, nn.Linear):
        return out.numel() * (2 * module.in_features - 1)
    if isinstance(module, _BN):
        return 2 * x.numel()
    if isinstance(module, nn.ReLU):
        return x.numel()
    if isinstance(module, _POOL) and isinstance(module.kernel_size, int):
        return (module.kernel_size - 1) * out.numel()
    return 0


def _flop_counter() -> FlopCounterMode:
    """FlopCounterMode that also counts the CPU attention kernel (by the fused kernels' rule)."""
    aten = torch.ops.aten
    fused = flop_registry[aten._scaled_dot_product_flash_attention]

    def cpu_attention(*args, **kwargs):
        return fused(*args, **kwargs)

    cpu_attention._get_raw = True  # `fused` already takes the raw arguments
    return FlopCounterMode(
        display=False,
        custom_mapping={aten._scaled_dot_product_flash_attention_for_cpu: cpu_attention},
    )


@torch.no_grad()
def cost(model: nn.Module, example_input: torch.Tensor) -> dict[str, int]:
    """{'params', 'macs', 'ops_official'} per sample of `example_input` (batch N ≥ 1).

    params: parameters only (never buffers or masks). macs: multiply-accumulates of every
    convolution, matrix product and attention the forward runs, modules or functional (see the
    module docstring). ops_official (the official profiler's rule, from conv, linear, BN, ReLU and
    max-pool modules only): conv out_elems·(2k²C_in − 1 + bias), BN 2 per input element, ReLU
    input numel per call, max-pool (kernel_size − 1)·out for an int kernel size, adaptive pooling
    not counted, linear (2·in − 1)·out. Runs one eval-mode forward; the mode is restored.
    """
    ops = [0]

    def hook(module, inputs, output):
        ops[0] += _official_ops(module, inputs[0], output)

    leaves = [m for m in model.modules() if not list(m.children())]
    handles = [m.register_forward_hook(hook) for m in leaves]
    was_training = model.training
    counter = _flop_counter()
    try:
        model.eval()
        with counter:
            model(example_input)
    finally:
        model.train(was_training)
        for handle in handles:
            handle.remove()
    n = example_input.shape[0]
    params = sum(p.numel() for p in model.parameters())
    macs = counter.get_total_flops() // 2
    return {"params": params, "macs": macs // n, "ops_official": ops[0] // n}
