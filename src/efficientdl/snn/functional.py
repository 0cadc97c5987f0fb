"""TSSL-BP functional core: PSP filter, LIF neuron forward and the TSSL-BP backward.

Layout is time-first `[T, N, ...]`. All recurrences loop over T in Python and are vectorised over
neurons (the 'torch' reference backend). Arithmetic follows one canonical form so that any
fused backend can be bit-equal: reciprocals rounded once to the compute dtype, one rounding per op.

The neuron's settings are one `NeuronOptions` (snn.options); `tsslbp`, `tsslbp_backward` and
`lif_states` take it, or its fields as keyword arguments, or both (the keywords override).
Discrete model: u[t] = v[t−1] + I[t] − v[t−1]/τm, s[t] = H(u[t] − V_th), v[t] = u[t]·(1 − s[t]),
a[t] = a[t−1] + (s[t] − a[t−1])/τs.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from efficientdl.core.errors import ConfigError
from efficientdl.core.log import get_logger
from efficientdl.snn.options import ALGORITHMS, BACKENDS, NeuronOptions, check_backend


class LIFStates(NamedTuple):
    """Forward states of a LIF layer: output trace a, spikes s (bool), pre-reset membrane u."""

    trace: torch.Tensor
    spikes: torch.Tensor
    membrane: torch.Tensor


def neuron_options(options: NeuronOptions | None = None, **overrides) -> NeuronOptions:
    """`options` (default: `NeuronOptions()`) with the keyword `overrides` applied."""
    return (options or NeuronOptions()).replace(**overrides)


def _check_input(x: torch.Tensor) -> None:
    if x.dim() < 1 or x.shape[0] < 1:
        raise ValueError(
            f"expected a time-first tensor [T, ...] with T >= 1, got shape {tuple(x.shape)}"
        )
    if not x.is_floating_point():
        raise ValueError(f"expected a floating-point tensor, got dtype {x.dtype}")


def _const(value: float, like: torch.Tensor) -> torch.Tensor:
    """A scalar computed in double and rounded once to the compute dtype."""
    return torch.tensor(value, dtype=like.dtype, device=like.device)


def kernel_weights(T: int, tau_s: float, *, dtype=torch.float64, device=None) -> torch.Tensor:
    """The discrete PSP kernel κ[k] = λs^k / τs for k = 0..T-1 (Σ_k κ[k] → 1)."""
    lam = 1.0 - 1.0 / tau_s
    k = torch.arange(T, dtype=torch.float64)
    return (lam**k / tau_s).to(dtype=dtype, device=device)


def psp(x: torch.Tensor, tau_s: float) -> torch.Tensor:
    """Synaptic filter y[t] = y[t-1] + (x[t] - y[t-1])/τs = λs·y[t-1] + x[t]/τs on dim 0."""
    _check_input(x)
    neuron_options(tau_s=tau_s)  # validates τs
    r_s = _const(1.0 / tau_s, x)
    y = torch.zeros_like(x[0])
    out = []
    for t in range(x.shape[0]):
        y = y + (x[t] - y) * r_s
        out.append(y)
    return torch.stack(out)


def static_encoding_factors(T: int, tau_s: float, *, dtype=torch.float32, device=None):
    """c[t] = psp(ones)[t] = 1 - λs^(t+1): layer 1 sees c[t]·x for a static image."""
    return psp(torch.ones(T, dtype=dtype, device=device), tau_s)


def lif_states(
    current: torch.Tensor, options: NeuronOptions | None = None, /, **overrides
) -> LIFStates:
    """Run the discrete LIF neuron without grad: trace a, spikes s and pre-reset u (reads τm, τs
    and V_th of `options` with `overrides`)."""
    _check_input(current)
    opts = neuron_options(options, **overrides)
    with torch.no_grad():
        r_m, r_s = _const(1.0 / opts.tau_m, current), _const(1.0 / opts.tau_s, current)
        th = _const(opts.threshold, current)
        v = torch.zeros_like(current[0])
        a = torch.zeros_like(current[0])
        traces, spikes, membranes = [], [], []
        for t in range(current.shape[0]):
            du = current[t] - r_m * v
            u = v + du
            s = u > th
            sf = s.to(current.dtype)
            v = u * (1 - sf)
            a = a + (sf - a) * r_s
            traces.append(a)
            spikes.append(s)
            membranes.append(u)
        return LIFStates(torch.stack(traces), torch.stack(spikes), torch.stack(membranes))


def _surrogate(membrane: torch.Tensor, th, inv_w, clip: float) -> torch.Tensor:
    """B4's σ'(z)/w with z = clip((u − V_th)/w); σ'(z) = e^(−z)/(1 + e^(−z))² = σ(z)·σ(−z)."""
    z = ((membrane - th) * inv_w).clamp(-clip, clip)
    return torch.sigmoid(z) * torch.sigmoid(-z) * inv_w


def tsslbp_backward(
    grad_trace: torch.Tensor,
    membrane: torch.Tensor,
    options: NeuronOptions | None = None,
    /,
    **overrides,
) -> torch.Tensor:
    """∂L/∂I from ∂L/∂a and the saved pre-reset membrane u (TSSL-BP backward, steps B1-B4), for
    the neuron `options` with `overrides` (its `backend` is not read).

    s = u > V_th, v = u·(1−s), du[t] = u[t] − v[t−1] and the trace a are recomputed from u.
    B1: G[t] = δ[t]/τs + λs·G[t+1]. B2: ρ = min(1/du, c_du) at spikes.
    B3: h[t] = ρ(G + (u/τm)h[t+1]) at spikes, λm·h[t+1] otherwise.
    B4: where a[t] < ϑ the output is σ'(z)/w·G instead of h.
    """
    _check_input(membrane)
    opts = neuron_options(options, **overrides)
    if grad_trace.shape != membrane.shape:
        raise ValueError(
            f"grad_trace shape {tuple(grad_trace.shape)} != membrane shape {tuple(membrane.shape)}"
        )
    T = membrane.shape[0]
    dtype = membrane.dtype
    grad_trace = grad_trace.to(dtype)
    c = {k: _const(v, membrane) for k, v in opts.constants().items() if k != "clip"}
    r_m, r_s, lam_m, lam_s = c["r_m"], c["r_s"], c["lam_m"], c["lam_s"]
    th, theta, inv_w = c["th"], c["theta"], c["inv_w"]

    spikes = membrane > th
    v = torch.where(spikes, torch.zeros_like(membrane), membrane)
    v_prev = torch.cat([torch.zeros_like(v[:1]), v[:-1]])
    du = membrane - v_prev
    inv_du = torch.where(spikes, du, torch.ones_like(du)).reciprocal().clamp(max=opts.max_inv_du)
    if opts.warmup_surrogate:
        a = torch.zeros_like(membrane[0])
        quiet = []
        sf = spikes.to(dtype)
        for t in range(T):
            a = a + (sf[t] - a) * r_s
            quiet.append(a < theta)
        quiet = torch.stack(quiet)
        surrogate = _surrogate(membrane, th, inv_w, opts.surrogate_clip)

    grad_in = torch.empty_like(membrane)
    G = torch.zeros_like(membrane[0])
    h = torch.zeros_like(membrane[0])
    for t in range(T - 1, -1, -1):
        G = grad_trace[t] * r_s + lam_s * G
        carry = G + membrane[t] * r_m * h if opts.intra_neuron else G
        h = torch.where(spikes[t], inv_du[t] * carry, lam_m * h)
        grad_in[t] = torch.where(quiet[t], surrogate[t] * G, h) if opts.warmup_surrogate else h
    return grad_in


class _TSSLBP(torch.autograd.Function):
    """Reference path: vectorised Python loops over T (saves u only); the backward of the
    neuron's `algorithm`."""

    @staticmethod
    def forward(ctx, current, options: NeuronOptions):
        states = lif_states(current, options)
        ctx.options = options
        ctx.save_for_backward(states.membrane)
        return states.trace

    @staticmethod
    def backward(ctx, grad_trace):
        (membrane,) = ctx.saved_tensors
        if ctx.options.algorithm == "paper2020":
            return _paper2020_backward(grad_trace, membrane, ctx.options), None
        return tsslbp_backward(grad_trace, membrane, ctx.options), None


def _paper2020_backward(grad_trace, membrane, options: NeuronOptions) -> torch.Tensor:
    from efficientdl.snn import paper2020

    c = options.constants()
    r_m, r_s, lam_s, th = (_const(c[k], membrane) for k in ("r_m", "r_s", "lam_s", "th"))
    return paper2020.backward(grad_trace.to(membrane.dtype), membrane, r_m, r_s, lam_s, th)


class _TSSLBPFused(torch.autograd.Function):
    """Fused path: one kernel for the forward and one for the backward, on [T, M] views."""

    @staticmethod
    def forward(ctx, current, options: NeuronOptions):
        from efficientdl.snn import fused

        shape, dtype = current.shape, current.dtype
        work = current.to(torch.float64 if dtype == torch.float64 else torch.float32)
        work = work.reshape(shape[0], -1).contiguous()
        c = options.constants()
        forward = fused.kernels(work.device.type, options.backend)[0]
        trace, membrane = forward(work, c["r_m"], c["r_s"], c["th"])
        ctx.options, ctx.shape = options, shape
        ctx.save_for_backward(membrane)
        return trace.reshape(shape).to(dtype)

    @staticmethod
    def backward(ctx, grad_trace):
        from efficientdl.snn import fused

        (membrane,) = ctx.saved_tensors
        grad = grad_trace.to(membrane.dtype).reshape(membrane.shape).contiguous()
        out = fused.backward(grad, membrane, ctx.options)
        return out.reshape(ctx.shape).to(grad_trace.dtype), None


_FUSED_DTYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16)

_log = get_logger("snn")
_LOGGED: set = set()


def _log_once(key, message: str, *args) -> None:
    """Log `message` at INFO the first time this process sees `key`."""
    if key not in _LOGGED:
        _LOGGED.add(key)
        _log.info(message, *args)


def _fallback(backend: str, device: str, why: str) -> str:
    """'auto' runs the reference because of `why` (logged once per process and reason); an
    explicit fused/triton request is a ConfigError saying `why`."""
    if backend != "auto":
        raise ConfigError(f"backend={backend!r} on {device}: {why}")
    _log_once(
        ("fallback", device, why), "backend: auto runs the torch reference on %s: %s", device, why
    )
    return "torch"


def resolve_backend(backend: str, tensor: torch.Tensor, *, algorithm: str = "tsslbp") -> str:
    """The path that will run the neuron's `algorithm` on `tensor`, 'torch' or 'fused'.

    'fused' = the fused kernels (C/OpenMP on CPU tensors, Triton on CUDA tensors); 'triton' = the
    Triton kernels (CUDA tensors, or CPU tensors under TRITON_INTERPRET=1, see `snn.fused`);
    'auto' = fused when its kernels build on this device, run the
    algorithm and take the dtype, else the torch reference. Every choice of 'auto' is logged
    once per process (with why, when it is the reference); a fused/triton request that cannot be
    met is an error (ConfigError, or BackendUnavailableError when the kernels cannot run here).
    """
    from efficientdl.snn import fused

    check_backend(backend)
    if backend == "torch":
        return "torch"
    device = tensor.device.type
    if tensor.dtype not in _FUSED_DTYPES:
        return _fallback(backend, device, f"the fused kernels take no {tensor.dtype}")
    ok, why = fused.available(device, backend, algorithm)
    if not ok:
        if backend == "auto":
            return _fallback(backend, device, f"the fused kernels are unavailable: {why}")
        raise fused.BackendUnavailableError(
            f"backend={backend!r} is not available on {device}: {why}"
        )
    if backend == "auto":
        _log_once(("fused", device), "backend: auto runs the fused kernels on %s", device)
    return "fused"


def run_neuron(current: torch.Tensor, options: NeuronOptions) -> tuple[torch.Tensor, str]:
    """(output trace, the path that ran it: 'torch' or 'fused') of the LIF layer `options`."""
    _check_input(current)
    path = resolve_backend(options.backend, current, algorithm=options.algorithm)
    if path == "fused":
        return _TSSLBPFused.apply(current, options), path
    return _TSSLBP.apply(current, options), path


def tsslbp(current: torch.Tensor, options: NeuronOptions | None = None, /, **overrides):
    """LIF layer: current [T, N, ...] → output PSP trace, differentiable with TSSL-BP, for the
    neuron `options` (default `NeuronOptions()`) with the keyword `overrides`, e.g.
    `tsslbp(x, tau_m=5.0, tau_s=3.0, threshold=1.0, backend="torch")` or, for the backward of
    the October 2020 code, `tsslbp(x, tau_m=5.0, tau_s=2.0, algorithm="paper2020")`."""
    _check_input(current)
    return run_neuron(current, neuron_options(options, **overrides))[0]


__all__ = [
    "ALGORITHMS",
    "BACKENDS",
    "LIFStates",
    "NeuronOptions",
    "check_backend",
    "kernel_weights",
    "lif_states",
    "neuron_options",
    "psp",
    "resolve_backend",
    "run_neuron",
    "static_encoding_factors",
    "tsslbp",
    "tsslbp_backward",
]
