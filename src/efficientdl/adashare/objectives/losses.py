"""Task losses at the prediction resolution and the policy regularisers."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from efficientdl.adashare.model.policy import check_logits
from efficientdl.data.multitask import nearest_index

VARIANTS = ("official", "paper")
BLOCK_WEIGHTS = ("depth", "uniform")


def downsample_target(t: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Resize a target or mask [B, H, W] or [B, C, H, W] of any dtype to `size` with
    `F.interpolate(mode='nearest')` index mapping (floor, not 'nearest-exact')."""
    h, w = size
    H, W = t.shape[-2:]
    if (H, W) == (h, w):
        return t
    rows = torch.from_numpy(nearest_index(h, H)).to(t.device)
    cols = torch.from_numpy(nearest_index(w, W)).to(t.device)
    return t.index_select(-2, rows).index_select(-1, cols)


def _masked_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of `values` over `mask` (broadcast over channels), 0 for an empty mask."""
    mask = mask.to(values.dtype)
    total = (values * mask).sum()
    count = mask.expand_as(values).sum() if mask.dim() == values.dim() else mask.sum()
    return total / count.clamp(min=1)


def seg_loss(
    pred: torch.Tensor,
    target: torch.Tensor,
    *,
    ignore_index: int = 255,
    class_weight: torch.Tensor | None = None,
) -> torch.Tensor:
    """Cross-entropy of logits [B, C, h, w] (or [B, C]) against labels, ignoring `ignore_index`.

    Targets are resized to the prediction with nearest; the mean runs over valid pixels of the batch
    (weighted mean with `class_weight`); no valid pixel → 0.
    """
    if pred.dim() == 4:
        target = downsample_target(target, pred.shape[-2:])
    valid = target != ignore_index
    if not bool(valid.any()):
        return pred.sum() * 0.0
    weight = None if class_weight is None else class_weight.to(pred.device, pred.dtype)
    return F.cross_entropy(pred, target.long(), weight=weight, ignore_index=ignore_index)


def _mask_for(pred: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    if mask is None:
        return torch.ones(pred.shape[0], *pred.shape[2:], dtype=torch.bool, device=pred.device)
    return downsample_target(mask, pred.shape[-2:]).bool()


def normal_loss(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor | None = None):
    """1 − mean cos(normalize(pred), normalize(target)) over valid pixels (0 if none)."""
    target = downsample_target(target, pred.shape[-2:])
    valid = _mask_for(pred, mask)
    if not bool(valid.any()):
        return pred.sum() * 0.0
    cos = (F.normalize(pred, dim=1) * F.normalize(target, dim=1)).sum(1)
    return 1.0 - _masked_mean(cos, valid)


def l1_loss(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor | None = None):
    """Mean |pred − target| over valid pixels (and channels); keypoint and edge losses."""
    target = downsample_target(target, pred.shape[-2:])
    m = _mask_for(pred, mask).unsqueeze(1)
    return _masked_mean((pred - target).abs(), m)


def depth_loss(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor | None = None):
    """L1 over valid pixels; without a mask, valid = target > 0 (NYUv2, CityScapes)."""
    if mask is None:
        mask = target[:, 0] > 0
    return l1_loss(pred, target, mask)


def _check_variant(variant: str) -> None:
    if variant not in VARIANTS:
        raise ValueError(f"unknown regulariser variant {variant!r}; expected one of {VARIANTS}")


def sparsity_loss(
    logits: torch.Tensor,
    n_unlocked: int | None = None,
    *,
    variant: str = "official",
    depth_weighted: bool = False,
) -> torch.Tensor:
    """L_sp over the n unlocked (last) blocks.

    official: Σ_k (1/n) Σ_l −log softmax(a_kl)[skip]; `depth_weighted`: Σ_k (2/n) Σ_l ((l+1)/L)·(…)
    (what the official code uses when the sharing loss is off). paper: Σ_k Σ_l log α_kl (Eq. 4).
    """
    check_logits(logits)
    _check_variant(variant)
    L = logits.shape[1]
    n = L if n_unlocked is None else n_unlocked
    if not 1 <= n <= L:
        raise ValueError(f"n_unlocked must be in 1..{L}, got {n_unlocked!r}")
    a = logits[:, L - n :].float()
    if variant == "paper":
        if depth_weighted:
            raise ValueError("depth_weighted applies to variant='official' only")
        return torch.log_softmax(a, -1)[..., 0].sum()
    nll_skip = -torch.log_softmax(a, -1)[..., 1]
    if depth_weighted:
        weights = torch.arange(L - n + 1, L + 1, dtype=a.dtype, device=a.device) / L
        return (2.0 / n) * (nll_skip * weights).sum()
    return nll_skip.sum() / n


def sharing_loss(
    logits: torch.Tensor, *, variant: str = "official", block_weights: str = "depth"
) -> torch.Tensor:
    """L_sh over all L blocks and task pairs i < j (Eq. 5).

    official: Σ ((l+1)/L)·|a_i,l,0 − a_j,l,0| on raw select-logits;
    paper: Σ ((L−l)/L)·|α_i,l − α_j,l| on probabilities.
    `block_weights='uniform'` uses weight 1.
    """
    check_logits(logits)
    _check_variant(variant)
    if block_weights not in BLOCK_WEIGHTS:
        raise ValueError(
            f"unknown block_weights {block_weights!r}; expected one of {BLOCK_WEIGHTS}"
        )
    K, L = logits.shape[:2]
    if variant == "official":
        values = logits[..., 0].float()
    else:
        values = torch.softmax(logits.float(), -1)[..., 0]
    pos = torch.arange(L, dtype=values.dtype, device=values.device)
    if block_weights == "uniform":
        weights = torch.ones_like(pos)
    else:
        weights = (pos + 1) / L if variant == "official" else (L - pos) / L
    total = values.new_zeros(())
    for i in range(K):
        for j in range(i + 1, K):
            total = total + (weights * (values[i] - values[j]).abs()).sum()
    return total
