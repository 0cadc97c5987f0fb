"""Spiking layers in the `[T, N, ...]` layout: T is folded into the batch for every
convolution, linear, pooling and dropout, and the neuron runs the recurrence over T."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from efficientdl.snn.functional import neuron_options, psp, run_neuron
from efficientdl.snn.options import CONV_INITS, NeuronOptions


def _fold(x: torch.Tensor) -> torch.Tensor:
    """[T, N, ...] → [T·N, ...]."""
    return x.reshape(x.shape[0] * x.shape[1], *x.shape[2:])


def _unfold(x: torch.Tensor, T: int) -> torch.Tensor:
    """[T·N, ...] → [T, N, ...]."""
    return x.reshape(T, x.shape[0] // T, *x.shape[1:])


def _check_time_first(x: torch.Tensor, dims: int, layer: str) -> None:
    if x.dim() != dims:
        raise ValueError(
            f"{layer} expects a {dims}-D trace [T, N, ...], got shape {tuple(x.shape)}"
        )


class TSSLBPNeuron(nn.Module):
    """LIF neuron over `[T, N, ...]` currents, trained with TSSL-BP; outputs the PSP trace.

    Its settings are one `NeuronOptions` (`options`, default `NeuronOptions()`) with the keyword
    `overrides`, e.g. `TSSLBPNeuron(tau_m=8.0, backend="torch")`; they are read as
    `neuron.settings` (and `neuron.tau_m`, `.tau_s`, `.threshold`, `.backend`); `neuron.ran` is
    the path its last call ran on ('torch' or 'fused'; None before the first call).
    """

    def __init__(self, options: NeuronOptions | None = None, /, **overrides):
        super().__init__()
        # modules are built on the CPU: 'triton' is checked by name here and resolved per call
        self.settings = neuron_options(options, **overrides)
        self.monitor = None  # set by efficientdl.snn.stats.FiringMonitor while active
        self.ran: str | None = None

    tau_m = property(lambda self: self.settings.tau_m, doc="Membrane time constant τm.")
    tau_s = property(lambda self: self.settings.tau_s, doc="Synaptic time constant τs.")
    threshold = property(lambda self: self.settings.threshold, doc="Firing threshold V_th.")
    backend = property(lambda self: self.settings.backend, doc="The neuron's backend.")

    @property
    def options(self) -> dict:
        """The TSSL-BP backward options as {name: value}."""
        return self.settings.backward_options()

    def set_options(self, **options) -> None:
        """Change TSSL-BP backward options (e.g. `warmup_surrogate=False`) in place."""
        self.settings = self.settings.with_backward(**options)

    def forward(self, current: torch.Tensor) -> torch.Tensor:
        trace, self.ran = run_neuron(current, self.settings)
        if self.monitor is not None:
            self.monitor.observe(self, current)
        return trace

    def extra_repr(self) -> str:
        return f"tau_m={self.tau_m}, tau_s={self.tau_s}, threshold={self.threshold}"


class _SpikingSynapse(nn.Module):
    """A weight layer (no bias) followed by a TSSL-BP neuron built from `neuron` (default
    `NeuronOptions()`) and the keyword `overrides` (NeuronOptions fields); subclasses pass the
    initialised `weight` and define `synapse`."""

    def __init__(self, weight: torch.Tensor, neuron: NeuronOptions | None, overrides: dict):
        super().__init__()
        self.weight = nn.Parameter(weight)
        self.neuron = TSSLBPNeuron(neuron, **overrides)

    def synapse(self, x: torch.Tensor) -> torch.Tensor:
        """The weight operation on a batch without a time axis."""
        raise NotImplementedError

    def forward(self, trace: torch.Tensor) -> torch.Tensor:
        T = trace.shape[0]
        return self.neuron(_unfold(self.synapse(_fold(trace)), T))


class SpikingConv2d(_SpikingSynapse):
    """Conv2d (no bias, T folded into the batch) + neuron: [T,N,Cin,H,W] → [T,N,Cout,H',W'].

    Weights × `weight_scale`, drawn by `init`: 'uniform' U(±1/√(Cin·k²)) or 'kaiming_normal'
    N(0, 2/(Cin·k²)); `neuron` / `**overrides` as `TSSLBPNeuron`.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        *,
        stride: int = 1,
        padding: int = 0,
        weight_scale: float = 1.0,
        init: str = "uniform",
        neuron: NeuronOptions | None = None,
        **overrides,
    ):
        if init not in CONV_INITS:
            raise ValueError(f"init: expected one of {CONV_INITS}, got {init!r}")
        weight = torch.empty(out_channels, in_channels, kernel_size, kernel_size)
        inv_sqrt_fan_in = 1.0 / math.sqrt(in_channels * kernel_size * kernel_size)
        if init == "uniform":
            weight.uniform_(-inv_sqrt_fan_in, inv_sqrt_fan_in)
        else:
            weight.normal_(0.0, math.sqrt(2.0) * inv_sqrt_fan_in)
        super().__init__(weight.mul_(weight_scale), neuron, overrides)
        self.in_channels, self.out_channels = in_channels, out_channels
        self.kernel_size, self.stride, self.padding = kernel_size, stride, padding

    def synapse(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4 or x.shape[1] != self.in_channels:
            raise ValueError(
                f"SpikingConv2d expects [T, N, {self.in_channels}, H, W] (time folded: "
                f"[B, {self.in_channels}, H, W]), got {tuple(x.shape)}"
            )
        return F.conv2d(x, self.weight, stride=self.stride, padding=self.padding)

    def forward(self, trace: torch.Tensor) -> torch.Tensor:
        _check_time_first(trace, 5, "SpikingConv2d")
        return super().forward(trace)

    def extra_repr(self) -> str:
        return (
            f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
            f"stride={self.stride}, padding={self.padding}"
        )


class SpikingLinear(_SpikingSynapse):
    """Linear (no bias) + TSSL-BP neuron: [T, N, *] (flattened C, H, W order) → [T, N, out].

    Weights N(0, 2/in) × `weight_scale`; `neuron` / `**overrides` as `TSSLBPNeuron`.
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        *,
        weight_scale: float = 1.0,
        neuron: NeuronOptions | None = None,
        **overrides,
    ):
        weight = torch.empty(out_features, in_features)
        weight.normal_(0.0, math.sqrt(2.0 / in_features)).mul_(weight_scale)
        super().__init__(weight, neuron, overrides)
        self.in_features, self.out_features = in_features, out_features

    def synapse(self, x: torch.Tensor) -> torch.Tensor:
        x = x.reshape(x.shape[0], -1)
        if x.shape[1] != self.in_features:
            raise ValueError(
                f"SpikingLinear expects {self.in_features} input features per sample, "
                f"got {x.shape[1]}"
            )
        return F.linear(x, self.weight)

    def forward(self, trace: torch.Tensor) -> torch.Tensor:
        if trace.dim() < 3:
            raise ValueError(f"SpikingLinear expects a trace [T, N, *], got {tuple(trace.shape)}")
        return super().forward(trace)

    def extra_repr(self) -> str:
        return f"{self.in_features}, {self.out_features}"


class _SumPool(torch.autograd.Function):
    """k×k window sums × scale on [B, C, H, W] (H, W divisible by k). Its backward spreads
    grad × scale over each window and needs no input, so, unlike avg_pool2d, it saves nothing:
    the spiking layer's output trace is then kept by no one (the neuron's backward reads u)."""

    @staticmethod
    def forward(ctx, x, k: int, scale: float):
        ctx.k, ctx.scale = k, scale
        return F.avg_pool2d(x, k, divisor_override=1) * scale

    @staticmethod
    def backward(ctx, grad):
        k = ctx.k
        B, C, Ho, Wo = grad.shape
        g = (grad * ctx.scale).reshape(B, C, Ho, 1, Wo, 1).expand(B, C, Ho, k, Wo, k)
        return g.reshape(B, C, Ho * k, Wo * k), None, None


class SumPool2d(nn.Module):
    """Non-spiking k×k sum pooling × `scale` on the trace (2×2 × 1.1 = 4.4 × avg pool); saves
    no activation for its backward."""

    def __init__(self, kernel_size: int = 2, *, scale: float = 1.1):
        super().__init__()
        self.kernel_size, self.scale = kernel_size, scale

    def forward(self, trace: torch.Tensor) -> torch.Tensor:
        _check_time_first(trace, 5, "SumPool2d")
        T, N, C, H, W = trace.shape
        k = self.kernel_size
        if H % k or W % k:
            raise ValueError(f"SumPool2d({k}) needs H and W divisible by {k}, got H={H}, W={W}")
        # window sums (divisor 1) with T folded into the batch; cheaper than a strided .sum()
        return _unfold(_SumPool.apply(_fold(trace), k, self.scale), T)

    def extra_repr(self) -> str:
        return f"kernel_size={self.kernel_size}, scale={self.scale}"


class SpikingDropout(nn.Module):
    """Dropout with one mask per sample and neuron shared by all T steps.

    `mask='row'` reproduces the 2020 official behaviour on conv traces: one mask per (sample,
    channel, row), zeroing whole rows. Identity in eval mode.
    """

    def __init__(self, p: float = 0.2, *, mask: str = "neuron"):
        super().__init__()
        if not 0 <= p < 1:
            raise ValueError(f"dropout p must be in [0, 1), got {p}")
        if mask not in ("neuron", "row"):
            raise ValueError(f"dropout mask must be 'neuron' or 'row', got {mask!r}")
        self.p, self.mask = p, mask

    def forward(self, trace: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0:
            return trace
        shape = list(trace.shape[1:])
        if self.mask == "row" and len(shape) == 4:
            shape[-1] = 1
        keep = torch.empty(shape, dtype=trace.dtype, device=trace.device).bernoulli_(1 - self.p)
        return trace * (keep / (1 - self.p))

    def extra_repr(self) -> str:
        return f"p={self.p}, mask={self.mask!r}"


class PSPEncoder(nn.Module):
    """Input encoding: static [N, ...] repeated T times (T given) or [T, N, ...]; psp."""

    def __init__(self, tau_s: float, T: int | None = None):
        super().__init__()
        if T is not None and T < 1:
            raise ValueError(f"T must be >= 1, got {T}")
        self.tau_s, self.T = tau_s, T

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.T is not None:
            x = x.unsqueeze(0).expand(self.T, *x.shape)
        return psp(x, self.tau_s)

    def extra_repr(self) -> str:
        return f"tau_s={self.tau_s}, T={self.T}"
