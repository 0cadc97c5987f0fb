"""Dense vs slim ResNet-18 (100 classes, 224²): parameters, MACs, official-rule ops and measured
latency, plus generation-switching costs (spec §7).

    python benchmarks/ke_slim.py                 # CPU (all cores and 1 thread), GPU if present
    python benchmarks/ke_slim.py --quick         # fewer runs, for a smoke check

Nets: dense; slim = extract_slim at split rates 0.5 and 0.8; "ideal narrow" = resnet18 built
directly at the sr=0.5 widths (32/64/128/256, identical shapes to the slim net), to show that
extraction adds no run-time cost. Eval mode + inference_mode; median wall time per forward.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import torch

from efficientdl.knowledge_evolution import extract_slim, reinitialize, split
from efficientdl.knowledge_evolution.bench import cost_row, forward_fn, latency, timed
from efficientdl.models import resnet18


def build_nets() -> dict[str, torch.nn.Module]:
    torch.manual_seed(0)
    dense = resnet18(100).eval()
    nets = {"dense": dense}
    for rate in (0.5, 0.8):
        nets[f"slim sr={rate}"] = extract_slim(dense, split(dense, rate=rate)).eval()
    nets["ideal narrow sr=0.5"] = resnet18(100, width=32).eval()
    return nets


def switching_costs(dense: torch.nn.Module) -> dict[str, float]:
    """Seconds for one split (trace), one re-init and one slim extraction of ResNet-18."""
    masks = split(dense, rate=0.5)
    gen = torch.Generator().manual_seed(0)
    work = resnet18(100)
    return {
        "split_trace_s": timed(lambda: split(dense, rate=0.5)),
        "reinit_s": timed(lambda: reinitialize(work, masks, generator=gen)),
        "extract_s": timed(lambda: extract_slim(dense, masks)),
    }


def cpu_rows(nets, x, threads_list, runs_b1, runs_b64) -> list[dict]:
    rows = []
    for threads in threads_list:
        torch.set_num_threads(threads)
        for batch, runs, warm in ((1, runs_b1, 10), (64, runs_b64, 3)):
            for name, net in nets.items():
                ms = latency(forward_fn(net, x[:batch]), device=x.device, warmup=warm, runs=runs)
                rows.append({"device": "cpu", "threads": threads, "batch": batch, "net": name,
                             "ms": ms, "runs": runs})  # fmt: skip
                print(f"cpu threads={threads} batch={batch} {name}: {ms:.2f} ms", flush=True)
    return rows


def gpu_rows(nets, x, runs) -> list[dict]:
    rows = []
    dev = torch.device("cuda")
    for name, net in nets.items():
        net = net.to(dev)
        for batch in (1, 64):
            xb = x[:batch].to(dev)
            for mode, kw in (("fp32", {}), ("bf16+cl", {"bf16": True, "channels_last": True})):
                ms = latency(forward_fn(net, xb, **kw), device=dev, warmup=10, runs=runs)
                rows.append({"device": "cuda", "batch": batch, "net": name, "mode": mode,
                             "ms": ms, "runs": runs})  # fmt: skip
                print(f"cuda batch={batch} {mode} {name}: {ms:.3f} ms", flush=True)
        net.to("cpu")
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--out", default="benchmarks/ke_slim.json")
    args = parser.parse_args()
    all_threads = torch.get_num_threads()
    nets = build_nets()
    x = torch.randn(64, 3, 224, 224)
    costs = [cost_row(name, net, x) for name, net in nets.items()]
    for row in costs:
        print(f"{row['net']:<22} params {row['params']:>12,}  MACs {row['macs']:>15,}  "
              f"official ops {row['ops_official']:>15,}")  # fmt: skip
    torch.set_num_threads(all_threads)
    switching = switching_costs(nets["dense"])
    print("generation switching (s):", json.dumps(switching))
    runs_b1, runs_b64 = (5, 2) if args.quick else (50, 5)
    threads_list = sorted({all_threads, 1}, reverse=True)
    t0 = time.time()
    rows = cpu_rows(nets, x, threads_list, runs_b1, runs_b64)
    if torch.cuda.is_available():
        rows += gpu_rows(nets, x, 10 if args.quick else 100)
    result = {
        "machine": {"cpu": platform.processor() or platform.machine(), "threads": all_threads,
                    "torch": torch.__version__,
                    "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None},
        "costs": costs,
        "switching_seconds": switching,
        "latency": rows,
        "wall_seconds": time.time() - t0,
    }  # fmt: skip
    Path(args.out).write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
