"""Cutting the fit hypothesis of KELS masks out as a physically thinner network."""

from __future__ import annotations

import copy

import torch
from torch import nn

from efficientdl.knowledge_evolution.channels import Structure, difference
from efficientdl.knowledge_evolution.graph import analyse, getattr_path
from efficientdl.knowledge_evolution.masks import Masks, check_masks, kernel_factors, split_layers

NOT_KELS = "mask for {!r} is not kernel-level (KELS); WELS has no slim network"
_CHANNEL_NORMS = (nn.modules.batchnorm._NormBase,)


def _flags(indices: tuple[int, ...], size: int) -> torch.Tensor:
    flags = torch.zeros(size, dtype=torch.bool)
    flags[list(indices)] = True
    return flags


def kels_structure(
    model: nn.Module, masks: Masks, *, example_input: torch.Tensor | None = None
) -> Structure:
    """The graph structure with rows read from KELS `masks`, checked edge by edge: each mask is
    rows × cols, each layer's rows equal the kept channels of every op tied to them, its cols
    the kept channels its input carries, output layers keep all rows, and split conv biases
    follow the rows. Errors name the layer and where the channel sets differ."""
    check_masks(model, masks)
    factors = {}
    for name, _ in split_layers(model):
        key = f"{name}.weight"
        if key not in masks:
            raise ValueError(f"no mask for {key!r}: KELS masks cover every conv/linear weight")
        found = kernel_factors(masks[key])
        if found is None:
            raise ValueError(NOT_KELS.format(key))
        factors[name] = found

    structure = analyse(model, example_input=example_input).solve_rows(
        lambda space: factors[space.name][0]
    )
    for name, layer in structure.layers.items():
        rows, cols = factors[name]
        if layer.output and not rows.all():
            raise ValueError(f"mask for '{name}.weight' drops rows of an output layer")
        derived = _flags(layer.rows, rows.numel())
        if not torch.equal(derived, rows):
            raise ValueError(
                f"mask for '{name}.weight' keeps other output channels than the ops it feeds "
                f"tie it to: {difference(rows, derived)} (mask vs graph)"
            )
        expected = _flags(layer.weight_cols, cols.numel())
        if not torch.equal(expected, cols):
            raise ValueError(
                f"mask for '{name}.weight' keeps input channels that differ from the kept "
                f"channels its input carries: {difference(cols, expected)} (mask vs input)"
            )
        bias = masks.get(f"{name}.bias")
        if bias is not None and not torch.equal(bias, rows):
            raise ValueError(f"mask for '{name}.bias' differs from the rows of '{name}.weight'")
    return structure


def _index(kept: tuple[int, ...], like: torch.Tensor) -> torch.Tensor:
    return torch.tensor(kept, dtype=torch.long, device=like.device)


def _set_tensor(owner: nn.Module, attr: str, value: torch.Tensor, ref: torch.Tensor) -> None:
    """Replace a parameter (keeping requires_grad) or buffer of `owner`."""
    if attr in owner._parameters:
        setattr(owner, attr, nn.Parameter(value, requires_grad=ref.requires_grad))
    else:
        setattr(owner, attr, value)


@torch.no_grad()
def _narrow_layer(mod: nn.Module, layer) -> None:
    """Cut `mod` (a copy) down to the layer's kept rows and weight cols, in place."""
    w = mod.weight
    weight = w.index_select(0, _index(layer.rows, w)).index_select(1, _index(layer.weight_cols, w))
    _set_tensor(mod, "weight", weight.contiguous(), w)
    if mod.bias is not None:
        _set_tensor(mod, "bias", mod.bias.index_select(0, _index(layer.rows, w)), mod.bias)
    if isinstance(mod, nn.Linear):
        mod.in_features, mod.out_features = len(layer.cols), len(layer.rows)
    else:
        mod.in_channels, mod.out_channels = len(layer.cols), len(layer.rows)
        mod.groups = layer.groups


def _narrow_norm(mod: nn.Module, kept: tuple[int, ...]) -> None:
    """Set the channel count of a normalisation module (its tensors are gathered apart)."""
    if isinstance(mod, _CHANNEL_NORMS):
        mod.num_features = len(kept)
    elif isinstance(mod, nn.GroupNorm):
        mod.num_groups = mod.num_groups * len(kept) // mod.num_channels
        mod.num_channels = len(kept)


@torch.no_grad()
def _gather(slim: nn.Module, name: str, dim: int, kept: tuple[int, ...]) -> None:
    owner_name, _, attr = name.rpartition(".")
    owner = slim.get_submodule(owner_name) if owner_name else slim
    ref = getattr_path(slim, name)
    _set_tensor(owner, attr, ref.index_select(dim, _index(kept, ref)).contiguous(), ref)


def extract_slim(
    model: nn.Module, masks: Masks, *, example_input: torch.Tensor | None = None
) -> nn.Module:
    """The fit hypothesis of KELS `masks` as a thinner deep copy of `model`.

    Each conv/linear keeps its class and hyper-parameters with in = |cols|, out = |rows| and
    the kept groups of a grouped conv (depthwise: groups = |rows|); each normalisation layer
    and per-channel tensor (layer scale) keeps its gathered channels (γ, β, running stats).
    Weights are contiguous copies on the original device/dtype; `model` is untouched and the
    train/eval mode is kept. In eval mode slim(x) equals the dense net with W ← W·M for every
    mask, up to float rounding. The model's own forward is reused, so it must not hard-code
    channel counts (constant channel counts are kept whole by `split`).
    """
    structure = kels_structure(model, masks, example_input=example_input)
    slim = copy.deepcopy(model)
    for name, layer in structure.layers.items():
        _narrow_layer(slim.get_submodule(name), layer)
    for name, (dim, kept) in structure.params.items():
        _gather(slim, name, dim, kept)
    for name, kept in structure.norms.items():
        _narrow_norm(slim.get_submodule(name), kept)
    return slim
