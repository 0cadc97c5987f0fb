"""Run report for TSSL-BP: accuracy curve, spike raster of a sample, firing rate per layer."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from matplotlib.figure import Figure

from efficientdl.snn.functional import lif_states
from efficientdl.snn.layers import TSSLBPNeuron


def firing_on_test(net, test_set, recipe, *, batches: int = 10):
    """Firing statistics of `net` on the first `batches` test batches."""
    from efficientdl.snn.stats import firing_summary

    n = min(len(test_set), batches * recipe.batch_size)
    idx = torch.arange(n).split(recipe.batch_size)
    return firing_summary(net, (test_set.get_batch(i) for i in idx))


@torch.no_grad()
def spike_raster(net, x: torch.Tensor) -> dict[str, torch.Tensor]:
    """Spikes [T, neurons] of every spiking layer for the single sample `x` (batch of one)."""
    net.eval()
    names = {m: n for n, m in net.named_modules() if isinstance(m, TSSLBPNeuron)}
    spikes: dict[str, torch.Tensor] = {}

    def hook(module, inputs, _output):
        states = lif_states(inputs[0], module.settings)
        spikes[names[module].removesuffix(".neuron")] = states.spikes[:, 0].reshape(
            states.spikes.shape[0], -1
        )

    handles = [m.register_forward_hook(hook) for m in names]
    try:
        net(x)
    finally:
        for h in handles:
            h.remove()
    return spikes


def plot_accuracy(history, path: Path, *, title: str | None = None) -> None:
    """Train and test accuracy per epoch of a run's metrics `history` as a PNG at `path`."""
    epochs = [r["epoch"] for r in history]
    fig = Figure(figsize=(5, 3.5))
    ax = fig.add_subplot()
    ax.plot(epochs, [100 * r["train_accuracy"] for r in history], "o-", label="train")
    ax.plot(epochs, [100 * r["test_accuracy"] for r in history], "s-", label="test")
    ax.set_xlabel("epoch")
    ax.set_ylabel("accuracy (%)")
    ax.grid(alpha=0.3)
    ax.legend()
    if title:
        ax.set_title(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def _plot_raster(spikes: dict[str, torch.Tensor], label: int, path: Path) -> None:
    fig = Figure(figsize=(3 * len(spikes), 3.2))
    axes = fig.subplots(1, len(spikes), squeeze=False)
    for ax, (name, s) in zip(axes[0], spikes.items()):
        t, neuron = torch.nonzero(s.cpu(), as_tuple=True)
        ax.scatter(neuron.numpy(), t.numpy(), s=2, marker="|", color="k")
        ax.set_title(f"{name}\n{int(s.sum())} spikes", fontsize=8)
        ax.set_xlabel("neuron")
        ax.set_ylim(-0.5, s.shape[0] - 0.5)
        ax.set_xlim(-0.5, s.shape[1] - 0.5)
    axes[0][0].set_ylabel("time step")
    fig.suptitle(f"spike raster of one test sample (label {label})", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def _plot_rates(report, path: Path) -> None:
    names = [layer.name for layer in report.layers]
    fig = Figure(figsize=(5, 3.2))
    ax = fig.add_subplot()
    ax.bar(range(len(names)), [100 * layer.rate for layer in report.layers])
    ax.set_xticks(range(len(names)), names, rotation=30, fontsize=8)
    ax.set_ylabel("firing rate (% of neuron-steps)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def _backend_line(recipe, summary: dict) -> str:
    """Which backward the run trained with and which backend ran it (from its summary.json)."""
    ran = summary.get("backend", "not recorded (a run from an older version)")
    return (
        f"TSSL-BP backward `{summary.get('algorithm', recipe.algorithm)}`; backend that ran: "
        f"`{ran}` (asked for `{summary.get('backend_requested', recipe.backend)}`)."
    )


def write_report(run_dir: str | Path) -> Path:
    """Write report.md, accuracy.png, raster.png and firing_rates.png into `run_dir`."""
    from efficientdl.snn.train import load_run

    run_dir = Path(run_dir)
    history = json.loads((run_dir / "metrics.json").read_text())
    summary = json.loads((run_dir / "summary.json").read_text())
    recipe, net, (_, test_set) = load_run(run_dir)
    plot_accuracy(history, run_dir / "accuracy.png")
    x, y = test_set.get_batch(torch.tensor([0]))
    _plot_raster(spike_raster(net, x), int(y[0]), run_dir / "raster.png")
    firing = firing_on_test(net, test_set, recipe)
    _plot_rates(firing, run_dir / "firing_rates.png")
    (run_dir / "firing.json").write_text(json.dumps(firing.to_dict(), indent=2))
    rows = "\n".join(
        f"| {r['epoch']} | {r['train_loss']:.4f} | {100 * r['train_accuracy']:.2f} | "
        f"{100 * r['test_accuracy']:.2f} | {r['epoch_seconds']:.1f} |"
        for r in history
    )
    layers = "\n".join(
        f"| {layer.name} | {layer.neurons} | {100 * layer.rate:.2f} | "
        f"{100 * layer.silent_fraction:.1f} | {layer.synops_per_sample:,.0f} |"
        for layer in firing.layers
    )
    text = f"""# TSSL-BP run: {recipe.model} on {recipe.dataset}

T = {recipe.T}, τm = {recipe.tau_m}, τs = {recipe.tau_s}, batch {recipe.batch_size}, lr {recipe.lr},
seed {summary["seed"]}, {summary["train_samples"]} training / {summary["test_samples"]} test images.
{_backend_line(recipe, summary)}

**Final-epoch test accuracy: {100 * summary["final_test_accuracy"]:.2f} %**;
best over epochs: {100 * summary["best_test_accuracy"]:.2f} % (max of test accuracy, as the paper).

| epoch | train loss (sum/sample) | train acc % | test acc % | seconds |
|---|---|---|---|---|
{rows}

![accuracy](accuracy.png)

## Spikes

Firing per layer on {firing.layers[0].samples if firing.layers else 0} test images; SynOps per image
{firing.synops_per_sample:,.0f} vs {firing.ann_macs_per_sample:,.0f} MACs for the same ANN.

| layer | neurons | firing rate % | silent % | SynOps / image |
|---|---|---|---|---|
{layers}

![raster](raster.png)
![firing rates](firing_rates.png)
"""
    path = run_dir / "report.md"
    path.write_text(text)
    return path
