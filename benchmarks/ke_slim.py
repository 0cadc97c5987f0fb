"""Dense vs slim ResNet-18 (100 classes, 224²): parameters, MACs, official-rule ops and measured
latency, plus generation-switching costs.

    python benchmarks/ke_slim.py                       # CPU (all cores and 1 thread), GPU if any
    python benchmarks/ke_slim.py --threads 2           # CPU at 2 threads only
    python benchmarks/ke_slim.py --batch 64 --merge    # add/replace batch-64 rows in the JSON
    python benchmarks/ke_slim.py --quick               # fewer runs, for a smoke check

Nets: dense; slim = extract_slim at split rates 0.5 and 0.8; "ideal narrow" = resnet18 built
directly at the sr=0.5 widths (32/64/128/256, the slim net's shapes), to show that extraction
adds no run-time cost. Eval mode + inference_mode; median wall time per forward, the nets' calls
interleaved in alternating order so that background load hits each alike.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

# Sleep instead of spinning while waiting for a peer thread: on a machine shared with other jobs,
# spinning OpenMP threads made 2-thread ResNet-18 forwards ~14x slower than 1 thread.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch  # noqa: E402

from efficientdl.core.benchmark import time_variants  # noqa: E402
from efficientdl.knowledge_evolution import extract_slim, reinitialize, split  # noqa: E402
from efficientdl.knowledge_evolution.bench import cost_row, forward_fn  # noqa: E402
from efficientdl.models import resnet18  # noqa: E402


def build_nets() -> dict[str, torch.nn.Module]:
    """Dense ResNet-18 (100 classes), its slim nets at sr 0.5 and 0.8, the ideal narrow net."""
    torch.manual_seed(0)
    dense = resnet18(100).eval()
    nets = {"dense": dense}
    for rate in (0.5, 0.8):
        nets[f"slim sr={rate}"] = extract_slim(dense, split(dense, rate=rate)).eval()
    nets["ideal narrow sr=0.5"] = resnet18(100, width=32).eval()
    return nets


def switching_costs(dense: torch.nn.Module) -> dict[str, float]:
    """Seconds (best of 3) for one split (trace), one re-init and one slim extraction."""
    masks = split(dense, rate=0.5)
    gen = torch.Generator().manual_seed(0)
    work = resnet18(100)
    steps = {
        "split_trace_s": lambda: split(dense, rate=0.5),
        "reinit_s": lambda: reinitialize(work, masks, generator=gen),
        "extract_s": lambda: extract_slim(dense, masks),
    }
    return {k: t.best_ms / 1000 for k, t in time_variants(steps, warmup=0, rounds=3).items()}


def cpu_rows(nets, x, threads_list, runs: dict[int, int]) -> list[dict]:
    """CPU latency rows for every thread count and batch size in `runs` ({batch: timed runs})."""
    rows = []
    for threads in threads_list:
        torch.set_num_threads(threads)
        for batch, n in runs.items():
            fns = {name: forward_fn(net, x[:batch]) for name, net in nets.items()}
            timings = time_variants(fns, warmup=10 if batch == 1 else 2, rounds=n)
            ms = {name: timing.median_ms for name, timing in timings.items()}
            for name, value in ms.items():
                rows.append({"device": "cpu", "threads": threads, "batch": batch, "net": name,
                             "mode": "fp32", "ms": value, "runs": n})  # fmt: skip
            print(f"cpu threads={threads} batch={batch}: "
                  + ", ".join(f"{k} {v:.2f} ms" for k, v in ms.items()), flush=True)  # fmt: skip
    return rows


def gpu_rows(nets, x, runs: int) -> list[dict]:
    """GPU latency rows: fp32 and bf16 autocast + channels_last, batch 1 and 64."""
    rows = []
    dev = torch.device("cuda")
    on_gpu = {name: net.to(dev) for name, net in nets.items()}
    for batch in (1, 64):
        xb = x[:batch].to(dev)
        for mode, kw in (("fp32", {}), ("bf16+cl", {"bf16": True, "channels_last": True})):
            fns = {name: forward_fn(net, xb, **kw) for name, net in on_gpu.items()}
            for name, t in time_variants(fns, warmup=10, rounds=runs, device=dev).items():
                rows.append({"device": "cuda", "batch": batch, "net": name, "mode": mode,
                             "ms": t.median_ms, "runs": runs})  # fmt: skip
    for net in nets.values():
        net.to("cpu")
    return rows


def _setting(row: dict) -> tuple:
    return row["device"], row.get("threads"), row["batch"], row["mode"]


def table(costs: list[dict], rows: list[dict]) -> str:
    """Markdown: params, MACs, official ops, then latency and speed-up over dense per setting."""
    dense = next(c for c in costs if c["net"] == "dense")
    lines = ["| net | params | MACs / image | MAC ratio | official ops |", "|---|---|---|---|---|"]
    for c in costs:
        lines.append(f"| {c['net']} | {c['params']:,} | {c['macs']:,} | "
                     f"{dense['macs'] / c['macs']:.2f}× | {c['ops_official']:,} |")  # fmt: skip
    settings = sorted({_setting(r) for r in rows},
                      key=lambda s: (s[0], -(s[1] or 0), s[2], s[3]))  # fmt: skip
    names = [c["net"] for c in costs]
    lines += ["", "| setting | " + " | ".join(names) + " |", "|---" * (len(names) + 1) + "|"]
    for dev, threads, batch, mode in settings:
        ms = {r["net"]: r["ms"] for r in rows if _setting(r) == (dev, threads, batch, mode)}
        label = f"{dev} {mode} batch {batch}" + (f", {threads} thr" if threads else "")
        cells = [f"{ms[n]:.2f} ms ({ms['dense'] / ms[n]:.2f}×)" for n in names]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="few runs (smoke check)")
    parser.add_argument("--threads", type=int, nargs="+", default=None,
                        help="CPU thread counts (default: all cores and 1)")  # fmt: skip
    parser.add_argument("--batch", type=int, nargs="+", default=[1, 64], choices=[1, 64])
    parser.add_argument("--merge", action="store_true",
                        help="keep the --out file's rows of settings not measured now")  # fmt: skip
    parser.add_argument("--out", default="benchmarks/ke_slim.json")
    args = parser.parse_args()
    out = Path(args.out)
    previous = json.loads(out.read_text())["latency"] if args.merge and out.exists() else []
    all_threads = torch.get_num_threads()
    nets = build_nets()
    x = torch.randn(64, 3, 224, 224)
    costs = [cost_row(name, net, x) for name, net in nets.items()]
    switching = switching_costs(nets["dense"])
    print("generation switching (s):", json.dumps(switching), flush=True)
    runs = {b: n for b, n in ({1: 5, 64: 2} if args.quick else {1: 50, 64: 5}).items()
            if b in args.batch}  # fmt: skip
    threads_list = args.threads or sorted({all_threads, 1}, reverse=True)
    t0 = time.time()
    rows = cpu_rows(nets, x, threads_list, runs)
    cuda = torch.cuda.is_available()
    if cuda:
        rows += gpu_rows(nets, x, 10 if args.quick else 100)
    measured = {_setting(r) for r in rows}
    rows = [r for r in previous if _setting(r) not in measured] + rows
    result = {
        "machine": {"cpu": platform.processor() or platform.machine(),
                    "cpu_threads_available": all_threads, "torch": torch.__version__,
                    "OMP_WAIT_POLICY": os.environ["OMP_WAIT_POLICY"],
                    "gpu": torch.cuda.get_device_name() if cuda else "not measured (no GPU)"},
        "input": "224x224, 100 classes, eval + inference_mode, median of timed runs",
        "timed_runs_per_batch": runs,
        "costs": costs,
        "switching_seconds": switching,
        "latency": rows,
        "wall_seconds_last_invocation": time.time() - t0,
    }  # fmt: skip
    out.write_text(json.dumps(result, indent=2))
    print(table(costs, rows))
    if not cuda:
        print("GPU: not measured (no GPU on this machine)")


if __name__ == "__main__":
    main()
