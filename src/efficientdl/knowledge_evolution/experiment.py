"""A whole KE experiment from a `KEConfig`: data subset, model, masks, driver, summary."""

from __future__ import annotations

import inspect
import json
import time
from pathlib import Path

import torch
from torch import nn

from efficientdl.core import make_run_dir, seed_everything, select_device, to_dict
from efficientdl.data import get_dataset, per_class_indices, subset
from efficientdl.knowledge_evolution.cost import cost
from efficientdl.knowledge_evolution.driver import KnowledgeEvolution
from efficientdl.knowledge_evolution.masks import is_kernel_level, split
from efficientdl.knowledge_evolution.recipe import KEConfig, accuracy_fn, recipe_train_fn
from efficientdl.knowledge_evolution.reinit import init_weights
from efficientdl.knowledge_evolution.report import write_report
from efficientdl.knowledge_evolution.slim import extract_slim
from efficientdl.models import build_model, get_builder

_RESUME_FREE = ("generations", "progress", "threads", "device", "checkpoint_seconds", "keep")


_REPORTED = ("split_rate", "scheme", "reset_init", "lr", "batch_size", "weight_decay",
             "label_smoothing", "cskd", "width")  # fmt: skip


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
        idx = per_class_indices(train.labels, config.per_class, seed=config.seed)
        train = subset(train, idx, name=f"{config.dataset}-{config.per_class}pc-s{config.seed}")
    return train, test


def build(config: KEConfig, *, num_classes: int, in_channels: int) -> nn.Module:
    """The registry model with the official generation-1 init (kaiming_normal fan_in, BN 1/0),
    seeded by `config.seed`."""
    seed_everything(config.seed)
    options = {"num_classes": num_classes, "in_channels": config.in_channels or in_channels}
    accepted = inspect.signature(get_builder(config.model)).parameters
    if "stem" in accepted:
        options["stem"] = config.stem
    if config.width is not None:
        options["width"] = config.width
    model = build_model(config.model, **options)
    init_weights(model, generator=torch.Generator().manual_seed(config.seed))
    return model


def _check_resume(run_dir: Path, config: KEConfig, resume: bool) -> None:
    path = run_dir / "config.json"
    current = to_dict(config)
    if path.exists() and not resume:
        raise ValueError(
            f"{run_dir} already holds a KE run; pass --resume (resume=True) to continue it, or "
            "choose another --run-dir"
        )
    if path.exists():
        saved = json.loads(path.read_text())
        for key in sorted(set(saved) | set(current)):
            if key not in _RESUME_FREE and saved.get(key) != current.get(key):
                raise ValueError(
                    f"cannot resume {run_dir}: config key '{key}' was {saved.get(key)!r}, now "
                    f"{current.get(key)!r} (use another --run-dir)"
                )
    path.write_text(json.dumps(current, indent=2))


def run_experiment(
    config: KEConfig, *, run_dir: str | Path | None = None, resume: bool = False
) -> dict:
    """Run one arm of a KE experiment, or with `resume` continue the one in `run_dir` (at the
    generation and epoch it stopped; the config may differ only in generations, threads, device,
    progress, checkpoint_seconds and keep). Returns and writes summary.json; history, checkpoints,
    generations.png and report.md are in the run dir."""
    config.validate()
    if config.threads:
        torch.set_num_threads(config.threads)
    device = select_device(config.device)
    run_dir = make_run_dir(config.out_dir, config.name, run_dir=run_dir)
    _check_resume(run_dir, config, resume)
    train, test = load_data(config)
    model = build(config, num_classes=train.num_classes, in_channels=train.images.shape[1])
    rate = 1.0 if config.arm == "restarts" else config.split_rate
    masks = split(
        model,
        rate=rate,
        scheme=config.scheme,
        generator=torch.Generator().manual_seed(config.seed),
        wels_sampling=config.wels_sampling,
        channel_multiple=config.channel_multiple,
        example_input=train.images[:2],
    )
    generations = config.resolved_generations()
    epochs = config.resolved_epochs(len(train))
    if config.arm == "long":
        generations, epochs = 1, generations * epochs
    ke_arm = config.arm == "ke"
    started = time.time()
    history = KnowledgeEvolution(
        model.to(device),
        masks,
        train_fn=recipe_train_fn(config, train, device=device, epochs=epochs),
        eval_fn=accuracy_fn(test, device=device, batch_size=config.eval_batch_size),
        generations=generations,
        run_dir=run_dir,
        init=config.reset_init,
        seed=config.seed,
        reset_bn=config.reset_bn,
        reset_hypothesis=config.reset_hypothesis,
        probe=test.images[: config.probe_size] if ke_arm and config.probe_size else None,
        eval_fit=ke_arm,
        eval_reset=ke_arm,
        keep=config.keep or "all",
    ).run()
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
        "run_dir": str(run_dir),
        "wall_seconds_this_session": time.time() - started,
    }
    (Path(run_dir) / "summary.json").write_text(json.dumps(summary, indent=2))
    write_report(run_dir, summary, history)
    return summary
