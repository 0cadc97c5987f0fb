"""Kernel loss, count loss and readout for output traces `[T, N, K]`."""

from __future__ import annotations

import functools

import torch

from efficientdl.snn.functional import psp

PATTERNS = {"official": None, "paper": (0, 1, 0, 1, 1)}


def _pattern(name_or_bits, T: int) -> list[float]:
    if isinstance(name_or_bits, str):
        if name_or_bits == "official":
            base = (0, 1, 1, 1, 1) if T < 10 else (0, 1, 0, 1, 0, 1, 0, 1, 0, 1)
        elif name_or_bits == "paper":
            base = PATTERNS["paper"]
        else:
            raise ValueError(
                f"pattern must be 'official', 'paper' or a 0/1 sequence, got {name_or_bits!r}"
            )
    else:
        base = tuple(name_or_bits)
        if not base or any(b not in (0, 1) for b in base):
            raise ValueError(f"an explicit pattern must be a non-empty 0/1 sequence, got {base!r}")
    return [float(base[t % len(base)]) for t in range(T)]


@functools.lru_cache(maxsize=64)
def _filtered_pattern(pattern, T: int, tau_s: float, passes: int, device, dtype) -> torch.Tensor:
    y = torch.tensor(_pattern(pattern, T), dtype=torch.float64)
    for _ in range(passes):
        y = psp(y, tau_s)
    return y.to(device=device, dtype=dtype)


def kernel_target(
    labels: torch.Tensor,
    num_classes: int,
    T: int,
    *,
    tau_s: float,
    pattern="official",
    target_filter_passes: int = 2,
    dtype=torch.float32,
) -> torch.Tensor:
    """Desired trace [T, N, K]: the filtered spike pattern for the true class, 0 elsewhere."""
    if target_filter_passes not in (1, 2):
        raise ValueError(f"target_filter_passes must be 1 or 2, got {target_filter_passes}")
    key = pattern if isinstance(pattern, str) else tuple(int(b) for b in pattern)
    desired = _filtered_pattern(key, T, float(tau_s), target_filter_passes, labels.device, dtype)
    one_hot = torch.nn.functional.one_hot(labels, num_classes).to(dtype)
    return desired[:, None, None] * one_hot


def _check_output(output: torch.Tensor, labels: torch.Tensor) -> None:
    if output.dim() != 3:
        raise ValueError(f"output must be [T, N, K], got shape {tuple(output.shape)}")
    if labels.shape != (output.shape[1],):
        raise ValueError(f"labels must be [N={output.shape[1]}], got shape {tuple(labels.shape)}")


def _reduce(loss_sum: torch.Tensor, n: int, reduction: str) -> torch.Tensor:
    if reduction == "sum":
        return loss_sum
    if reduction == "mean":
        return loss_sum / n
    raise ValueError(f"reduction must be 'sum' or 'mean', got {reduction!r}")


def kernel_loss(
    output: torch.Tensor,
    labels: torch.Tensor,
    *,
    tau_s: float,
    pattern="official",
    target_filter_passes: int = 2,
    reduction: str = "sum",
) -> torch.Tensor:
    """L = ½ Σ_{t,n,k} (out − target)², sum-reduced like the official code."""
    _check_output(output, labels)
    target = kernel_target(
        labels,
        output.shape[2],
        output.shape[0],
        tau_s=tau_s,
        pattern=pattern,
        target_filter_passes=target_filter_passes,
        dtype=output.dtype,
    )
    return _reduce(0.5 * (output - target).pow(2).sum(), output.shape[1], reduction)


def count_loss(
    output: torch.Tensor,
    labels: torch.Tensor,
    *,
    desired: float,
    undesired: float,
    reduction: str = "sum",
) -> torch.Tensor:
    """One-sided count loss: d = (Σ_t out − y)/T clipped per class, L = ½·T·Σ d²."""
    _check_output(output, labels)
    T, _, K = output.shape
    count = output.sum(0)
    is_true = torch.nn.functional.one_hot(labels, K).bool()
    y = torch.where(is_true, torch.full_like(count, desired), torch.full_like(count, undesired))
    d = (count - y) / T
    d = torch.where(is_true, d.clamp(max=0), d.clamp(min=0))
    return _reduce(0.5 * T * d.pow(2).sum(), output.shape[1], reduction)


def predict(output: torch.Tensor) -> torch.Tensor:
    """Readout: argmax_k Σ_t out[t, n, k] (first index on ties) → LongTensor [N]."""
    if output.dim() != 3:
        raise ValueError(f"output must be [T, N, K], got shape {tuple(output.shape)}")
    return output.sum(0).argmax(1)
