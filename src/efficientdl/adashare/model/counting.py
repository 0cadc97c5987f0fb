"""Analytic parameter and FLOP counts: trainable parameters, conv + linear MACs per image."""

from __future__ import annotations

import math
from dataclasses import dataclass

from torch import nn

from efficientdl.adashare.model.policy import Policy


def conv_out(size: int, kernel: int, stride: int = 1, padding: int = 0, dilation: int = 1) -> int:
    """Output length of a convolution along one axis."""
    return (size + 2 * padding - dilation * (kernel - 1) - 1) // stride + 1


def pool_out_ceil(size: int, kernel: int, stride: int, padding: int) -> int:
    """Output length of a ceil-mode max-pool (the last window must start inside the input)."""
    out = math.ceil((size + 2 * padding - kernel) / stride) + 1
    if (out - 1) * stride >= size + padding:
        out -= 1
    return out


def _conv_macs(module: nn.Conv2d, h: int, w: int) -> tuple[int, int, int]:
    oh = conv_out(h, module.kernel_size[0], module.stride[0], module.padding[0], module.dilation[0])
    ow = conv_out(w, module.kernel_size[1], module.stride[1], module.padding[1], module.dilation[1])
    per_pixel = module.out_channels * module.in_channels // module.groups
    return oh * ow * per_pixel * module.kernel_size[0] * module.kernel_size[1], oh, ow


@dataclass(frozen=True)
class Costs:
    """MACs per image: stem, per block (residual F, projection r), per task head; feature size."""

    stem: int
    residual: tuple[int, ...]
    projection: tuple[int, ...]
    heads: dict[str, int]
    feature_size: tuple[int, int]

    def block(self, index: int, execute: bool) -> int:
        """MACs of block `index` executed (F + projection) or skipped (projection only)."""
        return self.projection[index] + (self.residual[index] if execute else 0)


def _head_macs(head: nn.Module, h: int, w: int) -> int:
    total = 0
    for m in head.modules():
        if isinstance(m, nn.Conv2d):
            total += _conv_macs(m, h, w)[0]  # head convs keep the spatial size
        elif isinstance(m, nn.Linear):
            total += m.in_features * m.out_features
    return total


def costs(model, height: int, width: int) -> Costs:
    """Analytic conv/linear MACs of `model` (an AdaShareNet) for one image of height × width."""
    h, w, stem = height, width, 0
    for m in model.stem:
        if isinstance(m, nn.Conv2d):
            macs, h, w = _conv_macs(m, h, w)
            stem += macs
        elif isinstance(m, nn.MaxPool2d):
            h = pool_out_ceil(h, m.kernel_size, m.stride, m.padding)
            w = pool_out_ceil(w, m.kernel_size, m.stride, m.padding)
    residual, projection = [], []
    for block in model.blocks:
        m1, oh, ow = _conv_macs(block.conv1, h, w)
        m2, _, _ = _conv_macs(block.conv2, oh, ow)
        residual.append(m1 + m2)
        projection.append(
            0 if block.projection is None else _conv_macs(block.projection[0], h, w)[0]
        )
        h, w = oh, ow
    heads = {t: _head_macs(model.heads[t], h, w) for t in model.tasks}
    return Costs(stem, tuple(residual), tuple(projection), heads, (h, w))


def _decisions(model, policy: Policy | None) -> list[tuple[bool, ...]]:
    if policy is None:
        return [(True,) * model.num_blocks] * len(model.tasks)
    return [tuple(row) for row in policy.execute.tolist()]


def flops(model, height: int, width: int, policy: Policy | None = None) -> dict[str, float]:
    """MACs and FLOPs (= 2·MACs) per image for `policy` (None: hard sharing).

    'shared': the prefix tree (stem once, each distinct prefix once, then the heads);
    'per_task_sum': K independent passes. Hard sharing counts one backbone pass in both.
    """
    c = costs(model, height, width)
    rows = _decisions(model, policy)
    heads = sum(c.heads.values())
    per_task = sum(c.stem + sum(c.block(l, e) for l, e in enumerate(r)) for r in rows)
    prefixes = {r[: l + 1] for r in rows for l in range(model.num_blocks)}
    shared = c.stem + sum(c.block(len(p) - 1, p[-1]) for p in prefixes)
    if policy is None:
        per_task = shared
    return {
        "macs_shared": shared + heads,
        "macs_per_task_sum": per_task + heads,
        "flops_shared": 2 * (shared + heads),
        "flops_per_task_sum": 2 * (per_task + heads),
        "macs_heads": heads,
    }


def _numel(params) -> int:
    return sum(p.numel() for p in params if p.requires_grad)


def _block_params(block, execute: bool) -> int:
    if execute:
        return _numel(block.parameters())
    return 0 if block.projection is None else _numel(block.projection.parameters())


def param_counts(model, policy: Policy | None = None) -> dict:
    """Trainable parameters (BN buffers and policy logits excluded).

    Returns total (backbone + heads), backbone, heads, per-task effective (stem + executed blocks +
    projections of skipped stage-first blocks + its head), the union used by at least one task,
    and `backbone_units` (1 for one shared backbone).
    """
    stem = _numel(model.stem.parameters())
    backbone = stem + _numel(model.blocks.parameters())
    heads = {t: _numel(model.heads[t].parameters()) for t in model.tasks}
    rows = _decisions(model, policy)
    per_task = {
        t: stem + sum(_block_params(b, e) for b, e in zip(model.blocks, r)) + heads[t]
        for t, r in zip(model.tasks, rows)
    }
    used = [any(col) for col in zip(*rows)]
    union = stem + sum(_block_params(b, u) for b, u in zip(model.blocks, used))
    return {
        "total": backbone + sum(heads.values()),
        "backbone": backbone,
        "heads": sum(heads.values()),
        "per_task": per_task,
        "union": union + sum(heads.values()),
        "backbone_units": 1,
    }
