"""Accuracy of long TSSL-BP runs, finished or still running.

    python benchmarks/snn_accuracy.py RUN_DIR [RUN_DIR ...] [--out-dir benchmarks]

For each run folder (written by `efficientdl snn train`): prints a Markdown row (recipe, dataset,
seed, epochs done, final-epoch and best test accuracy, wall time) and writes the accuracy curve
`<out-dir>/snn_accuracy_<recipe>_seed<seed>.png`; then, per recipe and dataset, the mean ± sample
std over the seeds of the final-epoch and best accuracy; and `<out-dir>/snn_accuracy.json`.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

from efficientdl.snn.report import plot_accuracy


def recipe_label(config: dict) -> str:
    """The network plus the algorithm when it is not the default: mnist_cnn, mnist_cnn_paper2020
    (the names of the packaged recipes these runs come from)."""
    algorithm = config.get("algorithm", "tsslbp")
    return config["model"] if algorithm == "tsslbp" else f"{config['model']}_{algorithm}"


def summarise(run_dir: Path) -> dict:
    """Epochs done, final and best test accuracy and wall time of one run folder."""
    config = json.loads((run_dir / "config.json").read_text())
    config = config.get("config", config)  # {"method", "version", "config"}; older runs: flat
    history = json.loads((run_dir / "metrics.json").read_text())
    if not history:
        raise ValueError(f"{run_dir}: no finished epoch in metrics.json yet")
    test = [r["test_accuracy"] for r in history]
    return {
        "run_dir": str(run_dir),
        "model": config["model"],
        "recipe": recipe_label(config),
        "dataset": config["dataset"],
        "seed": config["seed"],
        "epochs_done": history[-1]["epoch"],
        "epochs_planned": config["epochs"],
        "final_test_accuracy": test[-1],
        "best_test_accuracy": max(test),
        "best_epoch": history[test.index(max(test))]["epoch"],
        "wall_hours": sum(r["epoch_seconds"] for r in history) / 3600,
        "history": history,
    }


def _by_recipe(rows: list[dict]) -> dict[tuple[str, str], list[dict]]:
    """The rows grouped by (recipe, dataset), in first-seen order."""
    groups: dict[tuple[str, str], list[dict]] = {}
    for r in rows:
        groups.setdefault((r["recipe"], r["dataset"]), []).append(r)
    return groups


def _mean_std(values: list[float]) -> str:
    """'mean ± sample std' of `values` (the std needs two or more)."""
    if len(values) < 2:
        return f"{values[0]:.2f}"
    return f"{statistics.mean(values):.2f} ± {statistics.stdev(values):.2f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dirs", nargs="+", type=Path)
    parser.add_argument("--out-dir", type=Path, default=Path("benchmarks"))
    args = parser.parse_args()
    rows = [summarise(d) for d in args.run_dirs]
    args.out_dir.mkdir(parents=True, exist_ok=True)
    print(
        "| recipe | dataset | seed | epochs | final-epoch test % | best test % (epoch) "
        "| wall time | curve |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        png = args.out_dir / f"snn_accuracy_{r['recipe']}_seed{r['seed']}.png"
        plot_accuracy(r["history"], png, title=f"{r['recipe']} on {r['dataset']}, seed {r['seed']}")
        print(
            f"| {r['recipe']} | {r['dataset']} | {r['seed']} | "
            f"{r['epochs_done']} of {r['epochs_planned']} | "
            f"{100 * r['final_test_accuracy']:.2f} | {100 * r['best_test_accuracy']:.2f} "
            f"({r['best_epoch']}) | {r['wall_hours']:.2f} h | {png.name} |"
        )
    print("\n| recipe | dataset | seeds | epochs | final-epoch test % | best test % |")
    print("|---|---|---|---|---|---|")
    for (recipe, dataset), group in _by_recipe(rows).items():
        final = [100 * r["final_test_accuracy"] for r in group]
        best = [100 * r["best_test_accuracy"] for r in group]
        epochs = sorted({r["epochs_done"] for r in group})
        print(
            f"| {recipe} | {dataset} | {len(group)} | {', '.join(map(str, epochs))} | "
            f"{_mean_std(final)} | {_mean_std(best)} |"
        )
    out = args.out_dir / "snn_accuracy.json"
    out.write_text(json.dumps(rows, indent=2))
    print(f"\nwrote {out}")


if __name__ == "__main__":
    main()
