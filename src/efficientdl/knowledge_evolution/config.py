"""The configuration of one KE experiment: its keys, their range checks, and the G and E the
`paper` and `small` recipes resolve to."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Literal

from efficientdl.core import ConfigError
from efficientdl.models.external import parse_spec


@dataclass
class KEConfig:
    """One KE experiment (YAML + `--set key=value`). `recipe='paper'` is the official recipe
    (E=200 epochs per generation, G=10 generations); `recipe='small'` the small-data preset
    (G=5, E so that a generation is ≈`steps_per_generation` SGD steps). `arm`: 'ke' (G
    generations with re-init), 'long' (the compute-matched baseline: one run of G·E epochs),
    'restarts' (G × E with LR restarts and a fresh optimizer but no re-init: split rate 1).

    `model`: a registry name, `torchvision:NAME` or `timm:NAME`; `model_kwargs`: keywords for its
    constructor. `in_channels`, `input_size` (square side) and `num_classes` describe the network's
    input and output: null takes them from the dataset; `ke train` refuses values its dataset
    does not have, `ke bench` builds its net and inputs from them."""

    name: str = "ke"
    recipe: Literal["paper", "small"] = "paper"
    arm: Literal["ke", "long", "restarts"] = "ke"
    dataset: str = "digits"
    data_root: str | None = None
    per_class: int | None = None
    model: str = "small_cnn"
    model_kwargs: dict[str, Any] = field(default_factory=dict)
    stem: Literal["imagenet", "cifar"] = "cifar"
    in_channels: int | None = None
    input_size: int | None = None
    num_classes: int | None = None
    width: int | None = None
    split_rate: float = 0.5
    scheme: Literal["kels", "wels"] = "kels"
    wels_sampling: Literal["exact", "bernoulli"] = "exact"
    channel_multiple: int = 1
    reset_init: Literal["default", "kaiming_normal", "zero"] = "default"
    reset_bn: bool = False
    reset_hypothesis: bool = False
    generations: int | None = None
    epochs: int | None = None
    steps_per_generation: int = 1000
    batch_size: int = 32
    lr: float = 0.256
    momentum: float = 0.9
    weight_decay: float = 1e-4
    warmup_epochs: int = 5
    label_smoothing: float = 0.1
    cskd: bool = False
    cskd_temperature: float = 4.0
    cskd_weight: float = 3.0
    crop_padding: int = 2
    seed: int = 0
    device: str = "auto"
    threads: int | None = None
    eval_batch_size: int = 1000
    probe_size: int = 256
    checkpoint_seconds: float = 30.0
    val_every: int = 10
    keep: int | None = None
    out_dir: str = "runs/ke"
    progress: bool = True

    def validate(self) -> KEConfig:
        """Range checks; errors name the key and the bad value."""
        positive = ("batch_size", "steps_per_generation", "eval_batch_size", "channel_multiple",
                    "val_every")  # fmt: skip
        for key in positive + ("generations", "epochs", "per_class", "keep", "threads", "width",
                               "in_channels", "input_size", "num_classes"):  # fmt: skip
            value = getattr(self, key)
            if value is not None and value < 1:
                raise ConfigError(f"config key '{key}' must be ≥ 1, got {value!r}")
        if not 0 < self.split_rate <= 1:
            raise ConfigError(f"config key 'split_rate' must be in (0, 1], got {self.split_rate}")
        for key in ("lr", "weight_decay", "momentum", "label_smoothing", "warmup_epochs",
                    "crop_padding", "probe_size", "checkpoint_seconds"):  # fmt: skip
            if getattr(self, key) < 0:
                raise ConfigError(f"config key '{key}' must be ≥ 0, got {getattr(self, key)!r}")
        try:
            parse_spec(self.model)
        except ConfigError as err:
            raise ConfigError(f"config key 'model': {err}") from None
        return self

    def resolved_generations(self) -> int:
        """G: the configured value, else 10 (paper) or 5 (small)."""
        if self.generations is not None:
            return self.generations
        return 10 if self.recipe == "paper" else 5

    def resolved_epochs(self, n_train: int) -> int:
        """E: the configured value, else 200 (paper) or ceil(steps / ceil(n_train/batch))."""
        if self.epochs is not None:
            return self.epochs
        if self.recipe == "paper":
            return 200
        return math.ceil(self.steps_per_generation / math.ceil(n_train / self.batch_size))
