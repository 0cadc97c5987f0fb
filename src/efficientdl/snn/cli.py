"""`efficientdl snn train|evaluate|stats`."""

from __future__ import annotations

import json

from efficientdl.core.config import add_config_args, load_config


def register(sub) -> None:
    """Add the `snn` sub-command tree to the top-level parser."""
    snn = sub.add_parser("snn", help="TSSL-BP spiking networks")
    actions = snn.add_subparsers(dest="action", required=True)
    train = actions.add_parser("train", help="train a recipe; writes a run folder")
    add_config_args(train, example="configs/snn/mnist_cnn.yaml")
    train.add_argument("--run-dir", default=None, help="run folder (default runs/<name>-<time>)")
    train.add_argument("--resume", action="store_true", help="continue from run-dir/checkpoint.pt")
    train.add_argument("--no-report", action="store_true", help="skip report.md and the plots")
    train.set_defaults(func=_train)
    evaluate = actions.add_parser("evaluate", help="test accuracy of a run's checkpoint")
    stats = actions.add_parser("stats", help="firing rates and SynOps of a run's checkpoint")
    for p in (evaluate, stats):
        add_config_args(p, example="configs/snn/mnist_cnn.yaml", required=False)
        p.add_argument(
            "--run-dir",
            default=None,
            help="run folder whose checkpoint.pt is loaded (its saved recipe unless --config); "
            "without it, the --config network as initialised",
        )
    stats.add_argument("--batches", type=int, default=10)
    evaluate.set_defaults(func=_evaluate)
    stats.set_defaults(func=_stats)
    bench = actions.add_parser("bench", help="training-step speed vs the ANN floor (issue 4)")
    bench.set_defaults(func=_bench)
    from efficientdl.snn.bench import add_arguments

    add_arguments(bench)


def _recipe(args):
    from efficientdl.snn.models import TSSLBPRecipe

    return load_config(TSSLBPRecipe, args.config, args.overrides).validate()


def _train(args) -> int:
    from efficientdl.snn.report import write_report
    from efficientdl.snn.train import fit

    if args.resume and args.run_dir is None:
        raise ValueError("--resume needs --run-dir (the folder of the run to continue)")
    recipe = _recipe(args)
    summary = fit(recipe, run_dir=args.run_dir, resume=args.resume)
    if not args.no_report and summary.get("final_test_accuracy") is not None:
        write_report(summary["run_dir"])
    print(json.dumps(summary, indent=2))
    return 0


def _load_run(args):
    """(recipe, network, data) of `--run-dir`'s checkpoint and/or `--config`, with `--set`."""
    from efficientdl.snn.train import load_run

    if args.run_dir is None and args.config is None:
        raise ValueError("give --run-dir (a trained run) or --config (a recipe), or both")
    recipe = None if args.config is None else _recipe(args)
    return load_run(args.run_dir, recipe=recipe, overrides=args.overrides)


def _evaluate(args) -> int:
    from efficientdl.core import select_device
    from efficientdl.snn.train import evaluate

    recipe, net, (_, test_set) = _load_run(args)
    device = select_device(recipe.device)
    result = evaluate(net.to(device), test_set, recipe, device=device, progress=True)
    print(json.dumps(result, indent=2))
    return 0


def _stats(args) -> int:
    from efficientdl.snn.report import firing_on_test

    recipe, net, (_, test_set) = _load_run(args)
    report = firing_on_test(net, test_set, recipe, batches=args.batches)
    print(json.dumps(report.to_dict(), indent=2))
    return 0


def _bench(args) -> int:
    from efficientdl.snn.bench import run

    run(args)
    return 0
