"""Run an exported NIR graph in snnTorch or Norse, through their own NIR importers, and compare
it with the efficientdl network it came from (spike counts per layer, predicted classes).

Both importers are used as published, with two adaptations documented in docs/nir.md: the graph
is exported with `fold_pool_scale=True` (neither reads a `Scale` node) and at the time step each
one integrates with (snnTorch's importer fixes dt = 1e-4; Norse's `from_nir` is given dt = 1), and
their `Flatten(start_dim=0)` (NIR's batch-free axis numbering) is applied from axis 1, after the
batch axis.
"""

from __future__ import annotations

import contextlib
import io
import warnings

import torch

from efficientdl.core.errors import UserError
from efficientdl.snn.functional import lif_states, psp
from efficientdl.snn.layers import SpikingConv2d, SpikingLinear
from efficientdl.snn.losses import predict
from efficientdl.snn.network import SpikingNetwork
from efficientdl.snn.nir_io import export_nir

SIMULATORS = ("snntorch", "norse")
DT = {"snntorch": 1e-4, "norse": 1.0}
"""The time step each simulator's graph is exported with (snnTorch's importer assumes 1e-4)."""
EXTRA = "pip install 'efficientdl[nir-simulators]'"


def load_simulator(
    net: SpikingNetwork,
    input_shape,
    simulator: str,
    *,
    soft_reset: bool = False,
) -> torch.nn.Module:
    """`net` exported to NIR and read back by `simulator`'s own importer (a torch module that
    runs one time step per call). `soft_reset` (Norse only, to measure how much the reset
    matters) resets v to v − v_threshold instead of v_reset."""
    if simulator not in SIMULATORS:
        raise UserError(f"simulator must be one of {SIMULATORS}, got {simulator!r}")
    if simulator != "norse" and soft_reset:
        raise UserError("soft_reset is an option of the Norse reader only")
    graph = export_nir(net, input_shape, dt=DT[simulator], fold_pool_scale=True)
    try:
        if simulator == "snntorch":
            from snntorch.import_nir import import_from_nir as read
        else:
            from norse.torch.functional.reset import reset_subtract, reset_value
            from norse.torch.utils.import_nir import from_nir

            def read(g):
                reset = reset_subtract if soft_reset else reset_value
                return from_nir(g, dt=DT[simulator], ignore_warnings=True, reset_method=reset)
    except Exception as err:  # a missing package, or an install broken at import
        raise UserError(f"{simulator} cannot be imported ({err}); {EXTRA}") from None
    with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # both importers print or warn once per node
        module = read(graph)
    for m in module.modules():
        if isinstance(m, torch.nn.Flatten) and m.start_dim == 0:
            m.start_dim = 1  # NIR numbers axes without the batch axis
    return module.eval()


def _neuron_modules(module: torch.nn.Module, simulator: str) -> dict[str, torch.nn.Module]:
    if simulator == "snntorch":
        from snntorch import Synaptic

        kind = Synaptic
    else:
        from norse.torch.utils.import_nir import CubaLIF as kind
    return {name: m for name, m in module.named_modules() if isinstance(m, kind)}


def _steps(net: SpikingNetwork, x: torch.Tensor) -> torch.Tensor:
    """The input of each time step [T, N, ...]: a static image repeated, or the event frames."""
    return x.unsqueeze(0).expand(net.T, *x.shape) if net.T is not None else x


@torch.no_grad()
def simulate(
    module: torch.nn.Module,
    simulator: str,
    net: SpikingNetwork,
    x: torch.Tensor,
):
    """(output spikes [T, N, K], {neuron node: spike counts [N, ...]}) of an imported graph
    (`load_simulator`) on the input `x` of `net` (an [N, ...] image batch, or [T, N, ...] frames
    for a network without T), one step per call from a fresh state."""
    counts, hooks = {}, []
    for name, m in _neuron_modules(module, simulator).items():

        def hook(_m, _inputs, output, name=name):
            spikes = output[0] if isinstance(output, tuple) else output
            counts[name] = counts.get(name, 0) + spikes.detach()

        hooks.append(m.register_forward_hook(hook))
    try:
        if simulator == "snntorch":
            from snntorch.utils import reset

            reset(module)  # its neurons keep their state in the modules (init_hidden=True)
        state, outputs = None, []
        for frame in _steps(net, x):
            if simulator == "snntorch":
                out = module(frame)
                out = out[0] if isinstance(out, tuple) else out
            else:
                out, state = module(frame, state)
            outputs.append(out)
    finally:
        for h in hooks:
            h.remove()
    return torch.stack(outputs), counts


@torch.no_grad()
def our_spikes(net: SpikingNetwork, x: torch.Tensor):
    """(output trace [T, N, K], {neuron node: spike counts [N, ...]}) of `net` on `x`, with the
    node names `export_nir` gives its neurons."""
    counts, hooks = {}, []
    for i, layer in enumerate(net.layers):
        if isinstance(layer, SpikingConv2d | SpikingLinear):

            def hook(neuron, inputs, _output, name=f"lif_{i}"):
                counts[name] = lif_states(inputs[0], neuron.settings).spikes.sum(0).to(x.dtype)

            hooks.append(layer.neuron.register_forward_hook(hook))
    try:
        trace = net(x)
    finally:
        for h in hooks:
            h.remove()
    return trace, counts


def _pearson(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.double().flatten(), b.double().flatten()
    a, b = a - a.mean(), b - b.mean()
    denominator = (a.norm() * b.norm()).item()
    return float((a @ b).item() / denominator) if denominator > 0 else float("nan")


def compare(
    net: SpikingNetwork,
    input_shape,
    batches,
    simulator: str,
    *,
    soft_reset: bool = False,
) -> dict:
    """Agreement of `simulator` with `net` over `batches` of (inputs, labels): the fraction of
    samples with the same predicted class (our readout on the simulator's output spikes, filtered
    with the last layer's τs), both accuracies, and per neuron layer the Pearson correlation of
    the spike counts (per sample and neuron), the number and fraction of equal counts and the mean
    counts. `soft_reset`: as `load_simulator`."""
    net = net.eval()
    module = load_simulator(net, input_shape, simulator, soft_reset=soft_reset)
    tau_s = net.neurons()[-1].tau_s
    same = ours_right = sim_right = n = 0
    ours_counts: dict[str, list] = {}
    sim_counts: dict[str, list] = {}
    for x, labels in batches:
        trace, mine = our_spikes(net, x)
        out, theirs = simulate(module, simulator, net, x)
        if set(mine) != set(theirs):
            raise RuntimeError(f"{simulator} neurons {sorted(theirs)} != ours {sorted(mine)}")
        ours, sim = predict(trace), predict(psp(out.to(trace.dtype), tau_s))
        same += int((ours == sim).sum())
        ours_right += int((ours == labels).sum())
        sim_right += int((sim == labels).sum())
        n += len(labels)
        for name in mine:
            ours_counts.setdefault(name, []).append(mine[name].flatten(1))
            sim_counts.setdefault(name, []).append(theirs[name].to(mine[name].dtype).flatten(1))
    layers = {}
    for name in sorted(ours_counts, key=lambda s: int(s.split("_")[1])):
        a, b = torch.cat(ours_counts[name]), torch.cat(sim_counts[name])
        layers[name] = {
            "spike_count_correlation": _pearson(a, b),
            "counts": a.numel(),
            "differing_counts": int((a != b).sum()),
            "equal_count_fraction": float((a == b).double().mean()),
            "mean_spikes_ours": float(a.double().mean()),
            "mean_spikes_simulator": float(b.double().mean()),
        }
    return {
        "simulator": simulator,
        "dt": DT[simulator],
        "reset": "subtract" if soft_reset else "zero",
        "samples": n,
        "prediction_agreement": same / n,
        "accuracy_ours": ours_right / n,
        "accuracy_simulator": sim_right / n,
        "layers": layers,
    }


__all__ = ["DT", "EXTRA", "SIMULATORS", "compare", "load_simulator", "our_spikes", "simulate"]
