"""Knowledge Evolution on unmodified outside CNNs: every classification CNN in torchvision.models
and the common timm CNN families, each built untrained with 1000 classes.

    python benchmarks/ke_coverage.py                          # the whole sweep (tens of minutes)
    python benchmarks/ke_coverage.py --only torchvision:resnet18 timm:convnext_atto
    python benchmarks/ke_coverage.py --quick                  # fewer timed rounds
    python benchmarks/ke_coverage.py --only timm:mixnet_s --merge   # re-run rows in the JSON

Needs torchvision and timm (`pip install efficientdl[vision,timm]`). Where torchvision's C
operators do not load with the installed torch, `efficientdl.models.external` imports its model
code without them (the output says so); classification models need none of them.

Per model: KELS split (sr 0.5, from the traced graph); WELS split (Bernoulli sampling, the
official code's: the exact sampler's randperm per tensor takes minutes on the largest nets);
slim extraction; slim == masked (eval mode, BN statistics and affine parameters randomised first
so that the check is not trivial: the slim net against the dense net with its reset weights
zeroed, max abs difference and the same relative to the largest output, passing below 1e-4);
dense and slim parameters and MACs per 224² image (`efficientdl.knowledge_evolution.cost`); CPU
latency of dense and slim, interleaved by `efficientdl.core.benchmark.time_variants`, at batch 1
on 224² and at batch 64 on a smaller image (`--b64-size`, 64² by default: batch 64 at 224² is too
heavy for a small shared CPU; the table says which size). A failing step is recorded as its
error's first line and the sweep goes on. Excluded from torchvision: the transformers (ViT, Swin,
MaxViT): they are attention models, not
CNNs. Writes benchmarks/ke_coverage.json and prints a markdown table.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # see benchmarks/ke_slim.py

import torch  # noqa: E402
from torch import nn  # noqa: E402

from efficientdl.core.benchmark import time_variants  # noqa: E402
from efficientdl.knowledge_evolution import cost, extract_slim, masked_copy, split  # noqa: E402
from efficientdl.knowledge_evolution.bench import forward_fn  # noqa: E402
from efficientdl.models.external import build_external, model_names  # noqa: E402

EXCLUDED_PREFIXES = {"vit_": "ViT", "swin_": "Swin", "maxvit_": "MaxViT"}
"""torchvision classification models that are transformers, not CNNs (excluded)."""
TIMM_MODELS = (
    "resnet18", "resnet50d", "seresnet50", "resnext50_32x4d", "res2net50_26w_4s", "regnetx_002",
    "regnety_002", "efficientnet_b0", "efficientnet_lite0", "efficientnetv2_rw_t",
    "mobilenetv2_100", "mobilenetv3_large_100", "mobilenetv3_small_100", "mnasnet_100",
    "lcnet_050", "convnext_atto", "convnext_tiny", "ghostnet_100", "densenet121", "dla34",
    "rexnet_100", "mixnet_s", "cspresnet50", "repvgg_a0", "inception_v3",
)  # fmt: skip
"""One or two models of each common timm CNN family."""
MIN_SIZE = {"torchvision:inception_v3": 299, "timm:inception_v3": 96}
"""Models that need a larger small image than --b64-size (inception: at least 75²; torchvision's
Inception-v3 with its training-mode auxiliary head, 299²)."""
RATE = 0.5


def torchvision_cnns() -> tuple[list[str], list[str]]:
    """(CNN specs, excluded names) of torchvision's classification models."""
    names = model_names("torchvision")
    excluded = [n for n in names if n.startswith(tuple(EXCLUDED_PREFIXES))]
    return [f"torchvision:{n}" for n in names if n not in excluded], excluded


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    line = text.splitlines()[0] if text else ""
    return f"{type(err).__name__}: {line}"[:300]


@torch.no_grad()
def _randomise_norms(model: nn.Module, generator: torch.Generator) -> None:
    """Non-trivial BN running statistics and affine parameters (untrained nets have 0/1)."""
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            n = m.num_features
            if m.running_mean is not None:
                m.running_mean.copy_(0.1 * torch.randn(n, generator=generator))
                m.running_var.copy_(0.5 + torch.rand(n, generator=generator))
            if m.affine:
                m.weight.copy_(0.5 + torch.rand(n, generator=generator))
                m.bias.copy_(0.1 * torch.randn(n, generator=generator))


def measure(spec: str, args) -> dict:
    """One row: what passed, the error's first line where a step failed, counts and latency."""
    row: dict = {"model": spec, "source": spec.split(":")[0]}
    started = time.perf_counter()
    small = max(args.b64_size, MIN_SIZE.get(spec, 0))
    row["b64_size"] = small
    steps: dict[str, float] = {}
    step, clock = "build", time.perf_counter()

    def mark(name: str) -> str:
        nonlocal clock
        now = time.perf_counter()
        steps[step] = now - clock
        clock = now
        return name

    try:
        torch.manual_seed(0)
        model = build_external(spec, num_classes=1000).eval()
        gen = torch.Generator().manual_seed(0)
        _randomise_norms(model, gen)
        x_small = torch.randn(2, 3, small, small, generator=gen)
        step = mark("wels")
        wels = split(model, rate=RATE, scheme="wels", generator=gen, wels_sampling="bernoulli")
        row["wels"] = all(m.dtype == torch.bool for m in wels.values())
        step = mark("kels")
        masks = split(model, rate=RATE, example_input=x_small)
        row["kels"] = True
        step = mark("slim")
        slim = extract_slim(model, masks).eval()
        row["slim"] = True
        row["same_classes"] = {type(m) for m in slim.modules()} <= {
            type(m) for m in model.modules()
        }
        step = mark("slim == masked")
        with torch.no_grad():
            expected = masked_copy(model, masks).eval()(x_small)
            got = slim(x_small)
        diff = (got - expected).abs().max().item()
        row["max_abs_diff"] = diff
        row["rel_diff"] = diff / max(expected.abs().max().item(), 1e-30)
        row["equal"] = row["rel_diff"] < 1e-4
        step = mark("cost")
        x224 = torch.randn(1, 3, 224, 224, generator=gen)
        dense_cost, slim_cost = cost(model, x224), cost(slim, x224)
        row.update(params_dense=dense_cost["params"], params_slim=slim_cost["params"],
                   macs_dense=dense_cost["macs"], macs_slim=slim_cost["macs"])  # fmt: skip
        step = mark("latency")
        heavy = dense_cost["macs"] > args.heavy_gmacs * 1e9
        runs = [(1, x224, args.rounds_b1)]
        if args.max_b64_gmacs is None or dense_cost["macs"] <= args.max_b64_gmacs * 1e9:
            runs.append((64, torch.randn(64, 3, small, small, generator=gen), args.rounds_b64))
        for batch, x, rounds in runs:
            rounds = 1 if heavy else rounds
            fns = {"dense": forward_fn(model, x), "slim": forward_fn(slim, x)}
            timing = time_variants(fns, warmup=1, rounds=rounds)
            ms = {k: t.median_ms for k, t in timing.items()}
            row[f"ms_b{batch}_dense"], row[f"ms_b{batch}_slim"] = ms["dense"], ms["slim"]
            row[f"speedup_b{batch}"] = ms["dense"] / ms["slim"]
            row[f"rounds_b{batch}"] = rounds
        step = mark("done")
    except Exception as err:  # a failing step is a row, not a crash
        row["failed_step"] = step
        row["error"] = _first_line(err)
        mark(step)
    row["seconds"] = time.perf_counter() - started
    row["step_seconds"] = steps
    return row


def _fmt(row: dict, key: str, scale: float = 1.0, digits: int = 2) -> str:
    value = row.get(key)
    return "" if value is None else f"{value / scale:.{digits}f}"


def table(rows: list[dict]) -> str:
    """The markdown table of the rows."""
    head = (
        "| model | KELS | WELS | slim | slim == masked (rel) | params M dense → slim "
        "| GMACs dense → slim | ms b1 dense / slim (×) | ms b64 dense / slim (×), size |"
    )
    lines = [head, "|" + "---|" * 9]
    for r in rows:
        ok = {k: ("yes" if r.get(k) else ("**no**" if r.get("failed_step") == k else ""))
              for k in ("kels", "wels", "slim")}  # fmt: skip
        if "rel_diff" in r:
            eq = f"{'yes' if r['equal'] else '**no**'} ({r['rel_diff']:.1e})"
        else:
            eq = ""
        if "error" in r:
            eq = f"{r['failed_step']}: {r['error'][:120]}".replace("|", "\\|")
        params = (f"{_fmt(r, 'params_dense', 1e6)} → {_fmt(r, 'params_slim', 1e6)}"
                  if "params_dense" in r else "")  # fmt: skip
        macs = (f"{_fmt(r, 'macs_dense', 1e9, 3)} → {_fmt(r, 'macs_slim', 1e9, 3)}"
                if "macs_dense" in r else "")  # fmt: skip
        b1 = (f"{_fmt(r, 'ms_b1_dense', 1, 1)} / {_fmt(r, 'ms_b1_slim', 1, 1)} "
              f"({_fmt(r, 'speedup_b1')}×)" if "speedup_b1" in r else "")  # fmt: skip
        b64 = "not timed (too heavy)" if "speedup_b1" in r else ""
        if "speedup_b64" in r:
            b64 = (f"{_fmt(r, 'ms_b64_dense', 1, 0)} / {_fmt(r, 'ms_b64_slim', 1, 0)} "
                   f"({_fmt(r, 'speedup_b64')}×), {r['b64_size']}²")  # fmt: skip
        lines.append(f"| {r['model']} | {ok['kels']} | {ok['wels']} | {ok['slim']} | {eq} "
                     f"| {params} | {macs} | {b1} | {b64} |")  # fmt: skip
    return "\n".join(lines)


def summary(rows: list[dict]) -> dict:
    """Pass counts per source and the speed-up range of the rows that passed."""
    out = {}
    for source in sorted({r["source"] for r in rows}):
        mine = [r for r in rows if r["source"] == source]
        passed = [r for r in mine if r.get("equal")]
        speed = {b: sorted(r[f"speedup_b{b}"] for r in passed if f"speedup_b{b}" in r)
                 for b in (1, 64)}  # fmt: skip
        out[source] = {
            "models": len(mine),
            "wels": sum(bool(r.get("wels")) for r in mine),
            "kels": sum(bool(r.get("kels")) for r in mine),
            "slim_equals_masked": len(passed),
            "failed": [r["model"] for r in mine if not r.get("equal")],
            **{
                f"speedup_b{b}_min_median_max": [s[0], s[len(s) // 2], s[-1]] if s else None
                for b, s in speed.items()
            },  # fmt: skip
        }
    return out


def main() -> int:
    """Run the sweep, print the table, write the JSON."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", nargs="+", help="specs to run (torchvision:NAME, timm:NAME)")
    parser.add_argument("--skip-timm", action="store_true")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--b64-size", type=int, default=64, help="image side at batch 64")
    parser.add_argument("--rounds-b1", type=int, default=5)
    parser.add_argument("--rounds-b64", type=int, default=3)
    parser.add_argument(
        "--heavy-gmacs",
        type=float,
        default=15.0,
        help="models above this many GMACs get half the timed rounds",
    )
    parser.add_argument(
        "--max-b64-gmacs",
        type=float,
        default=None,
        help="no batch-64 timing for models above this many GMACs",
    )
    parser.add_argument("--quick", action="store_true", help="1 timed round per batch size")
    parser.add_argument("--out", default=str(Path(__file__).with_name("ke_coverage.json")))
    parser.add_argument(
        "--merge",
        action="store_true",
        help="replace only the rows of the models run in the existing --out",
    )
    args = parser.parse_args()
    if args.quick:
        args.rounds_b1 = args.rounds_b64 = 1
    torch.set_num_threads(args.threads)
    tv_specs, excluded = torchvision_cnns()
    meta = sys.modules.get("torchvision._meta_registrations")
    fallback = meta is not None and getattr(meta, "__file__", None) is None
    specs = args.only or tv_specs + ([] if args.skip_timm else [f"timm:{n}" for n in TIMM_MODELS])
    import timm
    import torchvision

    env = {
        "torch": torch.__version__, "torchvision": torchvision.__version__,
        "timm": timm.__version__, "threads": torch.get_num_threads(),
        "python": platform.python_version(), "machine": platform.machine(),
        "torchvision_without_c_ops": fallback,
    }  # fmt: skip
    print(json.dumps(env))
    if fallback:
        print("note: torchvision's C operators do not load with this torch; its model code was "
              "imported without them (torchvision._meta_registrations replaced by an empty "
              "module)")  # fmt: skip
    print(f"excluded (transformers, not CNNs): {', '.join(excluded)}")
    rows = []
    for i, spec in enumerate(specs, 1):
        row = measure(spec, args)
        rows.append(row)
        state = "ok" if row.get("equal") else f"FAILED at {row.get('failed_step', 'equal')}"
        steps = " ".join(f"{k} {v:.1f}" for k, v in row["step_seconds"].items())
        print(f"[{i}/{len(specs)}] {spec}: {state} ({row['seconds']:.1f} s: {steps}) "
              f"{row.get('error', '')}", flush=True)  # fmt: skip
    if args.merge and Path(args.out).is_file():
        fresh = {r["model"]: r for r in rows}
        old = json.loads(Path(args.out).read_text())["rows"]
        rows = [fresh.pop(r["model"], r) for r in old] + list(fresh.values())
    result = {
        "env": env, "split_rate": RATE, "classes": 1000,
        "excluded": {"names": excluded, "why": "transformers (ViT, Swin, MaxViT), not CNNs"},
        "settings": {"b1_size": 224, "b64_size": args.b64_size, "min_size": MIN_SIZE,
                     "rounds_b1": args.rounds_b1, "rounds_b64": args.rounds_b64,
                     "heavy_gmacs": args.heavy_gmacs, "max_b64_gmacs": args.max_b64_gmacs},
        "summary": summary(rows), "rows": rows,
    }  # fmt: skip
    Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    print(table(rows))
    print(json.dumps(result["summary"], indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
