"""Fused TSSL-BP kernels for CUDA: the recurrences over T written once in PyTorch and compiled by
`torch.compile` (Inductor → Triton) into one kernel for the forward and one for the backward.
The same functions compile to C++ on the CPU, which is how CI checks them against the reference;
the CPU 'fused' path itself uses `cpu_kernels` (one build for every T).

`available(device_type)` probes once whether the fused path can run on a device type.
"""

from __future__ import annotations

import functools

import torch


def forward_recurrence(current, r_m, r_s, th):
    """LIF forward on [T, M]: returns trace a and pre-reset membrane u (unrolled over T)."""
    v = torch.zeros_like(current[0])
    a = torch.zeros_like(current[0])
    traces, membranes = [], []
    for t in range(current.shape[0]):
        du = current[t] - r_m * v
        u = v + du
        s = (u > th).to(current.dtype)
        v = u * (1 - s)
        a = a + (s - a) * r_s
        traces.append(a)
        membranes.append(u)
    return torch.stack(traces), torch.stack(membranes)


def backward_recurrence(grad_trace, membrane, c: dict, warmup_surrogate: bool, intra_neuron: bool):
    """TSSL-BP backward (B1-B4 of `functional.tsslbp_backward`) on [T, M] from the saved
    membrane u (unrolled over T); `c` as `NeuronOptions.constants()`."""
    T = membrane.shape[0]
    th = c["th"]
    spikes = [membrane[t] > th for t in range(T)]
    quiet = []
    if warmup_surrogate:
        a = torch.zeros_like(membrane[0])
        for t in range(T):
            a = a + (spikes[t].to(membrane.dtype) - a) * c["r_s"]
            quiet.append(a < c["theta"])
    G = torch.zeros_like(membrane[0])
    h = torch.zeros_like(membrane[0])
    out = [None] * T
    for t in range(T - 1, -1, -1):
        u = membrane[t]
        v_prev = torch.where(spikes[t - 1], 0.0, membrane[t - 1]) if t > 0 else 0.0
        inv_du = torch.where(spikes[t], u - v_prev, 1.0).reciprocal().clamp(max=c["max_inv_du"])
        G = grad_trace[t] * c["r_s"] + c["lam_s"] * G
        carry = G + u * c["r_m"] * h if intra_neuron else G
        h = torch.where(spikes[t], inv_du * carry, c["lam_m"] * h)
        if warmup_surrogate:
            z = ((u - th) * c["inv_w"]).clamp(-c["clip"], c["clip"])
            surrogate = torch.sigmoid(z) * torch.sigmoid(-z) * c["inv_w"]
            out[t] = torch.where(quiet[t], surrogate * G, h)
        else:
            out[t] = h
    return torch.stack(out)


@functools.cache
def kernels():
    """(forward, backward) compiled with torch.compile (dynamic in M, unrolled in T)."""
    return (
        torch.compile(forward_recurrence, dynamic=True, fullgraph=True),
        torch.compile(backward_recurrence, dynamic=True, fullgraph=True),
    )


@functools.cache
def available(device_type: str) -> tuple[bool, str]:
    """(True, '') when the fused kernels build and run on `device_type`, else (False, reason)."""
    try:
        if device_type == "cpu":
            from efficientdl.snn import cpu_kernels

            cpu_kernels.library()
        elif device_type == "cuda":
            probe = torch.rand(2, 4, device="cuda")
            one = torch.ones((), device="cuda")
            kernels()[0](probe, one * 0.2, one / 3, one)
        else:
            return False, f"no fused kernels for device type {device_type!r}"
    except Exception as err:  # no compiler / no triton: the caller falls back or reports
        return False, f"{type(err).__name__}: {err}"
    return True, ""
