"""Re-drawing the reset hypothesis and the generation-1 initialisation."""

from __future__ import annotations

import copy
import math

import torch
from torch import nn

from efficientdl.knowledge_evolution.masks import Masks, check_masks, split_layers
from efficientdl.knowledge_evolution.slim import kels_structure

INITS = ("default", "kaiming_normal", "zero")
_BN = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)


def fan_in(weight: torch.Tensor) -> int:
    """C_in/groups·k_h·k_w of a conv weight [C_out, C_in/groups, k…], in_features of a linear."""
    return math.prod(weight.shape[1:])


def _weight_of(model: nn.Module, key: str) -> torch.Tensor:
    module_name, _, pname = key.rpartition(".")
    module = model.get_submodule(module_name)
    return module.weight if pname == "bias" else getattr(module, pname)


def draw(
    shape: torch.Size, fan: int, init: str, *, bias: bool, generator: torch.Generator | None
) -> torch.Tensor:
    """Fresh float32 CPU values: 'default' U(±1/√fan_in) (PyTorch's kaiming_uniform(a=√5) and
    bias init), 'kaiming_normal' N(0, 2/fan_in) for weights and 0 for biases, 'zero' 0."""
    out = torch.zeros(shape, dtype=torch.float32)
    if init == "default":
        bound = 1.0 / math.sqrt(fan) if fan > 0 else 0.0
        out.uniform_(-bound, bound, generator=generator)
    elif init == "kaiming_normal" and not bias:
        out.normal_(0.0, math.sqrt(2.0 / fan), generator=generator)
    return out


@torch.no_grad()
def reinitialize(
    model: nn.Module,
    masks: Masks,
    *,
    init: str = "default",
    generator: torch.Generator | None = None,
    reset_bn: bool = False,
) -> None:
    """Re-draw the reset hypothesis in place: p ← where(M, p, R) for each masked p.

    R has p's full shape, is drawn as float32 on CPU from `generator` (global CPU RNG if None)
    in parameter order, so values are independent of the mask and equal on CPU and GPU. Fit
    entries stay bit-identical; parameter objects, BN tensors, buffers, grads and unmasked
    parameters are untouched. `reset_bn=True` (KELS masks only) sets γ=1, β=0, mean 0, var 1 on
    the BN channels the fit hypothesis does not keep.
    """
    if init not in INITS:
        raise ValueError(f"unknown init {init!r}; expected one of {INITS}")
    params = check_masks(model, masks)
    bn_resets = _bn_reset_channels(model, masks) if reset_bn else {}
    for key, p in params.items():
        fan = fan_in(_weight_of(model, key))
        fresh = draw(p.shape, fan, init, bias=key.endswith("bias"), generator=generator)
        mask = masks[key].to(p.device)
        p.copy_(torch.where(mask, p, fresh.to(device=p.device, dtype=p.dtype)))
    for name, reset in bn_resets.items():
        bn = model.get_submodule(name)
        idx = reset.to(bn.running_mean.device if bn.running_mean is not None else "cpu")
        for tensor, value in ((bn.weight, 1.0), (bn.bias, 0.0), (bn.running_mean, 0.0),
                              (bn.running_var, 1.0)):  # fmt: skip
            if tensor is not None:
                tensor[idx.to(tensor.device)] = value


def _bn_reset_channels(model: nn.Module, masks: Masks) -> dict[str, torch.Tensor]:
    structure = kels_structure(model, masks)
    out = {}
    for name, kept in structure.norms.items():
        bn = model.get_submodule(name)
        if isinstance(bn, _BN):
            reset = torch.ones(bn.num_features, dtype=torch.bool)
            reset[list(kept)] = False
            out[name] = reset.nonzero().flatten()
    return out


@torch.no_grad()
def init_weights(
    model: nn.Module, *, scheme: str = "kaiming_normal", generator: torch.Generator | None = None
) -> None:
    """The official generation-1 init: kaiming_normal(fan_in, relu), i.e.
    N(0, 2/fan_in), on every conv and linear weight; BN γ=1, β=0; biases keep PyTorch's default.
    `scheme='kaiming_uniform'` draws U(±√(6/fan_in)) instead."""
    if scheme not in ("kaiming_normal", "kaiming_uniform"):
        raise ValueError(f"unknown init scheme {scheme!r}; expected kaiming_normal/kaiming_uniform")
    for _, module in split_layers(model):
        w = module.weight
        std = math.sqrt(2.0 / fan_in(w))
        fresh = torch.empty(w.shape, dtype=torch.float32)
        if scheme == "kaiming_normal":
            fresh.normal_(0.0, std, generator=generator)
        else:
            fresh.uniform_(-std * math.sqrt(3.0), std * math.sqrt(3.0), generator=generator)
        w.copy_(fresh.to(device=w.device, dtype=w.dtype))
    for module in model.modules():
        if isinstance(module, _BN) and module.affine:
            module.weight.fill_(1.0)
            module.bias.zero_()


@torch.no_grad()
def masked_copy(model: nn.Module, masks: Masks, *, part: str = "fit") -> nn.Module:
    """A deep copy with W·M ('fit') or W·¬M ('reset') for every masked parameter, all else kept
    (the fit-only network of WELS, the reset-only network of both schemes)."""
    if part not in ("fit", "reset"):
        raise ValueError(f"part must be 'fit' or 'reset', got {part!r}")
    check_masks(model, masks)
    clone = copy.deepcopy(model)
    params = dict(clone.named_parameters())
    for key, mask in masks.items():
        keep = mask if part == "fit" else ~mask
        params[key].mul_(keep.to(device=params[key].device, dtype=params[key].dtype))
    return clone
