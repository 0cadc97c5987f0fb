"""`efficientdl ke train|bench`."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from efficientdl.core.config import add_config_args, config_from_args, refuse_unread
from efficientdl.core.distributed import is_main_process
from efficientdl.core.errors import ConfigError, UserError
from efficientdl.core.run import add_train_command, train_config


def register(sub) -> None:
    """Add the `ke` sub-command tree to the top-level parser."""
    ke = sub.add_parser("ke", help="Knowledge Evolution (generations, KELS/WELS, slim nets)")
    actions = ke.add_subparsers(dest="action", required=True)
    add_train_command(
        actions,
        "train",
        method="ke",
        example="ke/demo",
        example_dir="runs/ke/<name>-<time>",
        func=_train,
        help="run one arm of a KE experiment (checkpointed; torchrun shards each batch)",
        description="Run one arm of a KE experiment into a run folder. --resume continues it "
        "(a finished run too, with --set generations=N); without --config it uses the stored "
        "config. Under torchrun every rank trains on its shard of each global batch.",
    )
    bench = actions.add_parser("bench", help="dense vs slim parameters, MACs and CPU latency")
    add_config_args(bench, method="ke", example="ke/demo")
    bench.add_argument(
        "--input-size",
        type=int,
        default=None,
        help="square input side (default: config key input_size, else the dataset's)",
    )
    bench.add_argument(
        "--classes", type=int, default=None, help="default: config key num_classes, else 10"
    )
    bench.add_argument("--batch", type=int, nargs="+", default=[1, 64])
    bench.add_argument("--runs", type=int, default=20, help="timed runs (median reported)")
    bench.set_defaults(func=_bench)


BENCH_READS = ("model", "model_kwargs", "stem", "dataset", "in_channels", "input_size",
               "num_classes", "width", "split_rate", "scheme", "wels_sampling", "channel_multiple",
               "seed", "threads")  # fmt: skip
"""The config keys `ke bench` reads: the network and its split (no training)."""


def _config(args):
    from efficientdl.knowledge_evolution.config import KEConfig

    return config_from_args(KEConfig, args).validate()


def _train(args) -> int:
    from efficientdl.knowledge_evolution.config import KEConfig
    from efficientdl.knowledge_evolution.experiment import run_experiment

    config = train_config(KEConfig, args, method="ke").validate()
    given = args.run_dir
    # Ctrl-C offers `--resume` only once the run has started (config.json written); a resumed
    # run can always be resumed again.
    args.run_dir = given if args.resume else None

    def began(path: Path) -> None:
        args.run_dir = str(path)

    summary = run_experiment(
        config, run_dir=given, resume=args.resume, tensorboard=args.tensorboard, on_begin=began
    )
    if is_main_process():
        print(json.dumps(summary, indent=2))
    return 0


def _bench(args) -> int:
    import torch

    from efficientdl.core.benchmark import time_variants
    from efficientdl.knowledge_evolution.bench import bench_shape, cost_row, forward_fn
    from efficientdl.knowledge_evolution.experiment import build, make_masks
    from efficientdl.knowledge_evolution.slim import extract_slim

    refuse_unread(args.overrides, reads=BENCH_READS, command="ke bench")
    config = _config(args)
    for name, value in (("--input-size", args.input_size), ("--classes", args.classes),
                        ("--runs", args.runs), *(("--batch", b) for b in args.batch)):  # fmt: skip
        if value is not None and value < 1:
            raise ConfigError(f"{name} must be ≥ 1, got {value}")
    if config.scheme != "kels":
        raise ConfigError(
            f"ke bench compares the dense net with the slim KELS net; config key 'scheme' is "
            f"{config.scheme!r} (use --set scheme=kels)"
        )
    if config.threads:
        torch.set_num_threads(config.threads)
    (channels, side, _), classes = bench_shape(
        config, input_size=args.input_size, num_classes=args.classes
    )
    model = build(config, num_classes=classes, in_channels=channels).eval()
    x = torch.randn(max(args.batch), channels, side, side)
    masks = make_masks(dataclasses.replace(config, arm="ke"), model)
    nets = {"dense": model, f"slim sr={config.split_rate}": extract_slim(model, masks)}
    try:
        rows = [cost_row(name, net, x) for name, net in nets.items()]
    except RuntimeError as err:
        if isinstance(err, UserError):
            raise
        first = str(err).strip().splitlines()[0]
        raise ConfigError(
            f"--input-size {side}: {config.model} does not run on "
            f"{channels}×{side}×{side} inputs ({first})"
        ) from None
    for b in args.batch:
        fns = {name: forward_fn(net, x[:b]) for name, net in nets.items()}
        timings = time_variants(fns, warmup=3, rounds=args.runs, device=x.device)
        for row in rows:
            row[f"cpu_ms_b{b}"] = timings[row["net"]].median_ms
    print(f"{config.model}: {channels}×{side}×{side} inputs, {classes} classes")
    print(f"{'net':<16} {'params':>12} {'MACs':>14} " + " ".join(f"{'ms b' + str(b):>10}"
                                                               for b in args.batch))  # fmt: skip
    for row in rows:
        times = " ".join(f"{row[f'cpu_ms_b{b}']:>10.3f}" for b in args.batch)
        print(f"{row['net']:<16} {row['params']:>12,} {row['macs']:>14,} {times}")
    print(json.dumps({"model": config.model, "input": [channels, side, side], "classes": classes,
                      "threads": torch.get_num_threads(), "rows": rows}, indent=2))  # fmt: skip
    return 0
