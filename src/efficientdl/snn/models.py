"""Registry of the paper's spiking networks and their training recipes (TSSL-BP, Zhang & Li,
NeurIPS 2020, and its official code)."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field

from efficientdl.core.errors import ConfigError
from efficientdl.snn.functional import BACKENDS
from efficientdl.snn.layers import (
    NEURON_OPTIONS,
    PSPEncoder,
    SpikingConv2d,
    SpikingDropout,
    SpikingLinear,
    SumPool2d,
)
from efficientdl.snn.network import SpikingNetwork

_REGISTRY: dict[str, Callable[..., SpikingNetwork]] = {}
_DEFAULTS: dict[str, dict] = {}


def register_model(name: str, **defaults):
    """Decorator adding a network builder to the registry under `name` with default overrides."""

    def wrap(fn):
        if name in _REGISTRY:
            raise ValueError(f"model {name!r} registered twice")
        _REGISTRY[name] = fn
        _DEFAULTS[name] = defaults
        return fn

    return wrap


def list_models() -> list[str]:
    """Names of every registered network."""
    return sorted(_REGISTRY)


BUILD_KEYS = (
    "T",
    "tau_m",
    "tau_s",
    "threshold",
    "backend",
    "dropout",
    "dropout_mask",
    "fold_static_input",
) + NEURON_OPTIONS


def build(name: str, **overrides) -> SpikingNetwork:
    """Build registry network `name`; `overrides` may set T, tau_m, tau_s, threshold, backend,
    TSSL-BP options, dropout (p), dropout_mask and fold_static_input."""
    if name not in _REGISTRY:
        raise ConfigError(f"unknown model {name!r}; registered: {', '.join(list_models())}")
    unknown = sorted(set(overrides) - set(BUILD_KEYS))
    if unknown:
        raise ConfigError(
            f"unknown override {unknown[0]!r} for build(); known: {', '.join(BUILD_KEYS)}"
        )
    opts = {
        "T": 5,
        "tau_m": 5.0,
        "tau_s": 3.0,
        "threshold": 1.0,
        "backend": "auto",
        "dropout": 0.2,
        "dropout_mask": "neuron",
        "fold_static_input": True,
    }
    opts.update(_DEFAULTS[name])
    opts.update(overrides)
    neuron = {k: opts[k] for k in ("tau_m", "tau_s", "threshold", "backend")}
    neuron.update({k: opts[k] for k in NEURON_OPTIONS if k in opts})
    factory = _LayerFactory(neuron, opts["dropout"], opts["dropout_mask"])
    layers, static = _REGISTRY[name](factory)
    encoder = PSPEncoder(opts["tau_s"], T=opts["T"] if static else None)
    return SpikingNetwork(encoder, layers, fold_static_input=opts["fold_static_input"])


@dataclass
class _LayerFactory:
    """Shortcuts that give every layer the network's neuron settings."""

    neuron: dict
    p: float
    mask: str

    def conv(self, cin, cout, k, padding=0, weight_scale=1.0):
        return SpikingConv2d(
            cin, cout, k, padding=padding, weight_scale=weight_scale, **self.neuron
        )

    def fc(self, fin, fout, weight_scale=1.0):
        return SpikingLinear(fin, fout, weight_scale=weight_scale, **self.neuron)

    def pool(self):
        return SumPool2d(2)

    def drop(self):
        return SpikingDropout(self.p, mask=self.mask)


@register_model("mnist_cnn")
def _mnist_cnn(f: _LayerFactory):
    """15C5-P2-40C5-P2-300-10 on 1×28×28."""
    return [
        f.conv(1, 15, 5),
        f.pool(),
        f.conv(15, 40, 5),
        f.pool(),
        f.fc(640, 300),
        f.fc(300, 10),
    ], True


@register_model("fmnist_mlp")
def _fmnist_mlp(f: _LayerFactory):
    """400-400-10 on flattened 784."""
    return [f.fc(784, 400), f.fc(400, 400), f.fc(400, 10)], True


@register_model("fmnist_cnn")
def _fmnist_cnn(f: _LayerFactory):
    """32C5-P2-64C5-P2-1024-10 (padding 2) on 1×28×28."""
    return [
        f.conv(1, 32, 5, 2),
        f.pool(),
        f.conv(32, 64, 5, 2),
        f.pool(),
        f.fc(3136, 1024),
        f.fc(1024, 10),
    ], True


@register_model("nmnist_cnn", T=30, tau_m=8.0, tau_s=4.0)
def _nmnist_cnn(f: _LayerFactory):
    """12C5-P2-64C5-P2-10 on event frames [T, N, 2, 34, 34]."""
    return [f.conv(2, 12, 5, 1), f.pool(), f.conv(12, 64, 5), f.pool(), f.fc(2304, 10)], False


def _cifar(f: _LayerFactory, ch, fcs):
    c1, c2, c3, c4, c5 = ch
    s = 5.0
    layers = [
        f.conv(3, c1, 3, 1, s),
        f.drop(),
        f.conv(c1, c2, 3, 1, s),
        f.pool(),
        f.drop(),
        f.conv(c2, c3, 3, 1, s),
        f.pool(),
        f.drop(),
        f.conv(c3, c4, 3, 1, s),
        f.drop(),
        f.conv(c4, c5, 3, 1, s),
        f.drop(),
    ]
    sizes = [c5 * 8 * 8, *fcs]
    for i in range(len(fcs)):
        layers.append(f.fc(sizes[i], sizes[i + 1]))
        layers.append(f.drop())
    layers.append(f.fc(sizes[-1], 10))
    return layers, True


@register_model("cifar10_cnn1")
def _cifar10_cnn1(f: _LayerFactory):
    """96C3-256C3-P2-384C3-P2-384C3-256C3-1024-1024-10 (weight scale 5, dropout 0.2)."""
    return _cifar(f, (96, 256, 384, 384, 256), (1024, 1024))


@register_model("cifar10_cnn2")
def _cifar10_cnn2(f: _LayerFactory):
    """128C3-256C3-P2-512C3-P2-1024C3-512C3-1024-512-10 (ours: CNN1's settings)."""
    return _cifar(f, (128, 256, 512, 1024, 512), (1024, 512))


@dataclass
class TSSLBPRecipe:
    """One TSSL-BP experiment: model, data, neuron, loss, optimiser and run settings."""

    model: str = "mnist_cnn"
    dataset: str = "mnist"
    data_root: str | None = None
    T: int = 5
    tau_m: float = 5.0
    tau_s: float = 3.0
    threshold: float = 1.0
    backend: str = "auto"
    fold_static_input: bool = True
    dropout: float = 0.2
    dropout_mask: str = "neuron"
    warmup_surrogate: bool = True
    intra_neuron: bool = True
    max_inv_du: float = 8.0
    loss: str = "kernel"
    pattern: str = "official"
    target_filter_passes: int = 2
    desired: float = 15.0
    undesired: float = 3.0
    batch_size: int = 50
    lr: float = 5e-4
    weight_decay: float = 0.01
    grad_clip: float = 1.0
    weight_clamp: float = 4.0
    epochs: int = 100
    train_subset: int | None = None
    test_subset: int | None = None
    normalize: str = "mnist"
    seed: int = 0
    device: str = "auto"
    threads: int | None = None
    checkpoint_every: int = 200
    out_dir: str = "runs"
    run_name: str | None = None
    data_options: dict = field(default_factory=dict)

    def model_overrides(self) -> dict:
        """The keyword arguments `build()` gets from this recipe."""
        keys = (
            "T",
            "tau_m",
            "tau_s",
            "threshold",
            "backend",
            "fold_static_input",
            "dropout",
            "dropout_mask",
            "warmup_surrogate",
            "intra_neuron",
            "max_inv_du",
        )
        return {k: getattr(self, k) for k in keys}

    def validate(self) -> TSSLBPRecipe:
        """Raise ConfigError (a ValueError) naming the first bad field."""
        if self.model not in _REGISTRY:
            raise ConfigError(
                f"model: unknown {self.model!r}; registered: {', '.join(list_models())}"
            )
        if self.loss not in ("kernel", "count"):
            raise ConfigError(f"loss: expected 'kernel' or 'count', got {self.loss!r}")
        if self.backend not in BACKENDS:
            raise ConfigError(f"backend: expected one of {list(BACKENDS)}, got {self.backend!r}")
        if self.dropout_mask not in ("neuron", "row"):
            raise ConfigError(
                f"dropout_mask: expected 'neuron' or 'row', got {self.dropout_mask!r}"
            )
        for key in ("T", "batch_size", "epochs", "checkpoint_every"):
            if getattr(self, key) < 1:
                raise ConfigError(f"{key}: expected >= 1, got {getattr(self, key)}")
        for key in ("tau_m", "tau_s"):
            if not getattr(self, key) > 1:
                raise ConfigError(f"{key}: expected > 1, got {getattr(self, key)}")
        for key in ("lr", "threshold", "max_inv_du"):
            if not getattr(self, key) > 0:
                raise ConfigError(f"{key}: expected > 0, got {getattr(self, key)}")
        if not 0 <= self.dropout < 1:
            raise ConfigError(f"dropout: expected a probability in [0, 1), got {self.dropout}")
        if self.target_filter_passes not in (1, 2):
            raise ConfigError(
                f"target_filter_passes: expected 1 or 2, got {self.target_filter_passes}"
            )
        for key in ("train_subset", "test_subset"):
            value = getattr(self, key)
            if value is not None and value < 1:
                raise ConfigError(f"{key}: expected >= 1 or null, got {value}")
        if self.threads is not None and self.threads < 1:
            raise ConfigError(f"threads: expected >= 1 or null, got {self.threads}")
        return self


_RECIPES = {
    "mnist_cnn": {},
    "fmnist_mlp": {"model": "fmnist_mlp", "dataset": "fashion-mnist", "batch_size": 100},
    "fmnist_cnn": {"model": "fmnist_cnn", "dataset": "fashion-mnist"},
    "nmnist_cnn": {
        "model": "nmnist_cnn",
        "dataset": "nmnist",
        "T": 30,
        "tau_m": 8.0,
        "tau_s": 4.0,
        "loss": "count",
        "desired": 15.0,
        "undesired": 3.0,
    },
    "nmnist_cnn_t100": {
        "model": "nmnist_cnn",
        "dataset": "nmnist",
        "T": 100,
        "tau_m": 8.0,
        "tau_s": 4.0,
        "loss": "count",
        "desired": 50.0,
        "undesired": 10.0,
    },
    "cifar10_cnn1": {"model": "cifar10_cnn1", "dataset": "cifar10", "lr": 2e-4, "epochs": 150},
    "cifar10_cnn2": {"model": "cifar10_cnn2", "dataset": "cifar10", "lr": 2e-4, "epochs": 150},
}


def recipe(name: str, **overrides) -> TSSLBPRecipe:
    """The paper's training recipe `name` with field overrides."""
    if name not in _RECIPES:
        raise ConfigError(f"unknown recipe {name!r}; known: {', '.join(sorted(_RECIPES))}")
    fields = {f.name for f in dataclasses.fields(TSSLBPRecipe)}
    unknown = sorted(set(overrides) - fields)
    if unknown:
        raise ConfigError(f"unknown recipe field {unknown[0]!r}")
    return TSSLBPRecipe(**{**_RECIPES[name], **overrides}).validate()
