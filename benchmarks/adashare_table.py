"""Aggregate AdaShare run folders (one per seed) into a Markdown table: every test metric as
mean ± std over seeds per arm, Δ_T against each seed's single-task baseline, Δ_T of AdaShare
against hard sharing, parameters, GFLOPs and the learned policies.

    python benchmarks/adashare_table.py runs/adashare_p5/seed_* --out benchmarks/results_adashare.md
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from efficientdl.adashare.config import ABLATIONS, BASELINES
from efficientdl.adashare.objectives.metrics import DELTA_METRICS, delta_t

ARMS = (*BASELINES, "adashare", *ABLATIONS)  # columns where a seed ran them


def load_runs(folder: Path) -> dict:
    """{arm: result} of one seed's run folder (AdaShare, finished baselines and ablations)."""
    runs = {}
    ada = folder / "adashare_result.json"
    if ada.is_file():
        runs["adashare"] = json.loads(ada.read_text())
    for arm in (a for a in ARMS if a != "adashare"):
        path = folder / "baselines" / arm / "result.json"
        if path.is_file():
            result = json.loads(path.read_text())
            if "test" in result:
                runs[arm] = result
    return runs


def fmt(values) -> str:
    arr = np.asarray(values, dtype=np.float64)
    if len(arr) == 1:
        return f"{arr[0]:.4g}"
    return f"{arr.mean():.4g} ± {arr.std(ddof=1):.2g}"


def build(folders: list[Path], preset: str) -> str:
    seeds = {f.name: load_runs(f) for f in folders}
    arms = [a for a in ARMS if any(a in r for r in seeds.values())]
    hib_all = DELTA_METRICS[preset]
    first = next(r for r in seeds.values() if r)
    tasks = list(next(iter(first.values()))["test"])
    hib = {t: hib_all[t] for t in tasks}
    lines = ["| task | metric | " + " | ".join(arms) + " |", "|---|---|" + "---|" * len(arms)]
    metrics = [(t, m) for t in tasks for m in first[arms[0]]["test"][t] if m != "loss"]
    for t, m in metrics:
        arrow = "" if m not in hib[t] else (" ↑" if hib[t][m] else " ↓")
        cells = [fmt([r[a]["test"][t][m] for r in seeds.values() if a in r]) for a in arms]
        lines.append(f"| {t} | {m}{arrow} | " + " | ".join(cells) + " |")
    per_seed = {a: [] for a in arms}
    vs_hard = []
    for runs in seeds.values():
        if "single_task" not in runs:
            continue
        for a in arms:
            if a in runs:
                per_seed[a].append(delta_t(runs[a]["test"], runs["single_task"]["test"], hib))
        if "adashare" in runs and "multi_task" in runs:
            vs_hard.append(delta_t(runs["adashare"]["test"], runs["multi_task"]["test"], hib))
    for t in tasks:
        cells = [fmt([d["per_task"][t] for d in per_seed[a]]) if per_seed[a] else "—" for a in arms]
        lines.append(f"| {t} | Δ_{t} % vs single-task ↑ | " + " | ".join(cells) + " |")
    cells = [fmt([d["delta_t"] for d in per_seed[a]]) if per_seed[a] else "—" for a in arms]
    lines.append("| all | **Δ_T % vs single-task** ↑ | " + " | ".join(cells) + " |")
    for key, label in (("total", "params"), ("backbone_units", "#params in backbone units")):
        cells = [fmt([r[a]["params"][key] for r in seeds.values() if a in r]) for a in arms]
        lines.append(f"| all | {label} | " + " | ".join(cells) + " |")
    cells = [
        fmt([r[a]["flops"]["flops_shared"] / 1e9 for r in seeds.values() if a in r]) for a in arms
    ]
    lines.append("| all | GFLOPs / image (shared prefixes once) | " + " | ".join(cells) + " |")
    out = ["\n".join(lines), ""]
    if vs_hard:
        each = ", ".join(f"{d['delta_t']:+.2f}" for d in vs_hard)
        out.append(
            f"Δ_T of AdaShare against hard sharing (per seed, then mean ± std): "
            f"{fmt([d['delta_t'] for d in vs_hard])} % "
            f"(per seed: {each})."
        )
        out.append("")
    for name, runs in seeds.items():
        if "adashare" in runs:
            ada = runs["adashare"]
            scores = ", ".join(f"{s:+.2f}" for s in ada["val_scores"])
            out.append(
                f"- {name}: selected sample {ada['selected']} (validation Δ_T {scores}); executed "
                f"blocks {ada['num_executed']} of {len(ada['policy']['execute'][0])}; picture "
                f"`{Path(folders[0]).parent / name / 'policy.png'}`"
            )
    return "\n".join(out) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folders", nargs="+", type=Path)
    parser.add_argument("--preset", default="procedural")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    text = build(sorted(args.folders), args.preset)
    if args.out:
        args.out.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
