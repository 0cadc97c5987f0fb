"""AdaShare speed, side by side in one run.

NYUv2 3-task setting (Deeplab-ResNet-34, ASPP heads; seg 40, normal 3, depth 1; `torch.rand`
inputs, random targets): policy-search training step (soft Gumbel gates on all 16 blocks, fwd + bwd
to weights and logits, SGD + Adam steps) of our fast path and of `exec_mode='official'` (NCHW fp32
like the official code), hard-sharing step, inference of the 3 tasks under the benchmark policy
`BENCH_POLICY` through the `TreeExecutor`, through the official masked mode and per task,
hard-sharing inference and the backbone alone; then the executor time as more blocks are
skipped. Variants are timed in alternating order in one process (ratios stay fair under load
from other processes; `efficientdl.core.benchmark.time_variants`).

    efficientdl adashare bench                                # CPU: 2 threads, batch 2, 193²
    efficientdl adashare bench --device cuda                  # batch 16, 321²
Prints a table and writes JSON (default benchmarks/adashare_speed.json);
benchmarks/adashare_speed.py (same options) also checks the speed targets.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import platform
from collections.abc import Callable
from pathlib import Path

import torch

from efficientdl.adashare.model import AdaShareNet, flops
from efficientdl.adashare.model.executor import TreeExecutor
from efficientdl.adashare.model.policy import Policy
from efficientdl.adashare.objectives.losses import (
    depth_loss,
    normal_loss,
    seg_loss,
    sharing_loss,
    sparsity_loss,
)
from efficientdl.core.benchmark import Timing, saved_mib, time_variants
from efficientdl.core.errors import ConfigError, RunFolderError

TASKS = {"seg": 40, "normal": 3, "depth": 1}
# The benchmark policy (seg, normal, depth): 8, 9, 7 executed; seg and normal share 5 blocks
BENCH_POLICY = ("0101110011001100", "0101111001001011", "1110011000001001")
# Timing protocol: 3 warm-ups, median of 15; on the CPU a search step takes ~30 s, so fewer rounds
PROTOCOL_GPU = {"warmup": 3, "train_warmup": 3, "iters": 15, "train_iters": 15}
PROTOCOL_CPU = {"warmup": 1, "train_warmup": 1, "iters": 5, "train_iters": 3}


class NoSelectedPolicy(RunFolderError, FileNotFoundError):
    """`--run-dir` names a folder without a selected AdaShare policy (a user error on the CLI,
    and the FileNotFoundError that earlier versions raised)."""


def policy_from_strings(tasks, rows) -> Policy:
    """A hard `Policy` from one '0'/'1' string per task ('1' = execute)."""
    for row in rows:
        if set(row) - {"0", "1"}:
            raise ConfigError(f"--policy rows must be strings of 0/1, got {row!r}")
    return Policy(tuple(tasks), torch.tensor([[c == "1" for c in r] for r in rows]))


def _time_rows(fns: dict, device, *, warmup: int, iters: int, desc: str = "timing") -> dict:
    """{name: {'ms': median, 'all_ms': every timed call, 'peak_mb': CUDA peak MiB or None}} of
    `iters` alternating rounds of `fns` after `warmup` calls each (`time_variants`)."""
    timings = time_variants(fns, warmup=warmup, rounds=iters, device=device, progress=desc)
    return {name: _row(t) for name, t in timings.items()}


def _row(timing: Timing) -> dict:
    return {"ms": timing.median_ms, "all_ms": list(timing.times_ms), "peak_mb": timing.peak_mib}


class Setting:
    """Model, optimisers, inputs and targets of the benchmark (one model; `exec_mode` is switched
    per call, so both modes use identical weights)."""

    def __init__(self, args, device) -> None:
        torch.manual_seed(0)
        self.device = device
        self.args = args
        self.model = AdaShareNet(args.backbone, TASKS, "aspp", width=args.width).to(device)
        fmt = torch.channels_last if args.channels_last else torch.contiguous_format
        self.model = self.model.to(memory_format=fmt)
        g = torch.Generator().manual_seed(1)
        b, s = args.batch, args.size
        self.x = torch.rand(b, 3, s, s, generator=g).to(device).contiguous(memory_format=fmt)
        normal = torch.randn(b, 3, s, s, generator=g)
        self.targets = {
            "seg": torch.randint(0, TASKS["seg"], (b, s, s), generator=g).to(device),
            "normal": (normal / normal.norm(dim=1, keepdim=True)).to(device),
            "depth": (0.5 + 9.5 * torch.rand(b, 1, s, s, generator=g)).to(device),
        }
        groups = self.model.parameter_groups()
        self.sgd = torch.optim.SGD(groups["backbone"] + groups["heads"], lr=1e-4, momentum=0.9)
        self.adam = torch.optim.Adam(groups["policy"], lr=0.01)
        self.policy = policy_from_strings(TASKS, args.policy)
        self.gen = torch.Generator().manual_seed(2)

    def autocast(self):
        if self.args.precision == "bf16":
            return torch.autocast(self.device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    @contextlib.contextmanager
    def mode(self, exec_mode: str):
        saved, self.model.exec_mode = self.model.exec_mode, exec_mode
        try:
            yield self.model
        finally:
            self.model.exec_mode = saved

    def loss(self, out: dict) -> torch.Tensor:
        t = self.targets
        return (
            seg_loss(out["seg"].float(), t["seg"])
            + normal_loss(out["normal"].float(), t["normal"])
            + depth_loss(out["depth"].float(), t["depth"])
        )

    def forward_search(self, exec_mode: str) -> torch.Tensor:
        """Forward and loss of one search step (soft gates on all blocks, regularisers)."""
        model = self.model
        with self.mode(exec_mode):
            gates = model.sample_gates(5.0, generator=self.gen)
            with self.autocast():
                out = model(self.x, gates)
        reg = sparsity_loss(model.policy_logits) + sharing_loss(model.policy_logits)
        return self.loss(out) + 0.05 * reg

    def search_step(self, exec_mode: str) -> None:
        """One policy-search step: fwd, bwd to weights and logits, SGD and Adam steps."""
        self.model.train()
        self.sgd.zero_grad(set_to_none=True)
        self.adam.zero_grad(set_to_none=True)
        self.forward_search(exec_mode).backward()
        self.sgd.step()
        self.adam.step()

    def forward_hard(self) -> torch.Tensor:
        with self.autocast():
            out = self.model(self.x)
        return self.loss(out)

    def hard_step(self) -> None:
        """One hard-sharing step (one backbone pass, three heads, SGD)."""
        self.model.train()
        self.sgd.zero_grad(set_to_none=True)
        self.forward_hard().backward()
        self.sgd.step()

    @torch.no_grad()
    def infer(self, policy, exec_mode: str = "fast") -> dict:
        self.model.eval()
        with self.mode(exec_mode), self.autocast():
            return self.model(self.x, policy)

    @torch.no_grad()
    def backbone(self) -> torch.Tensor:
        self.model.eval()
        with self.autocast():
            h = self.model.stem(self.x)
            for block in self.model.blocks:
                h = block.execute(h)
        return h

    def executor(self, policy: Policy) -> TreeExecutor:
        dtype = torch.bfloat16 if self.args.precision == "bf16" else None
        return TreeExecutor(self.model, policy, autocast=dtype)


def learned_policy(run_dir, num_blocks: int) -> Policy:
    """The selected policy of the AdaShare run in `run_dir` (adashare_result.json), checked to be
    over this benchmark's tasks and `num_blocks` blocks."""
    path = Path(run_dir) / "adashare_result.json"
    if not path.is_file():
        raise NoSelectedPolicy(f"{path} does not exist (no selected AdaShare policy in {run_dir})")
    policy = Policy.from_dict(json.loads(path.read_text())["policy"])
    if policy.tasks != tuple(TASKS) or policy.execute.shape[1] != num_blocks:
        raise RunFolderError(
            f"the policy in {path} is over tasks {policy.tasks} and "
            f"{policy.execute.shape[1]} blocks; this benchmark needs {tuple(TASKS)} and "
            f"{num_blocks} blocks"
        )
    return policy


def worst_policy(num_tasks: int, num_blocks: int) -> Policy:
    """All blocks executed except block k for task k: the tasks diverge at blocks 0…K−2, so the tree
    holds almost K full backbones (the executor's worst case)."""
    execute = torch.ones(num_tasks, num_blocks, dtype=torch.bool)
    execute[torch.arange(num_tasks), torch.arange(num_tasks)] = False
    return Policy(tuple(TASKS), execute)


def sweep_policies(num_tasks: int, num_blocks: int, skips, seed: int = 0) -> dict:
    """Identical policies for all tasks that skip nested random sets of `skips` blocks."""
    order = torch.randperm(num_blocks, generator=torch.Generator().manual_seed(seed))
    out = {}
    for s in skips:
        execute = torch.ones(num_tasks, num_blocks, dtype=torch.bool)
        execute[:, order[:s]] = False
        out[s] = Policy(tuple(TASKS), execute)
    return out


def run(args, annotate: Callable[[dict], None] | None = None) -> dict:
    """Run the benchmark, print the table and write the JSON; returns the result dict.
    `annotate(result)`, if given, may add to the result before it is written (benchmarks/
    adashare_speed.py adds its speed targets)."""
    device = torch.device(
        "cuda"
        if args.device == "auto" and torch.cuda.is_available()
        else "cpu"
        if args.device == "auto"
        else args.device
    )
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError("--device cuda requested but CUDA is not available")
    gpu = device.type == "cuda"
    args.batch = args.batch or (16 if gpu else 2)
    args.size = args.size or (321 if gpu else 193)
    for key, default in (PROTOCOL_GPU if gpu else PROTOCOL_CPU).items():
        if getattr(args, key) is None:
            setattr(args, key, default)
    torch.set_num_threads(args.threads)
    # untrained N(0, 0.01²) weights with fresh BN running stats shrink eval-mode activations into
    # denormals, which are ~100× slower on CPUs; flush them to zero for every variant alike
    flushed = torch.set_flush_denormal(True)
    try:
        res = _measure(args, device)
    finally:
        if flushed:
            torch.set_flush_denormal(False)
    if annotate is not None:
        annotate(res)
    print(format_table(res))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(res, indent=1))
    return res


def _measure(args, device) -> dict:
    gpu = device.type == "cuda"
    ours = Setting(args, device)
    # the official code runs NCHW fp32: so does exec_mode='official' here (same initial weights)
    tuned = args.channels_last or args.precision != "fp32"
    off = ours
    if tuned:
        off = Setting(
            argparse.Namespace(**{**vars(args), "channels_last": False, "precision": "fp32"}),
            device,
        )
        off.model.load_state_dict(ours.model.state_dict())
    tree = ours.executor(ours.policy)
    worst = ours.executor(worst_policy(len(TASKS), ours.model.num_blocks))
    main = {
        "search_step_fast": lambda: ours.search_step("fast"),
        "search_step_official": lambda: off.search_step("official"),
        "hard_step": ours.hard_step,
    }
    if tuned:
        main["search_step_fast_nchw_fp32"] = lambda: off.search_step("fast")
    res = {
        "main": _time_rows(
            main, device, warmup=args.train_warmup, iters=args.train_iters, desc="training steps"
        )
    }
    infer = {
        "tree_inference": lambda: tree(ours.x),
        "tree_inference_worst_case": lambda: worst(ours.x),
        "official_policy_inference": lambda: off.infer(off.policy, "official"),
        "per_task_inference": lambda: ours.infer(ours.policy),
        "hard_inference": lambda: ours.infer(None),
        "backbone": ours.backbone,
    }
    if tuned:
        infer["hard_inference_nchw_fp32"] = lambda: off.infer(None)
    if args.run_dir is not None:
        learned = ours.executor(learned_policy(args.run_dir, ours.model.num_blocks))
        infer["tree_inference_learned"] = lambda: learned(ours.x)
        infer["official_learned_inference"] = lambda: off.infer(learned.policy, "official")
    res["main"].update(
        _time_rows(infer, device, warmup=args.warmup, iters=args.iters, desc="inference")
    )
    for name, st, fn in (
        ("search_step_fast", ours, lambda: ours.forward_search("fast")),
        ("search_step_official", off, lambda: off.forward_search("official")),
        ("hard_step", ours, ours.forward_hard),
    ):
        st.model.train()
        res["main"][name]["saved_mb"] = saved_mib(fn)
    tree(ours.x)
    res["tree_stats"] = tree.stats()
    res["hard_macs"] = flops(ours.model, args.size, args.size)["macs_shared"]
    sweep = sweep_policies(len(TASKS), ours.model.num_blocks, args.sweep)
    execs = {s: ours.executor(p) for s, p in sweep.items()}
    timed = _time_rows(
        {str(s): (lambda e=e: e(ours.x)) for s, e in execs.items()},
        device,
        warmup=1,
        iters=args.sweep_iters,
        desc="skip sweep",
    )
    for s, e in execs.items():
        timed[str(s)]["macs"] = e.stats()["macs"]
    res["sweep"] = timed
    res["config"] = {
        "device": str(device),
        "machine": platform.processor() or platform.machine(),
        "gpu": torch.cuda.get_device_name(device) if gpu else None,
        "threads": args.threads,
        "batch": args.batch,
        "size": args.size,
        "precision": args.precision,
        "channels_last": args.channels_last,
        "backbone": args.backbone,
        "width": args.width,
        "torch": torch.__version__,
        "warmup": args.warmup,
        "train_warmup": args.train_warmup,
        "sweep_iters": args.sweep_iters,
        "iters": args.iters,
        "train_iters": args.train_iters,
        "policy": list(args.policy),
        "learned_policy_run": args.run_dir,
        "flush_denormal": device.type == "cpu",
    }
    return res


def tree_cost_ratios(res: dict) -> tuple[float, float]:
    """(time, MACs) of the TreeExecutor on the benchmark policy, each over hard sharing's."""
    time = res["main"]["tree_inference"]["ms"] / res["main"]["hard_inference"]["ms"]
    return time, res["tree_stats"]["macs"] / res["hard_macs"]


def format_table(res: dict) -> str:
    """Markdown tables of a result dict (main rows, skip sweep)."""
    m = res["main"]

    def mem(row):
        if row.get("peak_mb") is not None:
            return f"{row['peak_mb'] / 1024:.2f} GiB peak"
        return f"{row['saved_mb']:.0f} MiB saved" if "saved_mb" in row else "n/a"

    rows = [
        ("policy-search step, ours (fast)", "search_step_fast", "search_step_official"),
        ("policy-search step, exec_mode='official'", "search_step_official", None),
        (
            "policy-search step, ours, NCHW fp32",
            "search_step_fast_nchw_fp32",
            "search_step_official",
        ),
        ("hard-sharing step", "hard_step", None),
        ("3-task inference, TreeExecutor, benchmark policy", "tree_inference", "hard_inference"),
        (
            "3-task inference, TreeExecutor, learned policy (--run-dir)",
            "tree_inference_learned",
            "hard_inference",
        ),
        (
            "3-task inference, exec_mode='official', learned policy",
            "official_learned_inference",
            "hard_inference",
        ),
        (
            "3-task inference, TreeExecutor, worst case (task k skips only block k)",
            "tree_inference_worst_case",
            "hard_inference",
        ),
        (
            "3-task inference, exec_mode='official', same policy",
            "official_policy_inference",
            "hard_inference",
        ),
        (
            "3-task inference, per-task true skip, same policy",
            "per_task_inference",
            "hard_inference",
        ),
        ("hard-sharing inference (1 backbone + 3 heads)", "hard_inference", None),
        ("hard-sharing inference, NCHW fp32", "hard_inference_nchw_fp32", None),
        ("backbone alone", "backbone", None),
    ]
    lines = ["| work | ms | ratio | memory |", "|---|---:|---|---|"]
    for label, key, ref in rows:
        if key not in m:
            continue
        ratio = f"{m[key]['ms'] / m[ref]['ms']:.3f}× {ref}" if ref else ""
        lines.append(f"| {label} | {m[key]['ms']:.1f} | {ratio} | {mem(m[key])} |")
    time_ratio, mac_ratio = tree_cost_ratios(res)
    lines += [
        "",
        f"TreeExecutor on the benchmark policy: {time_ratio:.3f}× hard sharing's time for "
        f"{mac_ratio:.3f}× its MACs (time / MAC ratio {time_ratio / mac_ratio:.3f})",
    ]
    lines += ["", "| blocks skipped (all tasks) | ms | GMACs/image |", "|---:|---:|---:|"]
    for s, row in res["sweep"].items():
        lines.append(f"| {s} | {row['ms']:.1f} | {row['macs'] / 1e9:.2f} |")
    return "\n".join(lines)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The benchmark's command-line options."""
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda", "auto"))
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch", type=int, default=None, help="default 2 (CPU) / 16 (CUDA)")
    parser.add_argument("--size", type=int, default=None, help="default 193 (CPU) / 321 (CUDA)")
    parser.add_argument("--backbone", default="resnet34", choices=("resnet18", "resnet34"))
    parser.add_argument(
        "--policy",
        nargs=3,
        default=list(BENCH_POLICY),
        metavar="BITS",
        help="seg, normal, depth rows of 0/1 (default: the benchmark policy BENCH_POLICY)",
    )
    parser.add_argument("--width", type=int, default=64, help="stage-1 channels (64 = paper)")
    parser.add_argument("--precision", default="fp32", choices=("fp32", "bf16"))
    parser.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=False)
    for key, what in (
        ("warmup", "untimed calls, inference"),
        ("train_warmup", "untimed calls, training steps"),
        ("iters", "timed rounds, inference"),
        ("train_iters", "timed rounds, training steps"),
    ):
        parser.add_argument(
            "--" + key.replace("_", "-"),
            type=int,
            default=None,
            help=f"{what} (default {PROTOCOL_GPU[key]} on CUDA, {PROTOCOL_CPU[key]} on CPU)",
        )
    parser.add_argument(
        "--run-dir",
        default=None,
        help="an AdaShare run on these three tasks: also time its selected (learned) policy",
    )
    parser.add_argument("--sweep", type=int, nargs="+", default=[0, 4, 8, 12, 16])
    parser.add_argument("--sweep-iters", type=int, default=3)
    parser.add_argument("--out", default="benchmarks/adashare_speed.json")
