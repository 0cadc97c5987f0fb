"""The TSSL-BP experiment config (`TSSLBPRecipe`) and the packaged recipes
(`efficientdl/configs/snn/*.yaml`, the one source of the paper's recipes).

The neuron and network fields take their defaults from `snn.options` (`NeuronOptions`,
`NetworkOptions`); a recipe YAML states what differs from them or what the paper reports.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from efficientdl.core.config import load_config
from efficientdl.core.errors import ConfigError
from efficientdl.core.recipes import resolve_recipe
from efficientdl.snn.networks import BUILD_KEYS, list_models
from efficientdl.snn.options import BACKENDS, CONV_INITS, NETWORK, NEURON, NeuronOptions


@dataclass
class TSSLBPRecipe:
    """One TSSL-BP experiment: model, data, neuron, loss, optimiser and run settings."""

    model: str = "mnist_cnn"
    dataset: str = "mnist"
    data_root: str | None = None
    T: int = NETWORK.T
    tau_m: float = NEURON.tau_m
    tau_s: float = NEURON.tau_s
    threshold: float = NEURON.threshold
    backend: str = NEURON.backend
    algorithm: str = NEURON.algorithm
    conv_init: str = NETWORK.conv_init
    fold_static_input: bool = NETWORK.fold_static_input
    dropout: float = NETWORK.dropout
    dropout_mask: str = NETWORK.dropout_mask
    warmup_surrogate: bool = NEURON.warmup_surrogate
    intra_neuron: bool = NEURON.intra_neuron
    max_inv_du: float = NEURON.max_inv_du
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
        """The keyword arguments the network builder gets from this recipe (its fields that are
        `NeuronOptions` or `NetworkOptions` fields)."""
        return {k: getattr(self, k) for k in BUILD_KEYS if hasattr(self, k)}

    def neuron(self) -> NeuronOptions:
        """The recipe's neuron; ConfigError naming the first invalid field."""
        fields = {k: getattr(self, k) for k in NeuronOptions.names() if hasattr(self, k)}
        try:
            return NeuronOptions(**fields)
        except ValueError as err:
            raise ConfigError(str(err)) from None

    def validate(self) -> TSSLBPRecipe:
        """Raise ConfigError (a ValueError) naming the first bad field."""
        if self.model not in list_models():
            raise ConfigError(
                f"model: unknown {self.model!r}; registered: {', '.join(list_models())}"
            )
        if self.loss not in ("kernel", "count"):
            raise ConfigError(f"loss: expected 'kernel' or 'count', got {self.loss!r}")
        if self.backend not in BACKENDS:
            raise ConfigError(f"backend: expected one of {list(BACKENDS)}, got {self.backend!r}")
        if self.conv_init not in CONV_INITS:
            raise ConfigError(
                f"conv_init: expected one of {list(CONV_INITS)}, got {self.conv_init!r}"
            )
        if self.dropout_mask not in ("neuron", "row"):
            raise ConfigError(
                f"dropout_mask: expected 'neuron' or 'row', got {self.dropout_mask!r}"
            )
        for key in ("T", "batch_size", "epochs", "checkpoint_every"):
            if getattr(self, key) < 1:
                raise ConfigError(f"{key}: expected >= 1, got {getattr(self, key)}")
        self.neuron()
        if not self.lr > 0:
            raise ConfigError(f"lr: expected > 0, got {self.lr}")
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


def recipe(name: str, **overrides) -> TSSLBPRecipe:
    """The packaged recipe `name` (configs/snn/<name>.yaml) with field `overrides`, validated."""
    fields = {f.name for f in dataclasses.fields(TSSLBPRecipe)}
    unknown = sorted(set(overrides) - fields)
    if unknown:
        raise ConfigError(f"unknown recipe field {unknown[0]!r}")
    loaded = load_config(TSSLBPRecipe, resolve_recipe(name, "snn"))
    return dataclasses.replace(loaded, **overrides).validate()
