"""`efficientdl ke train|bench`."""

from __future__ import annotations

import json

from efficientdl.core.config import add_config_args, load_config


def register(sub) -> None:
    """Add the `ke` sub-command tree to the top-level parser."""
    ke = sub.add_parser("ke", help="Knowledge Evolution (generations, KELS/WELS, slim nets)")
    actions = ke.add_subparsers(dest="action", required=True)
    train = actions.add_parser("train", help="run one arm of a KE experiment (checkpointed)")
    add_config_args(train, example="configs/ke/demo.yaml")
    train.add_argument("--run-dir", default=None, help="run folder (default runs/ke/<name>-<time>)")
    train.add_argument(
        "--resume", action="store_true", help="continue the run in --run-dir where it stopped"
    )
    train.set_defaults(func=_train)
    bench = actions.add_parser("bench", help="dense vs slim parameters, MACs and CPU latency")
    add_config_args(bench, example="configs/ke/demo.yaml")
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

    if args.resume and args.run_dir is None:
        raise ValueError("--resume needs --run-dir (the folder of the run to continue)")
    summary = run_experiment(_config(args), run_dir=args.run_dir, resume=args.resume)
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
    rows = [cost_row(name, net, x) for name, net in nets.items()]
    for b in args.batch:
        fns = {name: forward_fn(net, x[:b]) for name, net in nets.items()}
        ms = latency(fns, device=x.device, warmup=3, runs=args.runs)
        for row in rows:
            row[f"cpu_ms_b{b}"] = ms[row["net"]]
    print(f"{'net':<16} {'params':>12} {'MACs':>14} " + " ".join(f"{'ms b' + str(b):>10}"
                                                               for b in args.batch))  # fmt: skip
    for row in rows:
        times = " ".join(f"{row[f'cpu_ms_b{b}']:>10.3f}" for b in args.batch)
        print(f"{row['net']:<16} {row['params']:>12,} {row['macs']:>14,} {times}")
    print(json.dumps({"threads": torch.get_num_threads(), "rows": rows}, indent=2))
    return 0
