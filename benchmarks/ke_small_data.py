"""Small-data Knowledge Evolution benchmark (spec §5.3): KE vs N1, a compute-matched long run and
a restarts-only control, paired per seed, on offline data.

    python benchmarks/ke_small_data.py                      # run (resumable) + aggregate
    python benchmarks/ke_small_data.py --aggregate-only     # tables from finished runs

Each (dataset, images per class, seed) draws one fixed training subset and one generation-1
init, shared by every arm:
  N1        generation 1 of the KE run (one generation of E epochs);
  KE        G generations of E epochs (KELS, sr 0.5, default re-init), dense and slim (fit) net;
  long      one run of G·E epochs with a single warm-up + cosine (compute-matched baseline);
  restarts  G × E epochs with LR restarts and a fresh optimizer but no re-init (split rate 1).
Every number is the last-epoch network's accuracy on the full official test set (digits: the
held-out third). Runs are checkpointed; re-running the command resumes.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

from efficientdl.knowledge_evolution import KEConfig, run_experiment

ARMS = ("ke", "long", "restarts")


def config(args, dataset: str, per_class: int, seed: int, arm: str) -> KEConfig:
    return KEConfig(
        name=f"{dataset}-{per_class}pc-s{seed}-{arm}",
        recipe="small",
        arm=arm,
        dataset=dataset,
        per_class=per_class,
        model="small_cnn",
        width=args.width,
        generations=args.generations,
        steps_per_generation=args.steps,
        seed=seed,
        threads=args.threads,
        progress=False,
        checkpoint_seconds=60.0,
    )


def run_all(args) -> None:
    cells = [(d, p, s) for d in args.datasets for p in args.per_class for s in args.seeds]
    for i, (dataset, per_class, seed) in enumerate(cells):
        for arm in args.arms:
            run_dir = Path(args.root) / dataset / f"pc{per_class}" / f"s{seed}" / arm
            if (run_dir / "summary.json").exists():
                continue
            t0 = time.time()
            summary = run_experiment(config(args, dataset, per_class, seed, arm), run_dir=run_dir)
            acc = summary["accuracy"]["dense"][-1]
            print(f"[{i + 1}/{len(cells)}] {dataset} {per_class}/class seed {seed} {arm}: "
                  f"{100 * acc:.2f} % ({time.time() - t0:.0f} s)", flush=True)  # fmt: skip


def _stats(values: list[float]) -> dict:
    mean = statistics.fmean(values)
    std = statistics.stdev(values) if len(values) > 1 else float("nan")
    return {"mean": mean, "std": std, "n": len(values), "values": values}


def aggregate(args) -> dict:
    """Mean ± sample std over seeds of every arm, plus paired differences KE − baselines."""
    rows = []
    for dataset in args.datasets:
        for per_class in args.per_class:
            runs = {}
            for seed in args.seeds:
                base = Path(args.root) / dataset / f"pc{per_class}" / f"s{seed}"
                found = {a: base / a / "summary.json" for a in ARMS}
                if all(p.exists() for p in found.values()):
                    runs[seed] = {a: json.loads(p.read_text()) for a, p in found.items()}
            if not runs:
                continue
            pick = {
                "N1": lambda r: r["ke"]["accuracy"]["dense"][0],
                "KE dense": lambda r: r["ke"]["accuracy"]["dense"][-1],
                "KE slim": lambda r: r["ke"]["accuracy"]["fit"][-1],
                "long": lambda r: r["long"]["accuracy"]["dense"][-1],
                "restarts": lambda r: r["restarts"]["accuracy"]["dense"][-1],
            }
            arms = {k: _stats([100 * f(r) for r in runs.values()]) for k, f in pick.items()}
            diffs = {
                f"KE - {b}": _stats(
                    [100 * (pick["KE dense"](r) - pick[b](r)) for r in runs.values()]
                )
                for b in ("long", "restarts", "N1")
            }
            any_run = next(iter(runs.values()))
            rows.append({
                "dataset": dataset,
                "per_class": per_class,
                "seeds": sorted(runs),
                "generations": any_run["ke"]["generations"],
                "epochs_per_generation": any_run["ke"]["epochs_per_generation"],
                "params": any_run["ke"]["params"],
                "fit_curve": [
                    statistics.fmean(100 * r["ke"]["accuracy"]["fit"][g] for r in runs.values())
                    for g in range(any_run["ke"]["generations"])
                ],
                "arms": arms,
                "paired": diffs,
            })  # fmt: skip
    return {"setting": vars(args), "rows": rows}


def markdown(result: dict) -> str:
    def ms(s):
        return f"{s['mean']:.2f} ± {s['std']:.2f}"

    g = result["rows"][0]["generations"] if result["rows"] else "G"
    lines = [
        f"| dataset | img/class | E | N1 | KE N{g} dense | KE N{g} slim | long ({g}E) | restarts "
        "| KE − long | KE − restarts |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in result["rows"]:
        a, p = r["arms"], r["paired"]
        lines.append(
            f"| {r['dataset']} | {r['per_class']} | {r['epochs_per_generation']} | {ms(a['N1'])} "
            f"| {ms(a['KE dense'])} | {ms(a['KE slim'])} | {ms(a['long'])} | {ms(a['restarts'])} "
            f"| {ms(p['KE - long'])} | {ms(p['KE - restarts'])} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--root", default="runs/ke_small_data")
    parser.add_argument("--datasets", nargs="+", default=["digits", "mnist", "fashion-mnist"])
    parser.add_argument("--per-class", nargs="+", type=int, default=[10, 25, 100])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--arms", nargs="+", default=list(ARMS), choices=ARMS)
    parser.add_argument("--width", type=int, default=16)
    parser.add_argument("--steps", type=int, default=250, help="SGD steps per generation")
    parser.add_argument("--generations", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", default="benchmarks/ke_small_data.json")
    parser.add_argument("--aggregate-only", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if not args.aggregate_only:
        run_all(args)
    result = aggregate(args)
    Path(args.out).write_text(json.dumps(result, indent=2))
    print(markdown(result))


if __name__ == "__main__":
    main()
