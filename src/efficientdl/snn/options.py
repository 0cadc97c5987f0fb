"""The settings of the TSSL-BP neuron and of a spiking network, each default written once.

`NeuronOptions` is what every layer, builder, recipe and kernel of the neuron reads; the recipe
(`snn.config.TSSLBPRecipe`) and the builders (`snn.networks`) take their defaults from here.
Equations are those of the discrete LIF model and the TSSL-BP backward (Zhang & Li, NeurIPS 2020),
written out in `snn.functional`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

BACKENDS = ("auto", "torch", "fused", "triton")
"""Paths of the neuron: 'torch' reference, 'fused' kernels, 'triton' (fused on CUDA), 'auto'."""


ALGORITHMS = ("tsslbp", "paper2020")
"""Backwards of the neuron: 'tsslbp', the official code since its December 2020 revision, and
'paper2020', the code of October 2020 that produced the published results tables
(`snn.paper2020`). Both share the forward."""

CONV_INITS = ("uniform", "kaiming_normal")
"""Initialisations of the spiking convolutions: 'uniform' U(±1/√fan_in) (PyTorch's default, the
later official code) or 'kaiming_normal' N(0, 2/fan_in) (the October 2020 code)."""


def _unknown(kind: str, names, known) -> ValueError:
    return ValueError(f"unknown {kind} {sorted(names)[0]!r}; known: {', '.join(known)}")


def check_backend(backend: str) -> None:
    """Raise a ValueError unless `backend` is one of BACKENDS (availability is checked per call,
    on the device of the input, by `functional.resolve_backend`)."""
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")


@dataclass(frozen=True)
class NeuronOptions:
    """One TSSL-BP neuron: its LIF dynamics, the options of its backward, and its backend.

    Immutable: `replace(**changes)` gives a changed copy; invalid values raise a ValueError that
    names the field.
    """

    tau_m: float = 5.0
    """Membrane time constant τm: u[t] = (1 − 1/τm)·v[t−1] + I[t] (the discretised LIF ODE
    τm·du/dt = −u + R·I)."""
    tau_s: float = 3.0
    """Synaptic time constant τs: PSP trace a[t] = (1 − 1/τs)·a[t−1] + s[t]/τs, i.e. the spike
    train filtered by the first-order kernel ε(t) = e^(−t/τs)/τs."""
    threshold: float = 1.0
    """Firing threshold V_th: s[t] = H(u[t] − V_th); a spike resets v[t] = 0."""
    warmup_surrogate: bool = True
    """The warm-up mechanism: where a neuron's trace a[t] is below `warmup_trace`, the backward
    uses the surrogate σ'(z)/w instead of the inter/intra-neuron derivative ∂a/∂u (step B4)."""
    warmup_trace: float | None = None
    """Trace level ϑ under which the warm-up surrogate applies; None = 1/(4·τs)."""
    surrogate_width: float = 0.2
    """Width w of the warm-up sigmoid surrogate, z = (u − V_th)/w."""
    surrogate_clip: float = 8.0
    """|z| is clipped to this value before the surrogate σ'(z) is taken."""
    max_inv_du: float = 8.0
    """Cap c_du of the inter-neuron factor ρ = min(1/Δu, c_du) at a spike (step B2)."""
    intra_neuron: bool = True
    """Keep the intra-neuron dependency (u[t]/τm)·h[t+1] of the reset (step B3)."""
    algorithm: str = "tsslbp"
    """Which backward, one of ALGORITHMS. 'paper2020' has fixed constants of its own: the
    options above (warm-up surrogate to intra_neuron) must keep their defaults with it."""
    backend: str = "auto"
    """Which path runs the neuron, one of BACKENDS; never changes the numbers beyond rounding."""

    BACKWARD = (
        "algorithm",
        "warmup_surrogate",
        "warmup_trace",
        "surrogate_width",
        "surrogate_clip",
        "max_inv_du",
        "intra_neuron",
    )
    """The options of the TSSL-BP backward only (what `set_options` may change on a neuron)."""

    def __post_init__(self) -> None:
        for key in ("tau_m", "tau_s"):
            if not getattr(self, key) > 1:
                raise ValueError(
                    f"{key}: expected > 1 (decay factor 1 - 1/{key} in (0, 1)), "
                    f"got {getattr(self, key)}"
                )
        for key in ("threshold", "surrogate_width", "max_inv_du"):
            value = getattr(self, key)
            if not value > 0:  # NaN fails too
                raise ValueError(f"{key}: expected > 0, got {value}")
        check_backend(self.backend)
        if self.algorithm not in ALGORITHMS:
            raise ValueError(f"algorithm: expected one of {ALGORITHMS}, got {self.algorithm!r}")
        if self.algorithm == "paper2020":
            for key in (k for k in self.BACKWARD if k != "algorithm"):
                default = _FIELD_DEFAULTS[key]
                if getattr(self, key) != default:
                    raise ValueError(
                        f"{key}: algorithm='paper2020' does not read it (its backward has fixed "
                        f"constants); leave it at {default!r}, got {getattr(self, key)!r}"
                    )

    @classmethod
    def names(cls) -> tuple[str, ...]:
        """Every field name, in declaration order."""
        return tuple(f.name for f in dataclasses.fields(cls))

    def replace(self, **changes: Any) -> NeuronOptions:
        """A copy with `changes`; an unknown name is a ValueError listing the known ones."""
        unknown = set(changes) - set(self.names())
        if unknown:
            raise _unknown("neuron option", unknown, self.names())
        return dataclasses.replace(self, **changes) if changes else self

    def with_backward(self, **changes: Any) -> NeuronOptions:
        """A copy with changed backward options only (ValueError naming any other key)."""
        unknown = set(changes) - set(self.BACKWARD)
        if unknown:
            raise _unknown("TSSL-BP option", unknown, self.BACKWARD)
        return self.replace(**changes)

    def backward_options(self) -> dict[str, Any]:
        """{name: value} of the backward options."""
        return {k: getattr(self, k) for k in self.BACKWARD}

    def constants(self) -> dict[str, float]:
        """Scalars of the kernels as python floats (each kernel rounds them once to its dtype):
        r = 1/τ, λ = 1 − 1/τ, the threshold, ϑ, 1/w, the clip and c_du."""
        theta = 1.0 / (4.0 * self.tau_s) if self.warmup_trace is None else self.warmup_trace
        return {
            "r_m": 1.0 / self.tau_m,
            "r_s": 1.0 / self.tau_s,
            "lam_m": 1.0 - 1.0 / self.tau_m,
            "lam_s": 1.0 - 1.0 / self.tau_s,
            "th": self.threshold,
            "theta": theta,
            "inv_w": 1.0 / self.surrogate_width,
            "clip": self.surrogate_clip,
            "max_inv_du": self.max_inv_du,
        }


@dataclass(frozen=True)
class NetworkOptions:
    """What a network builder sets besides its neurons' `NeuronOptions`."""

    T: int = 5
    """Time steps a static image is presented for (event data brings its own T)."""
    dropout: float = 0.2
    """Dropout probability of the networks that have dropout layers (the CIFAR-10 CNNs)."""
    dropout_mask: str = "neuron"
    """'neuron': one mask per sample and neuron; 'row': the official code's per-row mask."""
    fold_static_input: bool = True
    """Run layer 1's weights once per static image: W∗(c[t]·x) = c[t]·(W∗x)."""
    conv_init: str = "uniform"
    """Initialisation of the spiking convolutions, one of CONV_INITS."""

    def __post_init__(self) -> None:
        if self.conv_init not in CONV_INITS:
            raise ValueError(f"conv_init: expected one of {CONV_INITS}, got {self.conv_init!r}")

    @classmethod
    def names(cls) -> tuple[str, ...]:
        """Every field name, in declaration order."""
        return tuple(f.name for f in dataclasses.fields(cls))


_FIELD_DEFAULTS = {f.name: f.default for f in dataclasses.fields(NeuronOptions)}

NEURON = NeuronOptions()
"""The default neuron (where a default is read, e.g. the recipe's fields)."""
NETWORK = NetworkOptions()
"""The default network settings."""
