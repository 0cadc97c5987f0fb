"""`efficientdl adashare pipeline|warmup|search|sample|retrain|select|evaluate|baseline|visualize`.

The config comes from `--config`, else from the run folder's saved `config.yaml` (so a killed run
continues with `--run-dir DIR` alone), else the built-in procedural demo; `--set key=value`
overrides any field (dotted keys for the groups, e.g. `--set train.total_iters=500`).
"""

from __future__ import annotations

import json
from pathlib import Path

from efficientdl.core.config import add_config_args

ACTIONS = {
    "pipeline": "everything: baselines, search, sampling, re-training, selection, results",
    "warmup": "hard-sharing warm-up",
    "search": "policy search (runs the warm-up first if needed)",
    "sample": "draw the final policies from the searched logits",
    "retrain": "re-train sampled policies from scratch",
    "select": "pick the sample by validation score and test it",
    "evaluate": "metrics of the selected model on a split",
    "baseline": "train and test one baseline or ablation",
    "visualize": "draw policy pictures of a run",
}


def register(sub) -> None:
    """Add the `adashare` sub-command tree to the top-level parser."""
    ada = sub.add_parser("adashare", help="AdaShare multi-task policies")
    actions = ada.add_subparsers(dest="action", required=True)
    for name, text in ACTIONS.items():
        p = actions.add_parser(name, help=text)
        add_config_args(p, example="configs/adashare/procedural_3task.yaml", required=False)
        p.add_argument("--run-dir", default=None, help="run folder (continued when it exists)")
        if name == "retrain":
            p.add_argument("--sample", type=int, default=None, help="only this sample index")
        if name == "evaluate":
            p.add_argument("--split", choices=("val", "test"), default="test")
        if name == "baseline":
            p.add_argument(
                "--name",
                required=True,
                help="single_task, multi_task, random_policy, "
                "stochastic_depth, no_sparsity, no_sharing, no_curriculum, reinforce",
            )
        p.set_defaults(func=_run)
    bench = actions.add_parser(
        "bench", help="training-step and inference speed vs exec_mode='official' (issue 6)"
    )
    from efficientdl.adashare.bench import add_arguments

    add_arguments(bench)
    bench.set_defaults(func=_bench)


def _bench(args) -> int:
    from efficientdl.adashare.bench import run

    run(args)
    return 0


def load(config_path, overrides, run_dir):
    """The AdaShareConfig of a command (see the module docstring for the precedence)."""
    from efficientdl.adashare.config import DEMO, AdaShareConfig
    from efficientdl.core.config import apply_overrides, from_dict, load_config

    if config_path is not None:
        return load_config(AdaShareConfig, config_path, overrides).validate()
    saved = Path(run_dir) / "config.yaml" if run_dir else None
    if saved is not None and saved.is_file():
        return load_config(AdaShareConfig, saved, overrides).validate()
    return from_dict(AdaShareConfig, apply_overrides(DEMO, overrides)).validate()


def _run(args) -> int:
    from efficientdl.adashare.policy import Policy
    from efficientdl.adashare.trainer import AdaShareTrainer
    from efficientdl.adashare.viz import plot_policy

    if args.action == "visualize":
        if args.run_dir is None:
            raise ValueError("visualize needs --run-dir (a folder with policies/)")
        paths = sorted((Path(args.run_dir) / "policies").glob("policy_*.json"))
        if not paths:
            raise FileNotFoundError(f"no policies/policy_*.json in {args.run_dir}")
        for path in paths:
            print(plot_policy(Policy.from_json(path), path.with_suffix(".png"), title=path.stem))
        return 0
    trainer = AdaShareTrainer(load(args.config, args.overrides, args.run_dir), run_dir=args.run_dir)
    print(f"run folder: {trainer.run_dir}")
    if args.action == "retrain" and args.sample is not None:
        policies = trainer.sample()
        if not 0 <= args.sample < len(policies):
            raise ValueError(f"--sample must be in 0..{len(policies) - 1}, got {args.sample}")
        out = trainer.retrain(policies[args.sample], args.sample)
    elif args.action == "retrain":
        out = trainer.retrain_all()
    elif args.action == "sample":
        out = [p.to_dict() for p in trainer.sample()]
    elif args.action == "evaluate":
        out = trainer.evaluate(args.split)
    elif args.action == "baseline":
        out = trainer.run_baseline(args.name)
    else:
        out = getattr(trainer, args.action)()
    print(json.dumps(out, indent=1, default=str)[:20000])
    return 0
