"""TSSL-BP training-step speed vs the ANN floor, measured side by side in one run.

For each paper network: one full step (forward, kernel/count loss, backward, clip, AdamW, clamp) of
our network with the fused backend (the C kernels on the CPU, the Triton kernels on CUDA; the JSON
records which as `fused_kernels`), the same with the torch reference backend, and the "floor":
the same conv/linear/pool/dropout layers with ReLU instead of the neuron and T folded into the batch
(B·T images), same loss, clip, AdamW and clamp. Also the neuron alone (forward + backward).
The variants of a row are timed in alternating order in one process
(`efficientdl.core.benchmark.time_variants`); the table shows medians, the activation memory
autograd saves (`saved_mib`) and, on CUDA, peak allocated memory.

    python benchmarks/snn_speed.py                       # CPU: mnist_cnn, fmnist_cnn, 2 threads
    python benchmarks/snn_speed.py --device cuda --nets all
    efficientdl snn bench [same options]
Prints a table and writes JSON (default benchmarks/snn_speed.json).
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import platform

import torch
import torch.nn.functional as F
from torch import nn

from efficientdl.core import registry
from efficientdl.core.benchmark import saved_mib, time_variants
from efficientdl.core.config import add_config_args, config_from_args, refuse_unread
from efficientdl.core.errors import ConfigError
from efficientdl.core.runtime import select_device
from efficientdl.snn import SpikingConv2d, SpikingDropout, SpikingLinear, SumPool2d, fused, tsslbp
from efficientdl.snn.config import TSSLBPRecipe, recipe
from efficientdl.snn.networks import build, list_models
from efficientdl.snn.train import compute_loss, make_optimizer, train_step


class FloorNet(nn.Module):
    """The spiking network's layers as a ReLU ANN on [B·T, ...] inputs (the cost floor)."""

    def __init__(self, net):
        super().__init__()
        layers = []
        for layer in net.layers:
            if isinstance(layer, SpikingConv2d):
                conv = nn.Conv2d(
                    layer.in_channels,
                    layer.out_channels,
                    layer.kernel_size,
                    stride=layer.stride,
                    padding=layer.padding,
                    bias=False,
                )
                layers += [conv, nn.ReLU()]
            elif isinstance(layer, SpikingLinear):
                layers += [
                    nn.Flatten(),
                    nn.Linear(layer.in_features, layer.out_features, bias=False),
                    nn.ReLU(),
                ]
            elif isinstance(layer, SumPool2d):
                layers.append(_Pool(layer.kernel_size, layer.scale))
            elif isinstance(layer, SpikingDropout):
                layers.append(nn.Dropout(layer.p))
        self.layers = nn.Sequential(*layers)

    def clamp_weights_(self, bound):
        with torch.no_grad():
            for p in self.parameters():
                p.clamp_(-bound, bound)

    def forward(self, x):
        return self.layers(x)


class _Pool(nn.Module):
    def __init__(self, k, scale):
        super().__init__()
        self.k, self.scale = k, scale

    def forward(self, x):
        return F.avg_pool2d(x, self.k, divisor_override=1) * self.scale


def floor_step(model, optimizer, x, y, r, T):
    """One ANN step with the same loss, clip, AdamW and clamp; x is [B·T, ...]."""
    optimizer.zero_grad(set_to_none=True)
    out = model(x)
    loss = compute_loss(out.reshape(T, -1, out.shape[-1]), y, r)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), r.grad_clip, foreach=True)
    optimizer.step()
    model.clamp_weights_(r.weight_clamp)


def _spiking_forward(net, x, y, r):
    net.train()
    return compute_loss(net(x), y, r)


def _floor_forward(model, x, y, r, T):
    out = model(x)
    return compute_loss(out.reshape(T, -1, out.shape[-1]), y, r)


def bench_network(name, device, batch, warmup, iters, r=None):
    """Times of our step (fused, torch) and the floor for one network, trained with recipe `r`
    (default: the paper's recipe of `name`)."""
    torch.manual_seed(0)
    shape = registry.get("snn", name).input_shape
    if r is None:
        r = recipe(name.replace("_t100", ""), device=device.type)
    T = r.T
    if name == "nmnist_cnn":
        x = (torch.rand(T, batch, *shape, device=device) < 0.1).float()
        x_floor = x.reshape(T * batch, *shape)
    else:
        x = torch.randn(batch, *shape, device=device)
        x_floor = x.unsqueeze(0).expand(T, *x.shape).reshape(T * batch, *shape)
    y = torch.randint(0, 10, (batch,), device=device)
    row = {"network": name, "batch": batch, "T": T}
    steps, forwards = {}, {}
    for backend in ("fused", "torch"):
        net = build(name, **{**r.model_overrides(), "backend": backend}).to(device)
        steps[backend] = functools.partial(train_step, net, make_optimizer(net, r), x, y, r)
        forwards[backend] = functools.partial(_spiking_forward, net, x, y, r)
    floor = FloorNet(build(name, **r.model_overrides())).to(device)
    steps["floor"] = functools.partial(
        floor_step, floor, make_optimizer(floor, r), x_floor, y, r, T
    )
    forwards["floor"] = functools.partial(_floor_forward, floor, x_floor, y, r, T)
    for key, timing in time_variants(steps, warmup=warmup, rounds=iters, device=device).items():
        row[f"{key}_ms"] = timing.median_ms
        row[f"{key}_peak_mib"] = timing.peak_mib
        row[f"{key}_saved_mib"] = saved_mib(forwards[key])
    row["fused_over_floor"] = row["fused_ms"] / row["floor_ms"]
    row["torch_over_fused"] = row["torch_ms"] / row["fused_ms"]
    row["fused_img_per_s"] = 1000 * batch / row["fused_ms"]
    return row


def _neuron_step(current, grad, backend):
    tsslbp(current, tau_m=5.0, tau_s=3.0, threshold=1.0, backend=backend).backward(grad)


def bench_neuron(device, T, neurons, warmup, iters):
    """Forward + backward of the neuron alone on [T, 64, neurons] fp32, both backends."""
    current = (torch.rand(T, 64, neurons, device=device) * 1.5).requires_grad_()
    grad = torch.randn_like(current)
    row = {"T": T, "shape": [T, 64, neurons]}
    fns = {b: functools.partial(_neuron_step, current, grad, b) for b in ("fused", "torch")}
    for key, timing in time_variants(fns, warmup=warmup, rounds=iters, device=device).items():
        row[f"{key}_ms"] = timing.median_ms
    row["torch_over_fused"] = row["torch_ms"] / row["fused_ms"]
    return row


def _triple(row, kind):
    values = [row[f"{k}_{kind}_mib"] for k in ("fused", "torch", "floor")]
    return "/".join("n/a" if v is None else f"{v:.1f}" for v in values)


NOT_STEP_KEYS = ("epochs", "train_subset", "test_subset", "dataset", "data_root", "data_options",
                 "normalize", "seed", "device", "threads", "out_dir", "run_name",
                 "checkpoint_every")  # fmt: skip
STEP_KEYS = tuple(f.name for f in dataclasses.fields(TSSLBPRecipe) if f.name not in NOT_STEP_KEYS)
"""The recipe keys `snn bench` reads: what one training step computes (the network, loss,
optimiser and batch size); `--device` and `--threads` are its own options."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The benchmark's options (shared by benchmarks/snn_speed.py and `efficientdl snn bench`)."""
    add_config_args(
        parser, method="snn", example="fmnist_cnn (times that recipe's network)", required=False
    )
    parser.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N or auto")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument(
        "--nets",
        default=None,
        help="comma list or 'all' (CPU default: the MNIST "
        "and Fashion-MNIST CNNs; GPU default: all)",
    )
    parser.add_argument("--batch", type=int, default=50)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--iters", type=int, default=20)
    parser.add_argument(
        "--neurons",
        type=int,
        default=None,
        help="neuron benchmark width (default 65536 on GPU, 4096 on CPU)",
    )
    parser.add_argument("--out", default="benchmarks/snn_speed.json")


def run(args) -> dict:
    """Run the benchmark for parsed `args`; print the table, write and return the JSON."""
    device = select_device(args.device)  # ConfigError for an unknown or absent device
    torch.set_num_threads(args.threads)
    r = None
    if args.config is not None:
        refuse_unread(args.overrides, reads=STEP_KEYS, command="snn bench")
        r = config_from_args(TSSLBPRecipe, args).validate()
        nets, args.batch = [r.model], r.batch_size
    elif args.overrides:
        raise ConfigError("--set needs --config (the recipe to override)")
    elif args.nets in (None, "") and device.type == "cpu":
        nets = ["mnist_cnn", "fmnist_cnn"]
    elif args.nets in (None, "", "all"):
        nets = list_models()
    else:
        nets = args.nets.split(",")
    neurons = args.neurons or (65536 if device.type == "cuda" else 4096)
    rows = [bench_network(n, device, args.batch, args.warmup, args.iters, r) for n in nets]
    neuron_rows = [
        bench_neuron(device, T, neurons, args.warmup, args.iters) for T in (4, 8, 16, 32)
    ]
    kernels = fused.implementation(device.type)
    print(
        f"\ndevice {device} ({platform.processor() or platform.machine()}), "
        f"threads {torch.get_num_threads()}, torch {torch.__version__}, fused = {kernels} kernels"
    )
    print(
        f"{'network':14s} {'fused ms':>9s} {'torch ms':>9s} {'floor ms':>9s} "
        f"{'fused/floor':>11s} {'torch/fused':>11s} {'img/s':>8s} "
        f"{'saved MiB fused/torch/floor':>28s} {'peak MiB fused/torch/floor':>27s}"
    )
    for r in rows:
        print(
            f"{r['network']:14s} {r['fused_ms']:9.2f} {r['torch_ms']:9.2f} {r['floor_ms']:9.2f} "
            f"{r['fused_over_floor']:11.2f} {r['torch_over_fused']:11.2f} "
            f"{r['fused_img_per_s']:8.0f} {_triple(r, 'saved'):>28s} {_triple(r, 'peak'):>27s}"
        )
    print(f"\nneuron alone, fwd+bwd, [T, 64, {neurons}] fp32")
    for r in neuron_rows:
        print(
            f"T={r['T']:<3d} fused {r['fused_ms']:8.3f} ms  torch {r['torch_ms']:8.3f} ms  "
            f"x{r['torch_over_fused']:.1f}"
        )
    result = {
        "device": str(device),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "fused_kernels": kernels,
        "networks": rows,
        "neuron": neuron_rows,
    }
    with open(args.out, "w") as handle:
        json.dump(result, handle, indent=2)
    print(f"\nwrote {args.out}")
    return result
