"""`efficientdl adashare pipeline|warmup|search|sample|retrain|select|evaluate|baseline|visualize`.

Every phase that trains or writes results is a train command of the run protocol
(`efficientdl.core.run`): into a folder that already holds a run it needs `--resume`, so the
phases one by one in one folder are `adashare warmup --run-dir R`, then
`adashare search --run-dir R --resume`, and so on. The config comes from `--config` (a packaged
recipe name or a YAML file), else, with `--resume`, from the run folder's `config.json`, else the
built-in procedural demo; `--set key=value` overrides any field (dotted keys for the groups, e.g.
`--set train.total_iters=500`). `evaluate` and `visualize` only read an existing run.
"""

from __future__ import annotations

import json
from pathlib import Path

from efficientdl.core.config import add_config_args
from efficientdl.core.errors import ConfigError, RunFolderError
from efficientdl.core.run import add_run_args

ACTIONS = {
    "pipeline": "everything: baselines, search, sampling, re-training, selection, results",
    "warmup": "hard-sharing warm-up",
    "search": "policy search (runs the warm-up first if needed)",
    "sample": "draw the final policies from the searched logits",
    "retrain": "re-train sampled policies from scratch",
    "select": "pick the sample by validation score and test it",
    "evaluate": "metrics of the selected model on a split (reads a run)",
    "baseline": "train and test one baseline or ablation",
    "visualize": "draw policy pictures of a run (reads a run)",
}
READ_ONLY = ("evaluate", "visualize")


def register(sub) -> None:
    """Add the `adashare` sub-command tree to the top-level parser."""
    ada = sub.add_parser("adashare", help="AdaShare multi-task policies")
    actions = ada.add_subparsers(dest="action", required=True)
    for name, text in ACTIONS.items():
        p = actions.add_parser(name, help=text)
        if name != "visualize":
            add_config_args(
                p, method="adashare", example="adashare/procedural_3task", required=False
            )
        if name in READ_ONLY:
            p.add_argument("--run-dir", default=None, help="the folder of an AdaShare run")
        else:
            add_run_args(p, example_dir="runs/adashare/NAME-DATE-TIME")
        if name == "retrain":
            p.add_argument("--sample", type=int, default=None, help="only this sample index")
        if name == "evaluate":
            p.add_argument("--split", choices=("val", "test"), default="test")
        if name == "baseline":
            p.add_argument(
                "--name",
                required=True,
                help="single_task, multi_task, random_policy, stochastic_depth, cross_stitch, "
                "sluice, nddr_cnn, mtan, no_sparsity, no_sharing, no_curriculum, reinforce",
            )
        p.set_defaults(func=_run)
    bench = actions.add_parser(
        "bench", help="training-step and inference speed vs exec_mode='official'"
    )
    from efficientdl.adashare.bench import add_arguments

    add_arguments(bench)
    bench.set_defaults(func=_bench)


def _bench(args) -> int:
    from efficientdl.adashare.bench import run

    run(args)
    return 0


def existing_run(args) -> dict:
    """The stored record of the AdaShare run that `evaluate`/`visualize` read (RunFolderError
    when `--run-dir` is missing or holds no AdaShare run)."""
    from efficientdl.core.run import stored_run

    what = "the policies/ pictures" if args.action == "visualize" else "the selected model"
    if args.run_dir is None:
        raise RunFolderError(
            f"{args.action} needs --run-dir: the AdaShare run whose {what} it reads"
        )
    path = Path(args.run_dir)
    if not path.is_dir():
        raise RunFolderError(
            f"--run-dir {path} is not a run folder; {args.action} reads {what} of an existing run"
        )
    record = stored_run(path)
    if record is None:
        raise RunFolderError(
            f"{path} holds no AdaShare run (no config.json); {args.action} reads {what} of a run"
        )
    if record["method"] != "adashare":
        raise RunFolderError(f"{path} holds a {record['method']} run, not an AdaShare run")
    return record


def _visualize(args) -> int:
    from efficientdl.adashare.model import Policy
    from efficientdl.adashare.reporting.viz import plot_policy

    existing_run(args)
    paths = sorted((Path(args.run_dir) / "policies").glob("policy_*.json"))
    if not paths:
        raise RunFolderError(
            f"no policies/policy_*.json in {args.run_dir}: run `efficientdl adashare sample "
            f"--run-dir {args.run_dir} --resume` first"
        )
    for path in paths:
        print(plot_policy(Policy.from_json(path), path.with_suffix(".png"), title=path.stem))
    return 0


def _evaluate(args) -> int:
    from efficientdl.adashare.config import AdaShareConfig
    from efficientdl.adashare.phases.context import FREE, open_context
    from efficientdl.adashare.phases.select import evaluate
    from efficientdl.core.config import config_from_args, to_dict
    from efficientdl.core.run import config_differences

    record = existing_run(args)
    cfg = config_from_args(AdaShareConfig, args, stored=record["config"]).validate()
    problems = config_differences(record["config"], to_dict(cfg), free=FREE)
    if problems:
        raise ConfigError(
            f"evaluate reads the run in {args.run_dir} with its stored config: {problems[0]}"
        )
    ctx = open_context(cfg, run_dir=args.run_dir)
    out = evaluate(ctx, args.split)
    if ctx.dist.is_main:
        print(f"run folder: {ctx.run_dir}")
        print(json.dumps(out, indent=1, default=str)[:20000])
    return 0


def _run(args) -> int:
    if args.action == "visualize":
        return _visualize(args)
    if args.action == "evaluate":
        return _evaluate(args)
    from efficientdl.adashare.config import ABLATIONS, BASELINES, AdaShareConfig, demo_config
    from efficientdl.adashare.phases.context import open_context
    from efficientdl.core.run import train_config

    if args.action == "baseline" and args.name not in (*BASELINES, *ABLATIONS):
        raise ConfigError(
            f"--name {args.name}: unknown baseline; expected one of {[*BASELINES, *ABLATIONS]}"
        )
    cfg = train_config(AdaShareConfig, args, method="adashare", default=demo_config()).validate()
    num = cfg.sample.num
    if args.action == "retrain" and args.sample is not None and not 0 <= args.sample < num:
        raise ConfigError(f"--sample must be in 0..{num - 1} (sample.num={num}), got {args.sample}")
    try:
        ctx = open_context(
            cfg, run_dir=args.run_dir, resume=args.resume, tensorboard=args.tensorboard
        )
    except BaseException:
        args.resumable = args.resume  # a fresh start that failed here left nothing to resume
        raise
    args.run_dir = str(ctx.run_dir)  # the default folder too: Ctrl-C names it
    main = ctx.dist.is_main
    if main:
        print(f"run folder: {ctx.run_dir}", flush=True)
    try:
        out = _phase(ctx, args)
    except BaseException:
        if not ctx.run.started and not ctx.run.resume:
            args.resumable = False  # nothing to resume: the run never reached its first step
            ctx.run.abandon()
        raise
    finally:
        ctx.close()
    if args.action != "pipeline":
        ctx.write_summary(args.action, out)
    if main:
        print(json.dumps(out, indent=1, default=str)[:20000])
    return 0


def _phase(ctx, args):
    """Run the phase `args.action` of a train command; its JSON-ready result."""
    from efficientdl.adashare.phases import phase, pipeline, run_baseline
    from efficientdl.adashare.phases.phase import SAMPLE
    from efficientdl.adashare.phases.retrain import retrain

    if args.action == "retrain" and args.sample is not None:
        return retrain(ctx, SAMPLE.run(ctx)[args.sample], args.sample)
    if args.action == "sample":
        return [p.to_dict() for p in SAMPLE.run(ctx)]
    if args.action == "baseline":
        return run_baseline(ctx, args.name)
    if args.action == "pipeline":
        return pipeline(ctx)
    return phase(args.action).run(ctx)
