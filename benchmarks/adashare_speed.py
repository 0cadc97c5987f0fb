"""AdaShare training-step and inference speed, ours vs the official masked mode, and the speed
targets it is held to; the measurement is efficientdl.adashare.bench.

python benchmarks/adashare_speed.py [--device cuda] [--precision bf16] [--channels-last]
"""

from __future__ import annotations

import argparse

import torch

from efficientdl.adashare import bench

# The official code's times in ms: (H100, batch 16, 321²; CPU, 2 cores, batch 2, 193²)
OFFICIAL_ANCHORS_MS = {
    "search_step": (203.0, 5166.0),
    "hard_step": (125.8, 3265.0),
    "policy_inference": (66.2, 1275.0),
    "hard_inference": (43.2, 759.0),
    "backbone": (9.0, 255.0),
}
OFFICIAL_SEARCH_PEAK_GB = 14.9  # the official code's search-step peak memory (H100)
CPU_TREE_BOUND = 1.05  # tree inference ≤ 1.05× hard-sharing inference on the CPU
GPU_TREE_BOUND = 1.0  # no slower than hard sharing on the GPU
TREE_OVERHEAD = 1.02  # executor time / hard time <= 1.02 × executor MACs / hard MACs
# official-mode search step / ours (bf16 autocast; fp32 with channels_last)
SEARCH_SPEEDUP = {"bf16": 1.6, "fp32": 1.2}


def targets(res: dict, device: torch.device, precision: str = "fp32") -> list[dict]:
    """Each speed target for this device: {'target', 'value', 'met'}."""
    main = res["main"]
    ms = {k: v["ms"] for k, v in main.items()}
    sweep = [res["sweep"][k]["ms"] for k in sorted(res["sweep"], key=int)]
    hard = ms["hard_inference"]
    out = []

    def add(name, value, ok):
        out.append({"target": name, "value": value, "met": bool(ok)})

    time_ratio, mac_ratio = bench.tree_cost_ratios(res)
    add(f"tree inference / hard inference <= {TREE_OVERHEAD} x its MAC ratio {mac_ratio:.3f}",
        time_ratio, time_ratio <= TREE_OVERHEAD * mac_ratio)  # fmt: skip
    bound = CPU_TREE_BOUND if device.type == "cpu" else GPU_TREE_BOUND
    for key, what in (("tree_inference", "benchmark"), ("tree_inference_learned", "learned")):
        if key in ms:
            add(f"tree inference ({what} policy) / hard-sharing inference <= {bound}",
                ms[key] / hard, ms[key] <= bound * hard)  # fmt: skip
    s_ours, s_off = ms["search_step_fast"], ms["search_step_official"]
    if device.type == "cpu":
        off = ms["official_policy_inference"]
        tree = ms["tree_inference"]
        add("official-mode policy inference / tree inference >= 1.5", off / tree, off >= 1.5 * tree)
        add(
            "executor time falls as more blocks are skipped",
            sweep,
            all(a > b for a, b in zip(sweep, sweep[1:])),
        )
        add("search step fast / official-mode <= 1.0", s_ours / s_off, s_ours <= s_off)
        return out
    anchor = OFFICIAL_ANCHORS_MS["search_step"][0]
    add(f"search step <= {anchor:.0f}/1.6 = {anchor / 1.6:.1f} ms (official anchor)", s_ours,
        s_ours <= anchor / 1.6)  # fmt: skip
    peak = main["search_step_fast"]["peak_mb"]
    add(
        f"search step peak < {OFFICIAL_SEARCH_PEAK_GB} GB and < official mode",
        peak / 1024,
        peak / 1024 < OFFICIAL_SEARCH_PEAK_GB and peak < main["search_step_official"]["peak_mb"],
    )
    speedup = SEARCH_SPEEDUP[precision]
    add(f"official-mode search step / ours >= {speedup} ({precision})", s_off / s_ours,
        s_off >= speedup * s_ours)  # fmt: skip
    tree_peak = main["tree_inference"]["peak_mb"]
    off_peak = main["official_policy_inference"]["peak_mb"]
    add("tree inference peak / official-mode policy inference peak <= 1.1", tree_peak / off_peak,
        tree_peak <= 1.1 * off_peak)  # fmt: skip
    return out


def add_targets(res: dict) -> None:
    """Put the targets of `res`'s device and precision, and the official anchors, into `res`."""
    config = res["config"]
    res["targets"] = targets(res, torch.device(config["device"]), config["precision"])
    config["official_anchor_ms"] = OFFICIAL_ANCHORS_MS


def format_targets(rows: list[dict]) -> str:
    """A markdown table of target, value and met/missed."""
    lines = ["| target | value | met |", "|---|---|---|"]
    for t in rows:
        v = t["value"]
        v = f"{v:.3f}" if isinstance(v, float) else ", ".join(f"{x:.0f}" for x in v)
        lines.append(f"| {t['target']} | {v} | {'met' if t['met'] else 'missed'} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Measure (`bench.run`), add and print the targets; the JSON holds them too."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    bench.add_arguments(parser)
    res = bench.run(parser.parse_args(argv), annotate=add_targets)
    print("\n" + format_targets(res["targets"]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
