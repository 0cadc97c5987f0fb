"""The results of an AdaShare run: results.json/.csv/.md and report.md over AdaShare and every
finished baseline, with mean ± std, parameter and FLOP summaries."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np

from efficientdl.adashare.folders import ADASHARE_RESULT, read_result, write_json
from efficientdl.adashare.model.counting import flops, param_counts
from efficientdl.adashare.objectives.metrics import delta_t
from efficientdl.core.log import get_logger

log = get_logger("adashare")
RUN_METRICS = ("delta_t", "params", "backbone_units", "gflops_shared", "gflops_per_task_sum")


def mean_std(values) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for a single value)."""
    arr = np.asarray(list(values), dtype=np.float64)
    return float(arr.mean()), float(arr.std(ddof=1)) if len(arr) > 1 else 0.0


def metrics_mean_std(runs: list[dict]) -> tuple[dict, dict]:
    """Per task and metric mean and std over a list of {task: {metric: value}}."""
    mean, std = {}, {}
    for task, metrics in runs[0].items():
        mean[task], std[task] = {}, {}
        for m in metrics:
            mean[task][m], std[task][m] = mean_std(r[task][m] for r in runs)
    return mean, std


def cost_summary(model, image_size, policy=None) -> dict:
    """Parameters and FLOPs per image of `model` under `policy` (None: hard sharing)."""
    return {"params": param_counts(model, policy), "flops": flops(model, *image_size, policy)}


def image_size(splits: dict) -> tuple[int, int]:
    """(h, w) of the evaluation images."""
    return tuple(splits["val"][0]["image"].shape[-2:])


def collect_runs(ctx) -> dict:
    """{name: result} of AdaShare and every finished baseline in the run folder."""
    runs = {}
    path = ctx.run_dir / ADASHARE_RESULT
    if path.is_file():
        runs["adashare"] = json.loads(path.read_text())
    base = ctx.run_dir / "baselines"
    if base.is_dir():
        for folder in sorted(base.iterdir()):
            done = read_result(folder)
            if done is not None and "test" in done:
                runs[folder.name] = done
    return runs


def write_results(ctx) -> dict:
    """results.json / results.csv / results.md: test metrics, Δ_T vs single-task, params, FLOPs."""
    runs = collect_runs(ctx)
    single = runs.get("single_task")
    hib = ctx.spec.higher_is_better
    table = {}
    for name, r in runs.items():
        dt, note = None, None
        if single:
            try:
                dt = delta_t(r["test"], single["test"], hib)
            except ValueError as err:  # a single-task metric of 0 (tiny runs)
                note = str(err)
        table[name] = {
            "delta_t_note": note,
            "test": r["test"],
            "delta_t": None if dt is None else dt["delta_t"],
            "delta_t_per_task": None if dt is None else dt["per_task"],
            "params": r["params"]["total"],
            "backbone_units": r["params"]["backbone_units"],
            "gflops_shared": r["flops"]["flops_shared"] / 1e9,
            "gflops_per_task_sum": r["flops"]["flops_per_task_sum"] / 1e9,
        }
    data = {"image_size": list(image_size(ctx.splits)), "runs": table}
    write_json(ctx.run_dir / "results.json", data)
    write_csv(ctx.run_dir / "results.csv", table)
    (ctx.run_dir / "results.md").write_text(markdown_table(table, hib))
    write_report(ctx, runs, table)
    return data


def write_csv(path: Path, table: dict) -> None:
    """results.csv, one `run, task, metric, value` row per test metric, then the run-level
    `RUN_METRICS` (Δ_T, params, backbone units, GFLOPs) with an empty task."""
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["run", "task", "metric", "value"])
        for name, row in table.items():
            for task, metrics in row["test"].items():
                for metric, value in metrics.items():
                    writer.writerow([name, task, metric, value])
            for key in RUN_METRICS:
                writer.writerow([name, "", key, row[key]])


def write_report(ctx, runs: dict, table: dict) -> None:
    """report.md: the metrics table, Δ_T against single-task, and the policy pictures."""
    cfg = ctx.cfg
    lines = [
        f"# AdaShare — {cfg.name}",
        "",
        f"Dataset `{cfg.data.dataset}` (tasks {', '.join(ctx.spec.tasks)}), "
        f"{cfg.model.backbone} (width {cfg.model.width}), {cfg.model.head} heads; test split, "
        "AdaShare = the re-trained sample with the best validation Δ_T.",
        "",
        markdown_table(table, ctx.spec.higher_is_better),
        *metric_notes(ctx.spec.higher_is_better),
        *delta_lines(runs, table, ctx.spec.higher_is_better),
    ]
    ada = runs.get("adashare")
    if ada is not None:
        scores = ", ".join(f"{s:+.2f}" for s in ada["val_scores"])
        lines += [
            f"Selected sample {ada['selected']} (validation Δ_T of the samples: {scores}); "
            f"executed blocks per task: {ada['num_executed']}.",
            "",
            "![policy](policy.png)",
            "",
            "![execution probabilities](policy_probs.png)",
            "",
        ]
    (ctx.run_dir / "report.md").write_text("\n".join(lines))


def metric_notes(higher_is_better: dict) -> list[str]:
    """Report sentences naming the conventions of the table's metrics (normal angles)."""
    if not any(m.startswith("official_") for ms in higher_is_better.values() for m in ms):
        return []
    return [
        "Normal metrics `official_*` are the angles as the official code measures them (between "
        "the raw 8-bit encodings (n + 1)/2 of the normals; the paper's numbers, and what Δ_T "
        "counts); the same names without the prefix, in results.json and results.csv, are the "
        "true angles between the unit normals.",
        "",
    ]


def delta_lines(runs: dict, table: dict, higher_is_better: dict) -> list[str]:
    """Report sentences: Δ_T of every run against single-task, and AdaShare against hard sharing."""
    lines = []
    against_single = [
        f"{n} {r['delta_t']:+.2f}%" for n, r in table.items() if r["delta_t"] is not None
    ]
    if against_single:
        lines += [f"Δ_T against the single-task baseline: {', '.join(against_single)}.", ""]
    if "adashare" in runs and "multi_task" in runs:
        try:
            dt = delta_t(runs["adashare"]["test"], runs["multi_task"]["test"], higher_is_better)
            lines += [f"Δ_T of AdaShare against hard sharing: {dt['delta_t']:+.2f}%.", ""]
        except ValueError as err:  # a hard-sharing metric of 0 (tiny runs)
            lines += [f"Δ_T of AdaShare against hard sharing: undefined ({err}).", ""]
    return lines


def markdown_table(table: dict, higher_is_better: dict) -> str:
    """One row per run: every Δ_T metric of every task, Δ_T, parameters and GFLOPs."""
    cols = [(t, m) for t, ms in higher_is_better.items() for m in ms]
    arrows = {True: "↑", False: "↓"}
    head = [
        "run",
        *(f"{t} {m} {arrows[higher_is_better[t][m]]}" for t, m in cols),
        "Δ_T % ↑",
        "params (M)",
        "GFLOPs",
    ]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, row in table.items():
        cells = [name, *(f"{row['test'][t][m]:.4g}" for t, m in cols)]
        cells.append("—" if row["delta_t"] is None else f"{row['delta_t']:+.2f}")
        cells += [f"{row['params'] / 1e6:.2f}", f"{row['gflops_shared']:.3g}"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"
