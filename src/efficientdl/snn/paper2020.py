"""The TSSL-BP backward of the official code as of October 2020, which produced the published
results tables (`NeuronOptions(algorithm="paper2020")`).

The forward is the shared LIF neuron (`functional.lif_states`). For one layer call, with spikes
s, pre-reset membrane u, membrane change du[t] = u[t] − v[t−1] and δ[t] = ∂L/∂a[t]:

1. **Intra-neuron (reset) term.** A spike at j resets the membrane by −u[j]; until the neuron's
   next spike k that reset decays as r[t] = λm·r[t−1] (computed as r + (−(1/τm)·r)), and at k its
   effect on the membrane change is d[k] = −r[k−1]/τm (zero at a neuron's first spike).
   The official code keeps this as a T×T matrix per neuron (`delta_refs`); since a spike clears
   every older reset, only the last spike's is ever non-zero, so e[j] = d[k]·δ[k] (k the next
   spike after j, 0 if none) is the whole matrix-vector product.
2. **Inter-neuron term.** ∂L/∂s[i] ≈ Σ_j κ[j−i]·(δ[j] + e[j]) for j ≥ i, with the PSP kernel
   κ[k] = λs^k/τs: the filtered error G of the later backward, applied to δ + e.
3. **Per-call switch on the layer's firing rate.** If more than 10 % of the layer's (neuron,
   step) pairs fired in this call (batch included), g[t] = G[t]·clamp(1/du[t], −10, 10) at spike
   steps and 0 elsewhere; otherwise every step of the layer takes the sigmoid surrogate,
   g[t] = G[t]·e^z/((1 + e^z)²·w), z = clamp((V_th − u[t])/w, −8, 8), w = 0.2.

Differences from that code, all rounding-level: e and G are recursions instead of the T×T
matrices, so sums run in another order; du is recomputed from u (≤ 1 ulp of u). The official
code also skipped the last N mod 5 samples of a batch (it left their gradient uninitialised);
every sample is computed here.
"""

from __future__ import annotations

import torch

RATE_SWITCH = 0.1
"""Firing rate of a layer (fraction of its neuron-steps) above which the spike-time gradient is
used; at or below it, the sigmoid surrogate."""
INV_DU_CLAMP = 10.0
"""1/du is clamped to [−INV_DU_CLAMP, INV_DU_CLAMP] at spikes."""
SURROGATE_WIDTH = 0.2
"""Width w of the surrogate."""
SURROGATE_CLIP = 8.0
"""|z| is clipped to this before e^z."""


def high_rate(spikes: torch.Tensor, dtype: torch.dtype) -> bool:
    """The per-call switch: True if the fraction of (neuron, step) pairs that fired is above
    RATE_SWITCH. The spikes are counted exactly (an integer) and the count rounded once to
    `dtype`; the division by the number of pairs and the comparison with RATE_SWITCH are in
    `dtype`, as in the official code (whose sum in `dtype` is that count below 2^24 spikes in
    float32, 2^53 in float64). The C kernels decide the same way."""
    return bool(spikes.sum().to(dtype) / spikes.numel() > RATE_SWITCH)


def backward(grad_trace: torch.Tensor, membrane: torch.Tensor, r_m, r_s, lam_s, th) -> torch.Tensor:
    """∂L/∂I [T, ...] from ∂L/∂a and the saved pre-reset membrane u of one layer call, as the
    October 2020 code computes it (steps 1-3 of the module docstring); `r_m` = 1/τm,
    `r_s` = 1/τs, `lam_s` = 1 − 1/τs and `th` = V_th as tensors of u's dtype."""
    T = membrane.shape[0]
    dtype = membrane.dtype
    spikes = membrane > th
    zero = torch.zeros_like(membrane[0])
    # forward over t: the decaying reset r of the last spike, and its effect d[t] at a spike
    reset_effect = []
    r = zero
    for t in range(T):
        d = -r_m * r
        r = r + d
        reset_effect.append(torch.where(spikes[t], d, zero))
        r = torch.where(spikes[t], -membrane[t], r)
    # backward over t: e[t] = d[k]·δ[k] of the next spike k > t, then G = κ-filter of δ + e
    grad_a = torch.empty_like(membrane)
    nxt = zero
    G = zero
    for t in range(T - 1, -1, -1):
        e = torch.where(spikes[t], nxt, zero)
        nxt = torch.where(spikes[t], reset_effect[t] * grad_trace[t], nxt)
        G = (grad_trace[t] + e) * r_s + lam_s * G
        grad_a[t] = G
    if high_rate(spikes, dtype):
        v = torch.where(spikes, zero, membrane)
        du = membrane - torch.cat([zero[None], v[:-1]])
        inv_du = du.reciprocal().clamp(-INV_DU_CLAMP, INV_DU_CLAMP)
        return torch.where(spikes, grad_a * inv_du, torch.zeros_like(grad_a))
    f = ((th - membrane) / SURROGATE_WIDTH).clamp(-SURROGATE_CLIP, SURROGATE_CLIP).exp()
    return grad_a * (f / ((1 + f) * (1 + f) * SURROGATE_WIDTH))
