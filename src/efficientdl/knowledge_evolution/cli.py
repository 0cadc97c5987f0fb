"""`efficientdl ke train|bench`."""

from __future__ import annotations

import json

from efficientdl.core.config import load_config


def _add_config_args(p) -> None:
    p.add_argument("--config", required=True, help="YAML config, e.g. configs/ke/demo.yaml")
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a KEConfig field (repeatable); unknown keys are errors",
    )


def register(sub) -> None:
    """Add the `ke` sub-command tree to the top-level parser."""
    ke = sub.add_parser("ke", help="Knowledge Evolution (generations, KELS/WELS, slim nets)")
    actions = ke.add_subparsers(dest="action", required=True)
    train = actions.add_parser(
        "train", help="run one arm of a KE experiment; an existing --run-dir is resumed"
    )
    _add_config_args(train)
    train.add_argument("--run-dir", default=None, help="run folder (default runs/ke/<name>-<time>)")
    train.set_defaults(func=_train)
    bench = actions.add_parser("bench", help="dense vs slim parameters, MACs and CPU latency")
    _add_config_args(bench)
    bench.add_argument("--input-size", type=int, default=28, help="square input side")
    bench.add_argument("--classes", type=int, default=10)
    bench.add_argument("--batch", type=int, nargs="+", default=[1, 64])
    bench.add_argument("--runs", type=int, default=20, help="timed runs (median reported)")
    bench.set_defaults(func=_bench)


def _config(args):
    from efficientdl.knowledge_evolution.recipe import KEConfig

    return load_config(KEConfig, args.config, args.overrides).validate()


def _train(args) -> int:
    from efficientdl.knowledge_evolution.experiment import run_experiment

    summary = run_experiment(_config(args), run_dir=args.run_dir)
    print(json.dumps(summary, indent=2))
    return 0


def _bench(args) -> int:
    import torch

    from efficientdl.knowledge_evolution.bench import cost_row, forward_fn, latency
    from efficientdl.knowledge_evolution.experiment import build
    from efficientdl.knowledge_evolution.masks import split
    from efficientdl.knowledge_evolution.slim import extract_slim

    config = _config(args)
    if config.threads:
        torch.set_num_threads(config.threads)
    channels = config.in_channels or 1
    model = build(config, num_classes=args.classes, in_channels=channels).eval()
    x = torch.randn(max(args.batch), channels, args.input_size, args.input_size)
    masks = split(model, rate=config.split_rate, channel_multiple=config.channel_multiple)
    nets = {"dense": model, f"slim sr={config.split_rate}": extract_slim(model, masks)}
    rows = []
    for name, net in nets.items():
        row = cost_row(name, net, x)
        for b in args.batch:
            fn = forward_fn(net, x[:b])
            row[f"cpu_ms_b{b}"] = latency(fn, device=x.device, warmup=3, runs=args.runs)
        rows.append(row)
    print(f"{'net':<16} {'params':>12} {'MACs':>14} " + " ".join(f"{'ms b' + str(b):>10}"
                                                               for b in args.batch))  # fmt: skip
    for row in rows:
        times = " ".join(f"{row[f'cpu_ms_b{b}']:>10.3f}" for b in args.batch)
        print(f"{row['net']:<16} {row['params']:>12,} {row['macs']:>14,} {times}")
    print(json.dumps({"threads": torch.get_num_threads(), "rows": rows}, indent=2))
    return 0
