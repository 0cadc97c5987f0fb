"""Aggregate AdaShare run folders (one per seed) into a Markdown table and a JSON file: every test
metric as mean ± std over seeds per arm, Δ_T against each seed's single-task baseline, the paired
difference of every arm's Δ_T against hard sharing's (seed by seed), parameters, GFLOPs, the
learned policies and whether each search converged (final τ, select-probability histogram).

    python benchmarks/adashare_table.py runs/adashare_p5/seed_*/ --json results.json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from efficientdl.adashare.config import ABLATIONS, BASELINES
from efficientdl.adashare.folders import ADASHARE_RESULT, RESULT
from efficientdl.adashare.objectives.metrics import DELTA_METRICS, delta_t

ARMS = (*BASELINES, "adashare", *ABLATIONS)  # columns where a seed ran them
SEARCHED = ("adashare", *ABLATIONS)  # arms with a policy search of their own
HARD = "multi_task"


def read_json(path: Path) -> dict | None:
    return json.loads(path.read_text()) if path.is_file() else None


def arm_folder(folder: Path, arm: str) -> Path:
    """Where `arm` of one seed's run folder keeps its results (AdaShare: the folder itself)."""
    return folder if arm == "adashare" else folder / "baselines" / arm


def load_runs(folder: Path) -> dict:
    """{arm: result} of one seed's run folder (AdaShare, finished baselines and ablations)."""
    runs = {}
    for arm in ARMS:
        name = ADASHARE_RESULT if arm == "adashare" else RESULT
        result = read_json(arm_folder(folder, arm) / name)
        if result is not None and "test" in result:
            runs[arm] = result
    return runs


def load_searches(folder: Path) -> dict:
    """{arm: search/done.json} of the arms with a finished search."""
    done = {a: read_json(arm_folder(folder, a) / "search" / "done.json") for a in SEARCHED}
    return {a: d for a, d in done.items() if d is not None}


def sample_deltas(folder: Path, single_task: dict, hib: dict) -> list[float]:
    """Δ_T of every re-trained sample of a search (retrain/sample_*/test.json), selected or not."""
    tests = [read_json(p) for p in sorted((folder / "retrain").glob("sample_*/test.json"))]
    return [delta_t(t, single_task, hib)["delta_t"] for t in tests]


def fmt(values) -> str:
    arr = np.asarray(values, dtype=np.float64)
    if len(arr) == 0:
        return "—"
    if len(arr) == 1:
        return f"{arr[0]:.4g}"
    return f"{arr.mean():.4g} ± {arr.std(ddof=1):.2g}"


def policy_strings(policy: dict) -> dict:
    """{task: '10110111'}: the blocks a task executes (1) or skips (0), input to output."""
    return {
        t: "".join("1" if e else "0" for e in row)
        for t, row in zip(policy["tasks"], policy["execute"])
    }


def paired_difference(vs_single: dict, arm: str, reference: str) -> dict:
    """{seed: Δ_T(arm) − Δ_T(reference)} (each against the seed's single-task) over the seeds where
    both ran; `vs_single` is {arm: {seed: Δ_T}}."""
    a, b = vs_single[arm], vs_single.get(reference, {})
    return {s: a[s] - b[s] for s in a if s in b}


def summarize(folders: list[Path], preset: str) -> dict:
    """Every number of the table, per seed and aggregated, as one JSON-ready dict."""
    seeds = {f.name: load_runs(f) for f in folders}
    searches = {f.name: load_searches(f) for f in folders}
    arms = [a for a in ARMS if any(a in r for r in seeds.values())]
    first = next(r for r in seeds.values() if r)
    tasks = list(next(iter(first.values()))["test"])
    hib = {t: DELTA_METRICS[preset][t] for t in tasks}
    vs_single = {
        arm: {
            s: delta_t(r[arm]["test"], r["single_task"]["test"], hib)
            for s, r in seeds.items()
            if arm in r and "single_task" in r
        }
        for arm in arms
    }
    totals = {arm: {s: d["delta_t"] for s, d in v.items()} for arm, v in vs_single.items()}
    per_arm = {}
    for arm in arms:
        rows = {s: r for s, r in seeds.items() if arm in r}
        per_arm[arm] = {
            "seeds": list(rows),
            "test": {s: r[arm]["test"] for s, r in rows.items()},
            "delta_t_vs_single_task": totals[arm],
            "delta_per_task_vs_single_task": {s: d["per_task"] for s, d in vs_single[arm].items()},
            "delta_t_minus_hard_sharing": paired_difference(totals, arm, HARD),
            "params": {s: r[arm]["params"]["total"] for s, r in rows.items()},
            "backbone_units": {s: r[arm]["params"]["backbone_units"] for s, r in rows.items()},
            "gflops": {s: r[arm]["flops"]["flops_shared"] / 1e9 for s, r in rows.items()},
            "policies": {
                s: policy_strings(r[arm]["policy"]) for s, r in rows.items() if "policy" in r[arm]
            },
        }
        if arm in SEARCHED:
            per_arm[arm]["every_sample_delta_t_vs_single_task"] = {
                s: sample_deltas(arm_folder(f, arm), rows[s]["single_task"]["test"], hib)
                for f in folders
                if (s := f.name) in totals[arm]
            }
    ada = {s: r["adashare"] for s, r in seeds.items() if "adashare" in r}
    return {
        "preset": preset,
        "tasks": tasks,
        "metrics": {t: [m for m in first[arms[0]]["test"][t] if m != "loss"] for t in tasks},
        "higher_is_better": hib,
        "arms": per_arm,
        "searches": searches,
        "adashare_selection": {
            s: {
                "selected": a["selected"],
                "val_scores": a["val_scores"],
                "num_executed": a["num_executed"],
                "test_mean_over_samples": a.get("test_mean"),
            }
            for s, a in ada.items()
        },
    }


def _row(label: str, cells) -> str:
    return f"| {label} | " + " | ".join(cells) + " |"


def markdown(summary: dict) -> str:
    """The Markdown table and the per-seed lines of `summarize`'s result."""
    arms, hib = summary["arms"], summary["higher_is_better"]
    names = list(arms)
    lines = ["| task | metric | " + " | ".join(names) + " |", "|---|---|" + "---|" * len(names)]
    for t, metrics in summary["metrics"].items():
        for m in metrics:
            arrow = "" if m not in hib[t] else (" ↑" if hib[t][m] else " ↓")
            cells = [fmt([v[t][m] for v in arms[a]["test"].values()]) for a in names]
            lines.append(_row(f"{t} | {m}{arrow}", cells))
    for t in summary["tasks"]:
        cells = [
            fmt([d[t] for d in arms[a]["delta_per_task_vs_single_task"].values()]) for a in names
        ]
        lines.append(_row(f"{t} | Δ_{t} % vs single-task ↑", cells))
    keyed = (
        ("delta_t_vs_single_task", "**Δ_T % vs single-task** ↑"),
        ("delta_t_minus_hard_sharing", "**Δ_T − hard sharing's Δ_T** (paired by seed) ↑"),
        ("params", "params"),
        ("backbone_units", "#params in backbone units"),
        ("gflops", "GFLOPs / image (shared prefixes once)"),
    )
    for key, label in keyed:
        lines.append(_row(f"all | {label}", [fmt(list(arms[a][key].values())) for a in names]))
    out = ["\n".join(lines), ""]
    for a in names:
        paired = arms[a]["delta_t_minus_hard_sharing"]
        if a != HARD and paired:
            each = ", ".join(f"{s} {v:+.2f}" for s, v in paired.items())
            out.append(f"- {a} − hard sharing, Δ_T points: {fmt(list(paired.values()))} ({each})")
    if "adashare" in arms and "mtan" in arms:
        totals = {a: arms[a]["delta_t_vs_single_task"] for a in ("adashare", "mtan")}
        diff = list(paired_difference(totals, "adashare", "mtan").values())
        out.append(
            f"- adashare − mtan, Δ_T points: {fmt(diff)} ({', '.join(f'{d:+.2f}' for d in diff)})"
        )
    for a in names:
        samples = {
            s: v for s, v in arms[a].get("every_sample_delta_t_vs_single_task", {}).items() if v
        }
        if samples:
            each = "; ".join(f"{s} {fmt(v)} (n = {len(v)})" for s, v in samples.items())
            flat = [x for v in samples.values() for x in v]
            out.append(
                f"- {a}, every re-trained sample (selected or not), Δ_T %: {fmt(flat)}; {each}"
            )
    out.append("")
    out.append(
        "Searches (final policy-phase τ; share of the select probabilities within 0.1 of 0 or 1;"
        " their counts in 10 bins of [0, 1]):"
    )
    out.append("")
    for seed, found in summary["searches"].items():
        for arm, d in found.items():
            h = d["select_histogram"]
            out.append(
                f"- {seed} {arm}: {d['cycles']} cycles, τ {d['last_policy_tau']:.3g}, "
                f"{100 * h['decided_fraction']:.0f} % decided, histogram {h['counts']}"
            )
    out.append("")
    for seed, sel in summary["adashare_selection"].items():
        scores = ", ".join(f"{s:+.2f}" for s in sel["val_scores"])
        policy = arms["adashare"]["policies"].get(seed, {})
        shown = ", ".join(f"{t} {p}" for t, p in policy.items())
        out.append(
            f"- {seed}: selected sample {sel['selected']} of {len(sel['val_scores'])} (validation "
            f"scores {scores}); policy (1 = execute, input → output) {shown}"
        )
    return "\n".join(out) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folders", nargs="+", type=Path)
    parser.add_argument("--preset", default="procedural", choices=sorted(DELTA_METRICS))
    parser.add_argument("--out", type=Path, default=None, help="write the Markdown here too")
    parser.add_argument("--json", type=Path, default=None, help="write every number here")
    args = parser.parse_args()
    for folder in args.folders:
        if not folder.is_dir():
            parser.exit(2, f"adashare_table: {folder} is not a run folder (expected a folder that "
                           "`efficientdl adashare pipeline --run-dir` wrote)\n")  # fmt: skip
    summary = summarize(sorted(args.folders), args.preset)
    text = markdown(summary)
    if args.out:
        args.out.write_text(text)
    if args.json:
        args.json.write_text(json.dumps(summary, indent=1) + "\n")
    print(text)


if __name__ == "__main__":
    main()
