"""The AdaShare experiment config: nested dataclasses from YAML + `--set` overrides."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from efficientdl.core.config import ConfigError

OFFICIAL_SEEDS = [88, 45, 50, 100, 44, 48, 2048, 2222]
DEFAULT_BASELINES = ("single_task", "multi_task", "random_policy", "stochastic_depth")
SOFT_SHARING_BASELINES = ("cross_stitch", "sluice", "nddr_cnn", "mtan")
BASELINES = DEFAULT_BASELINES + SOFT_SHARING_BASELINES
ABLATIONS = {
    "no_sparsity": ["train.sparsity_weight=0"],
    "no_sharing": ["train.sharing_weight=0"],
    "no_curriculum": ["train.curriculum=false"],
    "reinforce": ["train.search_method=reinforce"],
}


@dataclass
class DataConfig:
    """Dataset, tasks and splits. `size`/`scene_seed` are for the procedural scenes; `num_*`
    size the procedural splits and cut Multi-MNIST's to their first pairs; `variant` for
    Multi-MNIST; `crop` [h, w] and `augment` for the training augmentation;
    `class_weights: false` trains Taskonomy seg unweighted instead of requiring its prior file.
    `dataset: custom` marks a run of your own tasks and datasets, given through the API."""

    dataset: Literal["procedural", "multi_mnist", "nyu_v2", "cityscapes", "taskonomy", "custom"] = (
        "procedural"
    )
    root: str | None = None
    tasks: list[str] = field(default_factory=lambda: ["seg", "normal", "depth"])
    crop: list[int] | None = None
    augment: bool = False
    val_fraction: float = 0.1
    split_seed: int = 0
    size: int = 64
    num_train: int | None = None
    num_val: int | None = None
    num_test: int | None = None
    scene_seed: int = 0
    variant: Literal["mnist", "fashion", "mixed"] = "mnist"
    cache: bool = True
    class_weights: bool = True


@dataclass
class ModelConfig:
    backbone: Literal["resnet18", "resnet34"] = "resnet18"
    head: Literal["aspp", "light", "linear"] = "light"
    stem: Literal["deeplab", "cifar"] = "deeplab"
    logits_init: Literal["equal", "random", "all_chosen"] = "equal"
    width: int = 64


@dataclass
class TrainConfig:
    """Warm-up and policy search. `weight_iters`/`policy_iters` None = one epoch of the
    half; `total_iters` counts warm-up, weight and policy iterations together.

    The search can be stated by what stays the same across scales: `search_cycles` (C weight +
    policy cycles; checked against `total_iters` = warm-up + C·(weight_iters + policy_iters)) and
    `tau_final`, the temperature of the last policy phase, from which the per-cycle decay
    (tau_final / tau0)^(1/(C − 1)) is derived instead of `tau_decay`."""

    batch_size: int = 16
    eval_batch_size: int = 32
    total_iters: int = 20000
    warmup_iters: int = 4000
    lr: float = 1e-3
    backbone_lr: float = 1e-3
    policy_lr: float = 0.01
    weight_decay: float = 1e-4
    policy_weight_decay: float = 5e-4
    decay_lr_freq: int = 4000
    decay_lr_rate: float = 0.5
    weight_iters: int | None = None
    policy_iters: int | None = None
    curriculum: bool = True
    curriculum_speed: int = 3
    tau0: float = 5.0
    tau_decay: float = 0.965
    tau_min: float = 0.0
    search_cycles: int | None = None
    tau_final: float | None = None
    gumbel_hard: bool = False
    lambdas: dict = field(default_factory=dict)
    sparsity_weight: float = 0.05
    sharing_weight: float = 0.05
    reg_variant: Literal["official", "paper"] = "official"
    block_weights: Literal["depth", "uniform"] = "depth"
    search_method: Literal["gumbel", "reinforce"] = "gumbel"
    reinforce_baseline_decay: float = 0.9
    ckpt_every: int = 100

    def cycle_decay(self) -> float:
        """The factor τ is multiplied by after each cycle: derived from `tau_final` when it is
        set (so that the C-th policy phase runs at τ = tau_final), else `tau_decay`."""
        if self.tau_final is None:
            return self.tau_decay
        if self.search_cycles == 1:
            return 1.0
        return (self.tau_final / self.tau0) ** (1 / (self.search_cycles - 1))

    def check_schedule(self) -> None:
        """`search_cycles` agrees with the iteration counts; `tau_final` needs it and lies in
        (0, tau0]; a ConfigError names the key otherwise."""
        if self.tau_final is not None:
            if self.search_cycles is None:
                raise ConfigError(
                    "config key 'train.tau_final': needs train.search_cycles (the decay is "
                    "derived from the number of cycles)"
                )
            if not 0 < self.tau_final <= self.tau0:
                raise ConfigError(
                    f"config key 'train.tau_final': must be in (0, tau0={self.tau0}], "
                    f"got {self.tau_final}"
                )
        if self.search_cycles is None:
            return
        if self.search_cycles < 1:
            raise ConfigError(
                f"config key 'train.search_cycles': must be ≥ 1, got {self.search_cycles}"
            )
        if self.weight_iters is None or self.policy_iters is None:
            raise ConfigError(
                "config key 'train.search_cycles': needs train.weight_iters and "
                "train.policy_iters set (an epoch-long phase has no fixed length)"
            )
        total = self.warmup_iters + self.search_cycles * (self.weight_iters + self.policy_iters)
        if self.total_iters != total:
            raise ConfigError(
                f"config key 'train.total_iters': {self.search_cycles} cycles of "
                f"{self.weight_iters} + {self.policy_iters} iterations after "
                f"{self.warmup_iters} warm-up iterations make {total}, got {self.total_iters}"
            )


@dataclass
class SampleConfig:
    num: int = 8
    seeds: list[int] = field(default_factory=lambda: list(OFFICIAL_SEEDS))
    mode: Literal["bernoulli", "argmax"] = "bernoulli"


@dataclass
class RetrainConfig:
    iters: int = 20000
    val_freq: int = 400
    from_search: bool = False


@dataclass
class RandomPolicyConfig:
    """The `random_policy` baseline: `match_counts` keeps each task's number of executed
    blocks of the selected AdaShare policy, at uniformly random positions."""

    match_counts: bool = False


@dataclass
class SoftSharingConfig:
    """The Cross-Stitch, Sluice and NDDR-CNN baselines: their sharing units start with
    `init_same` on a task's own column (or subspace) and (1 − init_same)/(n − 1) on each of the
    n − 1 others; 1 starts them as independent single-task networks."""

    init_same: float = 0.9


@dataclass
class PerfConfig:
    precision: Literal["fp32", "bf16"] = "fp32"
    channels_last: bool = False
    cudnn_benchmark: bool = False


@dataclass
class ParityConfig:
    normals_encoding: Literal["unit", "official_raw"] = "unit"
    eval_upsample: Literal["nearest", "bilinear"] = "nearest"
    masked_execution: bool = False


@dataclass
class AdaShareConfig:
    """One AdaShare experiment: search, sampling, re-training, baselines and evaluation."""

    name: str = "adashare"
    seed: int = 88
    device: str = "auto"
    threads: int | None = None
    out_dir: str = "runs/adashare"
    progress: bool = True
    selection_reference: str | None = None
    baselines: list[str] = field(default_factory=lambda: list(DEFAULT_BASELINES))
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    sample: SampleConfig = field(default_factory=SampleConfig)
    retrain: RetrainConfig = field(default_factory=RetrainConfig)
    random_policy: RandomPolicyConfig = field(default_factory=RandomPolicyConfig)
    soft_sharing: SoftSharingConfig = field(default_factory=SoftSharingConfig)
    perf: PerfConfig = field(default_factory=PerfConfig)
    parity: ParityConfig = field(default_factory=ParityConfig)

    def validate(self) -> AdaShareConfig:
        """Check cross-field constraints; raise ConfigError naming the key."""
        t = self.train
        positive = {
            "train.batch_size": t.batch_size,
            "train.eval_batch_size": t.eval_batch_size,
            "train.decay_lr_freq": t.decay_lr_freq,
            "train.curriculum_speed": t.curriculum_speed,
            "train.ckpt_every": t.ckpt_every,
            "sample.num": self.sample.num,
            "retrain.val_freq": self.retrain.val_freq,
            "model.width": self.model.width,
        }
        for key, value in positive.items():
            if value < 1:
                raise ConfigError(f"config key '{key}': must be ≥ 1, got {value!r}")
        if not 0 <= t.warmup_iters <= t.total_iters:
            raise ConfigError(
                f"config key 'train.warmup_iters': must be in [0, total_iters={t.total_iters}], "
                f"got {t.warmup_iters}"
            )
        if t.tau0 <= 0 or not 0 < t.tau_decay <= 1:
            raise ConfigError("config keys 'train.tau0' > 0 and 'train.tau_decay' in (0, 1]")
        for key in ("weight_iters", "policy_iters"):
            value = getattr(t, key)
            if value is not None and value < 1:
                raise ConfigError(f"config key 'train.{key}': must be ≥ 1 or null, got {value}")
        t.check_schedule()
        for name in self.baselines:
            if name not in BASELINES and name not in ABLATIONS:
                raise ConfigError(
                    f"config key 'baselines': unknown {name!r}; expected from "
                    f"{list(BASELINES) + list(ABLATIONS)}"
                )
        if "sluice" in self.baselines:
            check_sluice_width(self.model.width)
        if not 0 <= self.soft_sharing.init_same <= 1:
            raise ConfigError(
                "config key 'soft_sharing.init_same': must be in [0, 1], got "
                f"{self.soft_sharing.init_same!r}"
            )
        if not self.data.tasks:
            raise ConfigError("config key 'data.tasks': needs at least one task")
        unknown = sorted(set(t.lambdas) - set(self.data.tasks))
        if unknown:
            raise ConfigError(f"config key 'train.lambdas': unknown task(s) {unknown}")
        if self.data.crop is not None and len(self.data.crop) != 2:
            raise ConfigError(f"config key 'data.crop': expected [h, w], got {self.data.crop}")
        return self


def check_sluice_width(width: int) -> None:
    """ConfigError unless `model.width` is even: the sluice baseline splits every stage's
    channels into two equal subspaces."""
    if width % 2:
        raise ConfigError(
            "config key 'model.width': the sluice baseline splits every stage's channels into "
            f"two subspaces and needs an even width, got {width}"
        )


DEMO_RECIPE = "adashare/procedural_demo"
"""The packaged recipe `efficientdl adashare pipeline` runs without --config."""


def demo_config() -> dict:
    """The procedural demo's config as plain data (the packaged recipe `DEMO_RECIPE`)."""
    from efficientdl.core.config import read_config_file
    from efficientdl.core.recipes import resolve_recipe

    return read_config_file(resolve_recipe(DEMO_RECIPE, "adashare"))
