"""A whole KE experiment from a `KEConfig`: data subset, model, masks, driver, summary.

`run_experiment` follows the run protocol of `core.run`: the run folder is checked first
(`open_run`), its `config.json` is written only once data, model and masks are ready, right before
generation 1 trains, so a start that fails earlier leaves nothing that blocks the retry. Under
torchrun every rank runs it; only rank 0 writes.
"""

from __future__ import annotations

import inspect
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from efficientdl.core import (
    ConfigError,
    RunFolderError,
    UserError,
    init_distributed,
    open_run,
    registry,
    seed_everything,
    select_device,
    to_dict,
)
from efficientdl.core.distributed import DistContext, barrier, broadcast_object, shutdown
from efficientdl.core.log import get_logger
from efficientdl.core.run import stored_run
from efficientdl.core.runtime import default_run_dir
from efficientdl.core.tensorboard import Scalars, require_tensorboard
from efficientdl.data import get_dataset, per_class_indices, subset
from efficientdl.data.cache import data_home
from efficientdl.knowledge_evolution.config import KEConfig
from efficientdl.knowledge_evolution.cost import cost
from efficientdl.knowledge_evolution.driver import KnowledgeEvolution
from efficientdl.knowledge_evolution.evaluation import accuracy_fn
from efficientdl.knowledge_evolution.masks import is_kernel_level, split
from efficientdl.knowledge_evolution.reinit import init_weights
from efficientdl.knowledge_evolution.report import write_report
from efficientdl.knowledge_evolution.slim import extract_slim
from efficientdl.knowledge_evolution.training import recipe_train_fn
from efficientdl.models.external import build_external, is_external

METHOD = "ke"
EXTENDS = ("generations",)
"""Config keys a `--resume` may raise: more generations continue a finished run."""
FREE = ("threads", "device", "progress", "checkpoint_seconds", "keep", "out_dir",
        "eval_batch_size")  # fmt: skip
"""Config keys a `--resume` may change freely: they do not change what is trained."""

_REPORTED = ("split_rate", "scheme", "reset_init", "lr", "batch_size", "weight_decay",
             "label_smoothing", "cskd", "width")  # fmt: skip

log = get_logger("ke")


def _macs(model: nn.Module, masks, x: torch.Tensor) -> dict[str, int]:
    """MACs per sample of the dense net and, for KELS masks, of the slim (fit) net."""
    out = {"dense": cost(model, x)["macs"]}
    if is_kernel_level(masks):
        out["fit"] = cost(extract_slim(model, masks), x)["macs"]
    return out


def load_data(config: KEConfig):
    """(train, test): the fixed seeded `per_class` subset of the training split (all of it when
    None) and the full test split."""
    opts = {"root": config.data_root}
    train = get_dataset(config.dataset, "train", **opts)
    test = get_dataset(config.dataset, "test", **opts)
    if config.per_class is not None:
        try:
            idx = per_class_indices(train.labels, config.per_class, seed=config.seed)
        except ValueError as err:
            if isinstance(err, UserError):
                raise
            raise ConfigError(f"config key 'per_class': {err}") from None
        train = subset(train, idx, name=f"{config.dataset}-{config.per_class}pc-s{config.seed}")
    log.info(
        "data: %s from %s, %d training / %d test images",
        config.dataset, config.data_root or data_home(), len(train), len(test),
    )  # fmt: skip
    return train, test


def build(config: KEConfig, *, num_classes: int, in_channels: int) -> nn.Module:
    """The configured model (a registry name, `torchvision:NAME` or `timm:NAME`, with
    `model_kwargs`) for `num_classes` classes and `in_channels`-channel inputs (the config's
    values where set), with the official generation-1 init (kaiming_normal fan_in, BN 1/0) seeded
    by `config.seed`. An unknown model or a keyword it does not take is a ConfigError."""
    seed_everything(config.seed)
    num_classes = config.num_classes or num_classes
    in_channels = config.in_channels or in_channels
    try:
        if is_external(config.model):
            if config.width is not None:
                raise ConfigError(
                    f"{config.model!r} has no option for config key 'width' (pass its own "
                    f"keywords in model_kwargs)"
                )
            model = build_external(
                config.model,
                num_classes=num_classes,
                in_channels=in_channels,
                kwargs=config.model_kwargs,
            )
        else:
            model = _build_registered(config, num_classes, in_channels)
    except ConfigError as err:
        raise ConfigError(f"config key 'model': {err}") from None
    init_weights(model, generator=torch.Generator().manual_seed(config.seed))
    return model


def _build_registered(config: KEConfig, num_classes: int, in_channels: int) -> nn.Module:
    try:
        entry = registry.get("model", config.model)
    except ConfigError as err:
        raise ConfigError(f"{err} (or torchvision:NAME, timm:NAME)") from None
    options = {"num_classes": num_classes, "in_channels": in_channels}
    accepted = inspect.signature(entry.build).parameters
    if "stem" in accepted:
        options["stem"] = config.stem
    if config.width is not None:
        if "width" not in accepted:
            raise ConfigError(f"{config.model!r} has no option for config key 'width'")
        options["width"] = config.width
    taken = sorted(set(config.model_kwargs) & set(options))
    if taken:
        raise ConfigError(
            f"model_kwargs.{taken[0]} is set by the config (use the key '{taken[0]}' or the data)"
        )
    try:
        return entry.create(**options, **config.model_kwargs)
    except (TypeError, ValueError) as err:
        if isinstance(err, ConfigError):
            raise
        first = str(err).strip().splitlines()[0]
        raise ConfigError(
            f"model {config.model!r} with model_kwargs {config.model_kwargs!r}: {first}"
        ) from None


def check_data_shape(config: KEConfig, images: torch.Tensor, num_classes: int) -> None:
    """ConfigError when `in_channels`, `input_size` or `num_classes` is set to a value the
    training data (`images` N×C×H×W, `num_classes` classes) does not have."""
    side = images.shape[2] if images.shape[2] == images.shape[3] else None
    have = {"in_channels": images.shape[1], "input_size": side, "num_classes": num_classes}
    shown = {"in_channels": f"{images.shape[1]} channel(s)",
             "num_classes": f"{num_classes} classes",
             "input_size": f"{images.shape[2]}×{images.shape[3]} images"}  # fmt: skip
    for key, value in have.items():
        wanted = getattr(config, key)
        if wanted is not None and wanted != value:
            raise ConfigError(
                f"config key '{key}' is {wanted}, but {config.dataset} has {shown[key]} (set the "
                f"key to null to take it from the data)"
            )


def make_masks(config: KEConfig, model: nn.Module, example_input: torch.Tensor | None = None):
    """The fit/reset masks of `config` (split rate 1 for the restarts arm); a model or setting
    that cannot be split is a ConfigError."""
    rate = 1.0 if config.arm == "restarts" else config.split_rate
    try:
        return split(
            model,
            rate=rate,
            scheme=config.scheme,
            generator=torch.Generator().manual_seed(config.seed),
            wels_sampling=config.wels_sampling,
            channel_multiple=config.channel_multiple,
            example_input=example_input,
        )
    except ValueError as err:
        if isinstance(err, UserError):
            raise
        raise ConfigError(f"cannot split {config.model!r} ({config.scheme}): {err}") from None


def device_of(config: KEConfig) -> torch.device:
    """`config.device` as a torch device; one that does not exist here is a ConfigError."""
    try:
        return select_device(config.device)
    except (ValueError, RuntimeError) as err:
        if isinstance(err, UserError):
            raise
        raise ConfigError(f"config key 'device': {err}") from None


def _resolved_generations(config: dict) -> int:
    return KEConfig(**{k: config[k] for k in ("recipe", "generations")}).resolved_generations()


def _check_extension(path: Path, config: KEConfig) -> None:
    """The generation rules `open_run` cannot see: a count left to the recipe (None) may not
    shrink either, and the compute-matched arm cannot be extended (its one schedule would
    change)."""
    stored = stored_run(path)["config"]
    old, new = _resolved_generations(stored), config.resolved_generations()
    if new < old:
        raise RunFolderError(
            f"cannot resume {path}: 'generations' can only grow on --resume: stored {old}, "
            f"new {new}"
        )
    if new != old and config.arm == "long":
        raise RunFolderError(
            f"cannot resume {path}: the 'long' arm trains one run of generations × epochs "
            f"epochs, so 'generations' cannot change on --resume (stored {old}, new {new})"
        )


def run_experiment(
    config: KEConfig,
    *,
    run_dir: str | Path | None = None,
    resume: bool = False,
    tensorboard: bool = False,
    on_begin: Callable[[Path], None] | None = None,
) -> dict:
    """Run one arm of a KE experiment, or with `resume` continue the one in `run_dir` (at the
    generation and epoch it stopped; only `generations` may grow, and the keys in `FREE` may
    change). Returns the summary (also `summary.json`); history, checkpoints, generations.png
    and report.md are in the run dir, TensorBoard scalars in `tensorboard/` with `tensorboard`.
    `on_begin(run_dir)` is called right before generation 1 (or the resumed one) trains.

    Under torchrun (WORLD_SIZE > 1) each rank trains on its shard of every global batch and only
    rank 0 writes; the result equals one process with the same global batch."""
    config.validate()
    if config.threads:
        torch.set_num_threads(config.threads)
    device = device_of(config)
    dist_ctx = init_distributed(device.type)
    try:
        return _run(config, device, dist_ctx, run_dir, resume, tensorboard, on_begin)
    finally:
        shutdown(dist_ctx)


def _run(config, device, dist_ctx: DistContext, run_dir, resume, tensorboard, on_begin) -> dict:
    if dist_ctx.enabled and device.type == "cuda":
        device = torch.device("cuda", dist_ctx.local_rank)
    if tensorboard:
        require_tensorboard()
    path = Path(run_dir) if run_dir is not None else broadcast_object(
        default_run_dir(config.out_dir, config.name), dist_ctx
    )  # fmt: skip
    run = open_run(
        path, method=METHOD, config=to_dict(config), resume=resume, extends=EXTENDS, free=FREE,
        is_main=dist_ctx.is_main,
    )  # fmt: skip
    barrier(dist_ctx)  # every rank has checked the folder before rank 0 writes to it
    try:
        if resume:
            _check_extension(path, config)
        train, test = load_data(config)
        check_data_shape(config, train.images, train.num_classes)
        model = build(config, num_classes=train.num_classes, in_channels=train.images.shape[1])
        masks = make_masks(config, model, train.images[:2])
        generations = config.resolved_generations()
        epochs = config.resolved_epochs(len(train))
        if config.arm == "long":
            generations, epochs = 1, generations * epochs
        ke_arm = config.arm == "ke"
        scalars = Scalars(None, enabled=False)

        def on_epoch(ctx, record):
            step = (ctx.index - 1) * epochs + record["epoch"]
            scalars.log(step, {"loss": record["train_loss"], "accuracy": record["train_accuracy"],
                               "lr": record["lr"]}, prefix="train")  # fmt: skip

        def on_generation(record):
            scalars.log(record["generation"],
                        {net: record[net]["accuracy"] for net in ("dense", "fit", "reset")
                         if net in record}, prefix="accuracy")  # fmt: skip

        driver = KnowledgeEvolution(
            model.to(device),
            masks,
            train_fn=recipe_train_fn(
                config, train, device=device, epochs=epochs, on_epoch=on_epoch
            ),  # fmt: skip
            eval_fn=accuracy_fn(test, device=device, batch_size=config.eval_batch_size),
            generations=generations,
            run_dir=path,
            init=config.reset_init,
            seed=config.seed,
            reset_bn=config.reset_bn,
            reset_hypothesis=config.reset_hypothesis,
            probe=test.images[: config.probe_size] if ke_arm and config.probe_size else None,
            eval_fit=ke_arm,
            eval_reset=ke_arm,
            keep=config.keep or "all",
            on_generation=on_generation,
        )
    except BaseException:
        run.abandon()
        raise
    run.begin(to_dict(config))
    scalars = Scalars(path, enabled=tensorboard and dist_ctx.is_main)
    if on_begin is not None:
        on_begin(path)
    started = time.time()
    try:
        history = driver.run()
    finally:
        scalars.close()
    summary = {
        "name": config.name,
        "arm": config.arm,
        "dataset": config.dataset,
        "per_class": config.per_class,
        "model": config.model,
        "seed": config.seed,
        "generations": generations,
        "epochs_per_generation": epochs,
        "total_epochs": generations * epochs,
        "train_samples": len(train),
        "test_samples": len(test),
        "accuracy": {
            net: [r[net]["accuracy"] for r in history]
            for net in ("dense", "fit", "reset")
            if all(net in r for r in history)
        },
        "params": history[-1]["params"] if history else None,
        "macs": _macs(model, masks, test.images[:1].to(device)),
        "recipe": {k: getattr(config, k) for k in _REPORTED},
        "run_dir": str(path),
        "world_size": dist_ctx.world_size,
        "wall_seconds_this_session": time.time() - started,
    }
    run.write_summary(summary)
    if dist_ctx.is_main:
        write_report(path, summary, history)
    return summary
