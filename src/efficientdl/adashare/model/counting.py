"""Analytic parameter and FLOP counts: trainable parameters, conv + linear MACs per image."""

from __future__ import annotations

import math
from dataclasses import dataclass

from torch import nn

from efficientdl.adashare.model.policy import Policy
from efficientdl.adashare.model.soft_sharing import (
    SLUICE_SUBSPACES,
    CrossStitchUnit,
    MTANNet,
    SluiceNet,
    SluiceUnit,
    SoftSharingNet,
)


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


def _same_size_macs(module: nn.Module, h: int, w: int) -> int:
    """Conv + linear MACs of a module whose convs keep the spatial size (heads, 1×1 units)."""
    total = 0
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            total += _conv_macs(m, h, w)[0]
        elif isinstance(m, nn.Linear):
            total += m.in_features * m.out_features
    return total


def _block_macs(block, h: int, w: int) -> tuple[int, int, int, int]:
    """(residual F, projection, output h, output w) MACs of a GatedBlock on an h × w input."""
    m1, oh, ow = _conv_macs(block.conv1, h, w)
    m2, _, _ = _conv_macs(block.conv2, oh, ow)
    proj = 0 if block.projection is None else _conv_macs(block.projection[0], h, w)[0]
    return m1 + m2, proj, oh, ow


def _trunk_costs(stem, blocks, height: int, width: int):
    """Stem MACs, per-block residual and projection MACs, and each block's input size."""
    h, w, stem_macs = height, width, 0
    for m in stem:
        if isinstance(m, nn.Conv2d):
            macs, h, w = _conv_macs(m, h, w)
            stem_macs += macs
        elif isinstance(m, nn.MaxPool2d):
            h = pool_out_ceil(h, m.kernel_size, m.stride, m.padding)
            w = pool_out_ceil(w, m.kernel_size, m.stride, m.padding)
    residual, projection, sizes = [], [], []
    for block in blocks:
        sizes.append((h, w))
        res, proj, h, w = _block_macs(block, h, w)
        residual.append(res)
        projection.append(proj)
    return stem_macs, residual, projection, sizes + [(h, w)]


def costs(model, height: int, width: int) -> Costs:
    """Analytic conv/linear MACs of `model` (an AdaShareNet) for one image of height × width."""
    stem, residual, projection, sizes = _trunk_costs(model.stem, model.blocks, height, width)
    heads = {t: _same_size_macs(model.heads[t], *sizes[-1]) for t in model.tasks}
    return Costs(stem, tuple(residual), tuple(projection), heads, sizes[-1])


def _decisions(model, policy: Policy | None) -> list[tuple[bool, ...]]:
    if policy is None:
        return [(True,) * model.num_blocks] * len(model.tasks)
    return [tuple(row) for row in policy.execute.tolist()]


def flops(model, height: int, width: int, policy: Policy | None = None) -> dict[str, float]:
    """MACs and FLOPs (= 2·MACs) per image for `policy` (None: hard sharing).

    'shared': the prefix tree (stem once, each distinct prefix once, then the heads);
    'per_task_sum': K independent passes. Hard sharing counts one backbone pass in both.
    A soft-sharing network (no policy) is counted by `soft_sharing_flops`.
    """
    if isinstance(model, SoftSharingNet):
        _no_policy(model, policy)
        return soft_sharing_flops(model, height, width)
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
    and `backbone_units` (1 for one shared backbone). A soft-sharing network (no policy) is
    counted by `soft_sharing_params`.
    """
    if isinstance(model, SoftSharingNet):
        _no_policy(model, policy)
        return soft_sharing_params(model)
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


def _no_policy(model, policy) -> None:
    if policy is not None:
        raise ValueError(f"{type(model).__name__} has no select-or-skip policy; pass policy=None")


def _unit_macs(unit: nn.Module, num_tasks: int, channels: int, h: int, w: int) -> int:
    """MACs of one sharing unit on K feature maps of channels × h × w: a cross-stitch or Sluice
    unit is a linear map over its K (or K·M subspace) inputs; NDDR counts its 1×1 convs."""
    if isinstance(unit, CrossStitchUnit):
        return num_tasks * num_tasks * channels * h * w
    if isinstance(unit, SluiceUnit):
        n = num_tasks * SLUICE_SUBSPACES
        return n * n * (channels // SLUICE_SUBSPACES) * h * w
    return _same_size_macs(unit, h, w)


def soft_sharing_flops(model: SoftSharingNet, height: int, width: int) -> dict[str, float]:
    """MACs and FLOPs (= 2·MACs) per image of a soft-sharing network, in the keys of `flops`.

    Column networks (Cross-Stitch, Sluice, NDDR-CNN): K backbone passes + the sharing units (and
    Sluice's β-mixtures), in both 'shared' and 'per_task_sum'. MTAN: 'shared' is one backbone
    pass + every task's attention and shared bridge blocks; 'per_task_sum' repeats the backbone
    for every task.
    """
    trunk = model.trunks[0]
    stem, residual, projection, sizes = _trunk_costs(trunk.stem, trunk.blocks, height, width)
    one = stem + sum(residual) + sum(projection)
    heads = sum(_same_size_macs(model.heads[t], *sizes[-1]) for t in model.tasks)
    k = len(model.tasks)
    outs = [(trunk.block_info[st[-1]].out_channels, *sizes[st[-1] + 1]) for st in trunk.stages]
    if isinstance(model, MTANNet):
        extra = sum(
            _same_size_macs(att, h, w)
            for (_, h, w), modules in zip(outs, model.attention)
            for att in modules
        )
        extra += k * sum(sum(_block_macs(b, h, w)[:2]) for (_, h, w), b in zip(outs, model.bridges))
        shared, per_task = one + extra, k * one + extra
    else:
        units = sum(_unit_macs(u, k, c, h, w) for (c, h, w), u in zip(outs, model.units))
        if isinstance(model, SluiceNet):
            c, h, w = outs[-1]
            units += k * len(trunk.stages[-1]) * c * h * w
        shared = per_task = k * one + units
    return {
        "macs_shared": shared + heads,
        "macs_per_task_sum": per_task + heads,
        "flops_shared": 2 * (shared + heads),
        "flops_per_task_sum": 2 * (per_task + heads),
        "macs_heads": heads,
    }


def soft_sharing_params(model: SoftSharingNet) -> dict:
    """Trainable parameters of a soft-sharing network, in the keys of `param_counts`.

    'backbone' holds the trunks and every sharing unit. A column network's task depends on every
    column (per task: backbone + its head); an MTAN task on the shared trunk and bridges, its own
    attention modules and its head. 'backbone_units' counts the trunks (K, or 1 for MTAN).
    """
    heads = {t: _numel(model.heads[t].parameters()) for t in model.tasks}
    total = _numel(model.parameters())
    backbone = total - sum(heads.values())
    if isinstance(model, MTANNet):
        own = [
            sum(_numel(stage[k].parameters()) for stage in model.attention)
            for k in range(len(model.tasks))
        ]
        common = backbone - sum(own)
        per_task = {t: common + own[k] + heads[t] for k, t in enumerate(model.tasks)}
    else:
        per_task = {t: backbone + heads[t] for t in model.tasks}
    return {
        "total": total,
        "backbone": backbone,
        "heads": sum(heads.values()),
        "per_task": per_task,
        "union": total,
        "backbone_units": len(model.trunks),
    }
