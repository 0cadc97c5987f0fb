"""`efficientdl snn train|evaluate|stats|bench|export`."""

from __future__ import annotations

import argparse
import json

from efficientdl.core.config import add_config_args, config_from_args
from efficientdl.core.distributed import is_main_process
from efficientdl.core.errors import ConfigError, UserError
from efficientdl.core.run import add_train_command

DATA_KEYS = ("dataset", "data_root", "data_options", "normalize")
RUNTIME_KEYS = ("batch_size", "device", "threads", "backend")
ARCHITECTURE_KEYS = (
    "model",
    "T",
    "tau_m",
    "tau_s",
    "threshold",
    "fold_static_input",
)
HONOURED = {
    "evaluate": (*DATA_KEYS, "test_subset", *RUNTIME_KEYS),
    "stats": (*DATA_KEYS, "batch_size", "threads", "backend"),
}
"""The recipe keys `evaluate` and `stats` read from `--set` (with `--run-dir` the network, its
architecture and the seed of the run's test subset come from the run; without it the network of
`--config` as initialised, so its architecture keys are read as well)."""


def register(sub) -> None:
    """Add the `snn` sub-command tree to the top-level parser."""
    snn = sub.add_parser("snn", help="TSSL-BP spiking networks")
    actions = snn.add_subparsers(dest="action", required=True)
    train = add_train_command(
        actions,
        "train",
        method="snn",
        example="mnist_cnn",
        example_dir="runs/<run_name or model>-<time>",
        func=_train,
        help="train a recipe; writes a run folder",
        description="Train a TSSL-BP recipe into a new run folder, or continue one with --resume "
        "(without --config it continues with the run's stored recipe; only epochs may change, "
        "and grow, besides threads, device, backend, data_root and checkpoint_every).",
    )
    train.add_argument("--no-report", action="store_true", help="skip report.md and the plots")
    evaluate = actions.add_parser(
        "evaluate",
        help="test accuracy of a run's checkpoint",
        description="Test accuracy and loss of a run's checkpoint on the test subset the run "
        "used. --set may change: " + ", ".join(HONOURED["evaluate"]) + ".",
    )
    stats = actions.add_parser(
        "stats",
        help="firing rates and SynOps of a run's checkpoint",
        description="Firing rates and SynOps on the first --batches test batches. --set may "
        "change: " + ", ".join(HONOURED["stats"]) + " (and, without --run-dir, the "
        "architecture keys of the --config network).",
    )
    for p in (evaluate, stats):
        add_config_args(p, method="snn", example="mnist_cnn", required=False)
        p.add_argument(
            "--run-dir",
            default=None,
            help="run folder whose checkpoint.pt is loaded (its saved recipe unless --config); "
            "without it, the --config network as initialised",
        )
    stats.add_argument("--batches", type=int, default=10)
    evaluate.set_defaults(func=_evaluate)
    stats.set_defaults(func=_stats)
    bench = actions.add_parser(
        "bench", help="training-step speed vs an ANN with the same layers (the floor)"
    )
    bench.set_defaults(func=_bench)
    from efficientdl.snn.bench import add_arguments

    add_arguments(bench)
    export = actions.add_parser(
        "export",
        help="write a run's network as a NIR graph (for snnTorch, Norse, neuromorphic chips)",
        description="Write the trained network of --run-dir as a NIR file (docs/nir.md): "
        "Conv2d/Linear + CubaLIF nodes integrated with time step --dt by forward Euler.",
    )
    export.add_argument("--run-dir", required=True, help="run folder holding checkpoint.pt")
    export.add_argument("--out", required=True, help="the .nir file to write")
    export.add_argument(
        "--dt",
        type=float,
        default=1.0,
        help="time step the graph's time constants assume (default 1; snnTorch's importer "
        "assumes 1e-4)",
    )
    export.add_argument(
        "--fold-pool-scale",
        action="store_true",
        help="put the sum pooling's scale into the next neuron's w_in instead of a Scale node "
        "(snnTorch and Norse read no Scale node)",
    )
    export.set_defaults(func=_export)


def _train(args) -> int:
    from efficientdl.core.run import train_config
    from efficientdl.core.runtime import default_run_dir
    from efficientdl.snn.config import TSSLBPRecipe
    from efficientdl.snn.report import write_report
    from efficientdl.snn.train import fit

    recipe = train_config(TSSLBPRecipe, args, method="snn").validate()
    run_dir = args.run_dir or str(default_run_dir(recipe.out_dir, recipe.run_name or recipe.model))
    # Ctrl-C names the folder (main prints `... --run-dir DIR --resume`) once the run has begun
    # (or, on --resume, at once): before that, a new folder holds nothing to continue.
    args.run_dir = run_dir if args.resume else None

    def begun(path) -> None:
        args.run_dir = str(path)

    summary = fit(
        recipe,
        run_dir=run_dir,
        resume=args.resume,
        progress=getattr(args, "verbosity", "normal") != "quiet",
        tensorboard=args.tensorboard,
        on_begin=begun,
    )
    if not is_main_process():
        return 0
    if not args.no_report and summary.get("final_test_accuracy") is not None:
        write_report(summary["run_dir"])
    print(json.dumps(summary, indent=2))
    return 0


def _check_overrides(args, recipe, reference: dict) -> None:
    """Refuse (ConfigError) a `--set` that `args.action` cannot honour and that changes a value
    from `reference` (the run's stored recipe, or the `--config` file's values)."""
    from efficientdl.core.config import parse_override

    honoured = set(HONOURED[args.action])
    if args.run_dir is None:
        honoured |= set(ARCHITECTURE_KEYS)
        if args.action == "evaluate":
            honoured.add("seed")  # it picks the seeded test subset
    for text in args.overrides:
        key, _ = parse_override(text)
        top = key.split(".", 1)[0]
        if top in honoured or reference.get(top, object()) == getattr(recipe, top, None):
            continue  # read, or restating the value the command uses anyway
        if args.run_dir:
            source = "the trained network of --run-dir and the run's test subset"
        else:
            source = "the network of --config as initialised"
        raise ConfigError(
            f"snn {args.action} cannot honour --set {key}: it uses {source}, and reads only "
            f"{', '.join(sorted(honoured))} from --set"
        )


def _load_run(args):
    """(recipe, network, data) of `--run-dir`'s checkpoint and/or `--config`, with `--set`; a
    `--set` the command cannot honour is a ConfigError (before any data is read)."""
    from pathlib import Path

    from efficientdl.core import apply_overrides, from_dict, load_checkpoint, to_dict
    from efficientdl.snn.config import TSSLBPRecipe
    from efficientdl.snn.train import CHECKPOINT, load_run

    if args.run_dir is None and args.config is None:
        raise ConfigError("give --run-dir (a trained run) or --config (a recipe), or both")
    state = None
    if args.run_dir is not None:
        state = load_checkpoint(Path(args.run_dir) / CHECKPOINT)
        reference = state["recipe"]
    else:
        plain = argparse.Namespace(**{**vars(args), "overrides": []})
        reference = to_dict(config_from_args(TSSLBPRecipe, plain))
    if args.config is not None:
        recipe = config_from_args(TSSLBPRecipe, args)
    else:
        recipe = from_dict(TSSLBPRecipe, apply_overrides(reference, args.overrides))
    recipe.validate()
    _check_overrides(args, recipe, reference)
    loaded = load_run(args.run_dir, recipe=recipe, state=state)
    if loaded[0].threads:
        import torch

        torch.set_num_threads(loaded[0].threads)
    return loaded


def _evaluate(args) -> int:
    from efficientdl.core import select_device
    from efficientdl.snn.train import eval_indices, evaluate

    recipe, net, (_, test_set) = _load_run(args)
    device = select_device(recipe.device)
    indices = eval_indices(recipe, test_set)
    progress = getattr(args, "verbosity", "normal") != "quiet"
    result = evaluate(
        net.to(device), test_set, recipe, device=device, indices=indices, progress=progress
    )
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


def _export(args) -> int:
    from efficientdl.core.registry import get
    from efficientdl.snn.nir_io import export_nir, require_nir
    from efficientdl.snn.train import load_network

    nir = require_nir()
    recipe, net = load_network(args.run_dir)
    shape = get("snn", recipe.model).input_shape
    graph = export_nir(net, shape, dt=args.dt, fold_pool_scale=args.fold_pool_scale)
    try:
        nir.write(args.out, graph)
    except OSError as err:
        raise UserError(f"cannot write --out {args.out}: {err.strerror or err}") from None
    print(json.dumps({"model": recipe.model, "out": str(args.out), "nodes": len(graph.nodes)}))
    return 0
