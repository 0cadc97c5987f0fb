"""Fit/reset masks: KELS (kernel-level, graph-derived) and WELS (weight-level)."""

from __future__ import annotations

import math

import torch
from torch import nn

from efficientdl.knowledge_evolution.graph import SPLIT_TYPES, SplitLayer, analyse

Masks = dict[str, torch.Tensor]
_SCHEMES = ("kels", "wels")
_SAMPLING = ("exact", "bernoulli")


def keep(channels: int, rate: float, multiple: int = 1) -> int:
    """Kept count ceil(C·sr − 1e-9), rounded up to a multiple of `multiple`, capped at C.

    The 1e-9 only removes float artefacts (0.07·100 = 7.000000000000001 keeps 7); any rate > 0
    keeps at least one.
    """
    _check_rate(rate)
    kept = max(1, math.ceil(channels * rate - 1e-9))
    return min(channels, -(-kept // multiple) * multiple)


def _check_rate(rate: float) -> None:
    if isinstance(rate, bool) or not isinstance(rate, int | float) or not 0 < rate <= 1:
        raise ValueError(f"split rate must be a number in (0, 1], got {rate!r}")


def split_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """The conv/linear modules (the layers KE splits), in module order."""
    return [(n, m) for n, m in model.named_modules() if isinstance(m, SPLIT_TYPES)]


def layer_mask(layer: SplitLayer) -> dict[str, torch.Tensor]:
    """Weight (and split conv bias) masks of one KELS layer: rows × cols over the kernel (cols
    index weight dim 1: a grouped conv's within-group input offsets)."""
    weight = layer.module.weight
    rows = torch.zeros(weight.shape[0], dtype=torch.bool)
    rows[list(layer.rows)] = True
    cols = torch.zeros(weight.shape[1], dtype=torch.bool)
    cols[list(layer.weight_cols)] = True
    kernel = (1,) * (weight.dim() - 2)
    mask = rows.view(-1, 1, *kernel) & cols.view(1, -1, *kernel)
    out = {"weight": mask.expand(weight.shape).clone()}
    if isinstance(layer.module, nn.Conv1d | nn.Conv2d | nn.Conv3d) and not layer.output:
        if layer.module.bias is not None:
            out["bias"] = rows.clone()
    return out


def _ordered(model: nn.Module, masks: Masks) -> Masks:
    return {n: masks[n] for n, _ in model.named_parameters() if n in masks}


def _kels(model, rate, channel_multiple, example_input) -> Masks:
    graph = analyse(model, example_input=example_input)
    structure = graph.solve_prefix(lambda n: keep(n, rate, channel_multiple))
    masks: Masks = {}
    for name, layer in structure.layers.items():
        for pname, mask in layer_mask(layer).items():
            masks[f"{name}.{pname}"] = mask
    return _ordered(model, masks)


def _wels(model, rate, generator, sampling) -> Masks:
    masks: Masks = {}
    for name, module in split_layers(model):
        tensors = [("weight", module.weight)]
        if not isinstance(module, nn.Linear) and module.bias is not None:
            tensors.append(("bias", module.bias))
        for pname, p in tensors:
            if sampling == "exact":
                flat = torch.zeros(p.numel(), dtype=torch.bool)
                flat[torch.randperm(p.numel(), generator=generator)[: keep(p.numel(), rate)]] = 1
                mask = flat.view(p.shape)
            else:
                mask = torch.rand(p.shape, generator=generator) >= 1 - rate
            masks[f"{name}.{pname}"] = mask
    return _ordered(model, masks)


def split(
    model: nn.Module,
    *,
    rate: float,
    scheme: str = "kels",
    generator: torch.Generator | None = None,
    wels_sampling: str = "exact",
    channel_multiple: int = 1,
    example_input: torch.Tensor | None = None,
) -> Masks:
    """Masks (True = fit hypothesis H△) for every conv/linear weight of `model`.

    KELS: kernel-level rows × cols found from the traced graph: each layer keeps the first
    keep(n) of its output channels, counting channels that must be kept together as one
    (grouped convs: the same offsets in every group; GroupNorm: whole groups; LayerNorm over
    channels: all); the stem keeps all inputs, output layers all rows, both operands of an add
    or gate the same channels (the narrower producer decides, so a conv added to a
    concatenation follows its segments), concatenations keep each segment's own channels;
    split conv biases follow the rows. WELS: each tensor keeps exactly
    keep(n) random entries ('exact', torch.randperm from `generator`) or Bernoulli(rate)
    entries ('bernoulli', the official draw). Returns a dict in `named_parameters` order of CPU
    bool tensors; the model is never modified.
    """
    _check_rate(rate)
    if scheme not in _SCHEMES:
        raise ValueError(f"unknown split scheme {scheme!r}; expected one of {_SCHEMES}")
    if wels_sampling not in _SAMPLING:
        raise ValueError(f"unknown wels_sampling {wels_sampling!r}; expected one of {_SAMPLING}")
    if not isinstance(channel_multiple, int) or channel_multiple < 1:
        raise ValueError(f"channel_multiple must be a positive int, got {channel_multiple!r}")
    if not split_layers(model):
        raise ValueError(f"{type(model).__name__} has no Conv1d/2d/3d or Linear layer to split")
    if scheme == "kels":
        return _kels(model, rate, channel_multiple, example_input)
    return _wels(model, rate, generator, wels_sampling)


def forget_from(model: nn.Module, start: str) -> Masks:
    """Later-layer-forgetting masks (Zhou et al. 2022): all-False for every conv/linear weight
    (and conv bias) registered at or after module `start` (e.g. 'layer4', which includes fc),
    all-True before it."""
    names = [n for n, _ in model.named_modules()]
    if start not in names:
        raise ValueError(f"module {start!r} not found in {type(model).__name__}")
    first = names.index(start)
    order = {n: i for i, n in enumerate(names)}
    masks: Masks = {}
    for name, module in split_layers(model):
        reset = order[name] >= first
        for pname, p in module.named_parameters(recurse=False):
            if pname == "weight" or not isinstance(module, nn.Linear):
                masks[f"{name}.{pname}"] = torch.full(p.shape, not reset, dtype=torch.bool)
    return _ordered(model, masks)


def check_masks(model: nn.Module, masks: Masks) -> dict[str, nn.Parameter]:
    """The masked parameters by name, after checking keys, shapes and dtypes (errors name the
    key)."""
    params = dict(model.named_parameters())
    for key, mask in masks.items():
        if key not in params:
            raise ValueError(f"mask key {key!r} is not a parameter of {type(model).__name__}")
        if not isinstance(mask, torch.Tensor) or mask.dtype != torch.bool:
            raise ValueError(f"mask for {key!r} must be a torch.bool tensor, got {mask!r:.60}")
        if tuple(mask.shape) != tuple(params[key].shape):
            raise ValueError(
                f"mask for {key!r} has shape {tuple(mask.shape)}, parameter has "
                f"{tuple(params[key].shape)}"
            )
    return {k: params[k] for k in params if k in masks}


def kernel_factors(mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor] | None:
    """(rows, cols) bool vectors if `mask` (dim ≥ 2) equals rows × cols broadcast over the
    kernel with both non-empty, else None."""
    if mask.dim() < 2:
        return None
    rows = mask.flatten(1).any(1)
    cols = mask.transpose(0, 1).flatten(1).any(1)
    if not rows.any() or not cols.any():
        return None
    view = (1,) * (mask.dim() - 2)
    product = rows.view(-1, 1, *view) & cols.view(1, -1, *view)
    return (rows, cols) if torch.equal(product.expand(mask.shape), mask) else None


def is_kernel_level(masks: Masks) -> bool:
    """True when every weight mask is a non-empty rows × cols product (KELS masks)."""
    weights = {k: v for k, v in masks.items() if v.dim() >= 2}
    return bool(weights) and all(kernel_factors(m) is not None for m in weights.values())
