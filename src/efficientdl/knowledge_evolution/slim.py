"""Cutting the fit hypothesis of KELS masks out as a physically thinner network."""

from __future__ import annotations

import copy

import torch
from torch import nn

from efficientdl.knowledge_evolution.graph import NORM_TYPES, Structure, analyse
from efficientdl.knowledge_evolution.masks import Masks, check_masks, kernel_factors, split_layers

NOT_KELS = "mask for {!r} is not kernel-level (KELS); WELS has no slim network"


def _indices(flags: torch.Tensor) -> tuple[int, ...]:
    return tuple(flags.nonzero().flatten().tolist())


def kels_structure(
    model: nn.Module, masks: Masks, *, example_input: torch.Tensor | None = None
) -> Structure:
    """The graph structure with rows read from KELS `masks`, checked edge by edge: each mask is
    rows × cols, each layer's cols equal the kept channels its input carries, output layers keep
    all rows, and split conv biases follow the rows. Errors name the layer."""
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

    def rows_for(name, module, depthwise_channels, output):
        rows = _indices(factors[name][0])
        if output and len(rows) != module.weight.shape[0]:
            raise ValueError(f"mask for '{name}.weight' drops rows of an output layer")
        return rows

    structure = analyse(model, rows_for, example_input=example_input)
    for name, layer in structure.layers.items():
        rows, cols = factors[name]
        expected = layer.rows if layer.depthwise else _indices(cols)
        if layer.cols != expected:
            raise ValueError(
                f"mask for '{name}.weight' keeps input channels {list(expected)[:8]}… but its "
                f"input carries kept channels {list(layer.cols)[:8]}… (producer/consumer mismatch)"
            )
        bias = masks.get(f"{name}.bias")
        if bias is not None and not torch.equal(bias, rows):
            raise ValueError(f"mask for '{name}.bias' differs from the rows of '{name}.weight'")
    return structure


_CONV_HYPERS = ("kernel_size", "stride", "padding", "dilation", "padding_mode")
_NORM_HYPERS = ("eps", "momentum", "affine", "track_running_stats")


def _like(ref: nn.Module, *sizes: int, copied: tuple[str, ...], **kwargs) -> nn.Module:
    """A new module of `ref`'s class with the given channel sizes, `ref`'s values of the
    hyper-parameters named in `copied`, and `kwargs`."""
    return type(ref)(*sizes, **{name: getattr(ref, name) for name in copied}, **kwargs)


def _narrow_layer(layer, ref: nn.Module) -> nn.Module:
    rows = torch.tensor(layer.rows, dtype=torch.long, device=ref.weight.device)
    cols = torch.tensor(layer.cols, dtype=torch.long, device=ref.weight.device)
    w = ref.weight.detach()
    if isinstance(ref, nn.Linear):
        new = type(ref)(len(cols), len(rows), bias=ref.bias is not None,
                        device=w.device, dtype=w.dtype)  # fmt: skip
        weight = w[rows][:, cols]
    else:
        groups = len(rows) if layer.depthwise else 1
        new = _like(
            ref,
            len(rows) if layer.depthwise else len(cols),
            len(rows),
            copied=_CONV_HYPERS,
            groups=groups,
            bias=ref.bias is not None,
            device=w.device,
            dtype=w.dtype,
        )
        weight = w[rows] if layer.depthwise else w[rows][:, cols]
    with torch.no_grad():
        new.weight.copy_(weight)
        if ref.bias is not None:
            new.bias.copy_(ref.bias.detach()[rows])
    return new.train(ref.training)


def _narrow_norm(kept: tuple[int, ...], ref: nn.Module) -> nn.Module:
    device = next(iter(ref.buffers()), next(iter(ref.parameters()), torch.empty(0))).device
    dtype = ref.weight.dtype if ref.weight is not None else torch.float32
    idx = torch.tensor(kept, dtype=torch.long, device=device)
    new = _like(ref, len(kept), copied=_NORM_HYPERS, device=device, dtype=dtype)
    with torch.no_grad():
        for pname in ("weight", "bias"):
            if getattr(ref, pname) is not None:
                getattr(new, pname).copy_(getattr(ref, pname)[idx])
        for bname in ("running_mean", "running_var"):
            if getattr(ref, bname, None) is not None:
                getattr(new, bname).copy_(getattr(ref, bname)[idx])
        if getattr(ref, "num_batches_tracked", None) is not None:
            new.num_batches_tracked.copy_(ref.num_batches_tracked)
    return new.train(ref.training)


def _replace(root: nn.Module, name: str, module: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    setattr(root.get_submodule(parent_name) if parent_name else root, child, module)


def extract_slim(
    model: nn.Module, masks: Masks, *, example_input: torch.Tensor | None = None
) -> nn.Module:
    """The fit hypothesis of KELS `masks` as a thinner deep copy of `model`.

    Each conv/linear becomes a module of the same class and hyper-parameters with in = |cols|,
    out = |rows| (depthwise: groups = |rows|); each BatchNorm/InstanceNorm keeps its gathered
    channels (γ, β, running stats; eps, momentum copied). Weights are contiguous clones on the
    original device/dtype; `model` is untouched and the train/eval mode is kept. In eval mode
    slim(x) equals the dense net with W ← W·M for every mask, up to float rounding. The model's
    own forward is reused, so it must not hard-code channel counts.
    """
    structure = kels_structure(model, masks, example_input=example_input)
    slim = copy.deepcopy(model)
    for name, layer in structure.layers.items():
        _replace(slim, name, _narrow_layer(layer, model.get_submodule(name)))
    for name, kept in structure.norms.items():
        ref = model.get_submodule(name)
        if isinstance(ref, NORM_TYPES):
            _replace(slim, name, _narrow_norm(kept, ref))
    return slim
