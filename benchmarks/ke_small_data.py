"""Small-data Knowledge Evolution benchmark: KE vs N1, a compute-matched long run and
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

from efficientdl.core.run import stored_run
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
    """Every missing run: KE and long for every cell first, then the restarts control, writing the
    aggregated JSON and Markdown after each run so that a partial sweep still yields rows."""
    cells = [(d, p, s) for d in args.datasets for p in args.per_class for s in args.seeds]
    phases = [
        [a for a in ("ke", "long") if a in args.arms],
        ["restarts"] * ("restarts" in args.arms),
    ]
    order = [(arm, cell) for phase in phases for cell in cells for arm in phase]
    for i, (arm, (dataset, per_class, seed)) in enumerate(order):
        run_dir = Path(args.root) / dataset / f"pc{per_class}" / f"s{seed}" / arm
        if (run_dir / "summary.json").exists():
            continue
        t0 = time.time()
        summary = run_experiment(
            config(args, dataset, per_class, seed, arm),
            run_dir=run_dir,
            resume=stored_run(run_dir) is not None,  # continue a started run, else start it
        )
        acc = summary["accuracy"]["dense"][-1]
        print(f"[{i + 1}/{len(order)}] {arm} {dataset} {per_class}/class seed {seed}: "
              f"{100 * acc:.2f} % ({time.time() - t0:.0f} s)", flush=True)  # fmt: skip
        write_outputs(args)


def write_outputs(args) -> dict:
    """Aggregate the finished runs into `args.out` (JSON) and its .md twin; returns the result."""
    result = aggregate(args)
    Path(args.out).write_text(json.dumps(result, indent=2))
    Path(args.out).with_suffix(".md").write_text(markdown(result) + "\n")
    return result


def _stats(values: list[float]) -> dict:
    mean = statistics.fmean(values)
    std = statistics.stdev(values) if len(values) > 1 else float("nan")
    return {"mean": mean, "std": std, "n": len(values), "values": values}


PICK = {
    "N1": ("ke", lambda s: s["accuracy"]["dense"][0]),
    "KE dense": ("ke", lambda s: s["accuracy"]["dense"][-1]),
    "KE slim": ("ke", lambda s: s["accuracy"]["fit"][-1]),
    "long": ("long", lambda s: s["accuracy"]["dense"][-1]),
    "restarts": ("restarts", lambda s: s["accuracy"]["dense"][-1]),
}


def _summaries(args, dataset: str, per_class: int) -> dict[int, dict[str, dict]]:
    out = {}
    for seed in args.seeds:
        base = Path(args.root) / dataset / f"pc{per_class}" / f"s{seed}"
        found = {a: base / a / "summary.json" for a in ARMS}
        out[seed] = {a: json.loads(p.read_text()) for a, p in found.items() if p.exists()}
    return out


def aggregate(args) -> dict:
    """Mean ± sample std over the seeds that finished each arm, plus paired (same seed, same subset,
    same init) differences KE dense − baseline over the seeds that finished both."""
    rows = []
    for dataset in args.datasets:
        for per_class in args.per_class:
            runs = _summaries(args, dataset, per_class)
            value = {
                k: {s: 100 * f(r[arm]) for s, r in runs.items() if arm in r}
                for k, (arm, f) in PICK.items()
            }
            if not value["KE dense"]:
                continue
            arms = {k: _stats(list(v.values())) for k, v in value.items() if v}
            paired = {}
            for b in ("long", "restarts", "N1"):
                seeds = [s for s in value[b] if s in value["KE dense"]]
                if seeds:
                    paired[f"KE - {b}"] = _stats(
                        [value["KE dense"][s] - value[b][s] for s in seeds]
                    )
            ke = [r["ke"] for r in runs.values() if "ke" in r]
            rows.append({
                "dataset": dataset,
                "per_class": per_class,
                "seeds": {k: sorted(v) for k, v in value.items()},
                "generations": ke[0]["generations"],
                "epochs_per_generation": ke[0]["epochs_per_generation"],
                "params": ke[0]["params"],
                "curves": {
                    net: [statistics.fmean(100 * s["accuracy"][net][g] for s in ke)
                          for g in range(ke[0]["generations"])]
                    for net in ("dense", "fit", "reset")
                },
                "wall_seconds": {a: sum(r[a]["wall_seconds_this_session"]
                                        for r in runs.values() if a in r) for a in ARMS},
                "arms": arms,
                "paired": paired,
            })  # fmt: skip
    return {"setting": vars(args), "rows": rows}


def markdown(result: dict) -> str:
    """The results table: mean ± sample std (n seeds) per arm and the paired differences."""

    def ms(stats: dict | None) -> str:
        if stats is None:
            return "–"
        std = "" if stats["n"] < 2 else f" ± {stats['std']:.2f}"
        return f"{stats['mean']:.2f}{std} (n={stats['n']})"

    g = result["rows"][0]["generations"] if result["rows"] else "G"
    lines = [
        f"| dataset | img/class | E | N1 | KE N{g} dense | KE N{g} slim | long ({g}E) | restarts "
        "| KE − long | KE − restarts |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in result["rows"]:
        a, p = r["arms"], r["paired"]
        lines.append(
            f"| {r['dataset']} | {r['per_class']} | {r['epochs_per_generation']} "
            f"| {ms(a.get('N1'))} | {ms(a.get('KE dense'))} | {ms(a.get('KE slim'))} "
            f"| {ms(a.get('long'))} | {ms(a.get('restarts'))} "
            f"| {ms(p.get('KE - long'))} | {ms(p.get('KE - restarts'))} |"
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
    parser.add_argument("--generations", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", default="benchmarks/ke_small_data.json")
    parser.add_argument("--aggregate-only", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if not args.aggregate_only:
        run_all(args)
    print(markdown(write_outputs(args)))


if __name__ == "__main__":
    main()
