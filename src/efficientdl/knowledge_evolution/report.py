"""History files and the paper's figure: accuracy of dense, fit and reset nets per generation."""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path
from typing import Any

from matplotlib.figure import Figure

NETS = ("dense", "fit", "reset")


def flatten(record: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """{'dense': {'accuracy': 0.9}} → {'dense.accuracy': 0.9} (for CSV)."""
    out: dict[str, Any] = {}
    for key, value in record.items():
        if isinstance(value, dict):
            out.update(flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def _atomic_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)


def write_history(run_dir: str | Path, history: list[dict[str, Any]]) -> None:
    """history.json (nested) and history.csv (dotted columns), each written atomically."""
    run_dir = Path(run_dir)
    _atomic_text(run_dir / "history.json", json.dumps(history, indent=2))
    rows = [flatten(r) for r in history]
    keys: list[str] = []
    for row in rows:
        keys += [k for k in row if k not in keys]
    tmp = run_dir / ".history.csv.tmp"
    with open(tmp, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=keys)
        writer.writeheader()
        writer.writerows(rows)
    os.replace(tmp, run_dir / "history.csv")


def plot_generations(
    history: list[dict[str, Any]], path: str | Path, *, metric: str = "accuracy", title: str = ""
) -> Path:
    """Metric of the dense, fit (slim) and reset nets against generation (numbered from 1)."""
    path = Path(path)
    fig = Figure(figsize=(5, 3.5))
    ax = fig.add_subplot()
    styles = {"dense": "o-", "fit": "s-", "reset": "^--"}
    labels = {"dense": "dense", "fit": "fit hypothesis (slim)", "reset": "reset hypothesis"}
    for net in NETS:
        points = [(r["generation"], r[net][metric]) for r in history if metric in r.get(net, {})]
        if points:
            gens, values = zip(*points)
            ax.plot(gens, [100 * v for v in values], styles[net], label=labels[net])
    ax.set_xlabel("generation")
    ax.set_ylabel(f"test {metric} (%)")
    ax.set_xticks([r["generation"] for r in history])
    ax.grid(alpha=0.3)
    ax.legend()
    if title:
        ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    return path


def _pct(record: dict[str, Any], net: str) -> str:
    return f"{100 * record[net]['accuracy']:.2f}" if net in record else "–"


def write_report(
    run_dir: str | Path, summary: dict[str, Any], history: list[dict[str, Any]]
) -> Path:
    """report.md (same layout as the other methods' run reports, combined by `efficientdl
    report`): the setting, the final dense and slim accuracy with their sizes, a per-generation
    table and the accuracy-vs-generation plot."""
    run_dir = Path(run_dir)
    r, last = summary["recipe"], history[-1]
    subset = f", {summary['per_class']} images per class" if summary["per_class"] else ""
    params, macs = last["params"], summary["macs"]
    lines = [
        f"# Knowledge Evolution run: {summary['model']} on {summary['dataset']} "
        f"({summary['arm']} arm)",
        "",
        f"{summary['train_samples']} training{subset} / {summary['test_samples']} test images, "
        f"seed {summary['seed']}; {summary['generations']} generation(s) × "
        f"{summary['epochs_per_generation']} epochs; {r['scheme'].upper()} split rate "
        f"{r['split_rate']}, reset init '{r['reset_init']}', SGD lr {r['lr']}, batch "
        f"{r['batch_size']}, label smoothing {r['label_smoothing']}"
        + (", CS-KD" if r["cskd"] else "")
        + ". Generations are numbered from 1; every number is the last-epoch network's test "
        "accuracy (no best-epoch selection).",
        "",
        f"**Generation {last['generation']}: dense {_pct(last, 'dense')} %, "
        f"slim fit net {_pct(last, 'fit')} %** with {params['fit']:,} of {params['dense']:,} "
        f"parameters"
        + (
            f" and {macs['fit']:,} of {macs['dense']:,} MACs per image "
            f"({macs['dense'] / macs['fit']:.2f}× fewer)"
            if "fit" in macs
            else ""
        )
        + "; no fine-tuning of the slim net.",
        "",
        "| generation | dense % | fit (slim) % | reset % | reset effect | train s |",
        "|---|---|---|---|---|---|",
    ]
    for rec in history:
        effect = f"{rec['reset_effect']:.3f}" if "reset_effect" in rec else "–"
        lines.append(
            f"| {rec['generation']} | {_pct(rec, 'dense')} | {_pct(rec, 'fit')} | "
            f"{_pct(rec, 'reset')} | {effect} | {rec['train_seconds']:.1f} |"
        )
    if (run_dir / "generations.png").exists():
        lines += ["", "![accuracy per generation](generations.png)"]
    path = run_dir / "report.md"
    _atomic_text(path, "\n".join(lines) + "\n")
    return path
