"""Firing statistics and synaptic operations (SynOps) of spiking networks.

`FiringMonitor` hooks into every `TSSLBPNeuron` of a model (through the neuron's `monitor`
attribute, so it costs nothing while inactive) and accumulates, per spiking layer and on the
model's device, the spike count of every output position summed over time steps and samples.
`report()` turns the counts into firing rates and operation counts:

- SynOps of a weight layer l ≥ 2: Σ_i count_in[i]·fanout_l(i), where count_in are the spikes of
  the previous spiking layer arriving at input position i (summed over any SumPool2d windows in
  between, unscaled; dropout ignored) and fanout_l(i) is the number of weights input i touches
  (linear: out_features; conv: Cout × number of output windows covering i, padding and stride
  included exactly). Each spike is delivered once through the weights; the PSP filter lives in
  the postsynaptic state (W ∗ psp(s) = psp(W ∗ s)).
- Layer 1 receives real-valued input: it costs T × its MACs per image (multiply-accumulates).
- The ANN comparison runs the same weight layers once per image: Σ_l MACs_l.

Layers are matched to their inputs in module registration order (`model.modules()`), which is the
forward order for `SpikingNetwork` (an `nn.Sequential`).
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

from efficientdl.snn.functional import lif_states
from efficientdl.snn.layers import SpikingConv2d, SpikingLinear, SumPool2d, TSSLBPNeuron

E_AC = 0.9e-12  # J per 32-bit float add (45 nm), commonly quoted in SNN papers
E_MAC = 4.6e-12  # J per 32-bit float multiply-add (45 nm)


@dataclass
class LayerFiring:
    """Firing statistics of one spiking layer over everything the monitor saw.

    `spikes` is the total spike count; `rate` = spikes / (samples·timesteps·neurons);
    `silent_fraction` = share of neurons (output positions) that never fired;
    `synops_per_sample` = synaptic operations this layer *receives* per sample (0 for the first
    weight layer, whose cost is counted as MACs in `FiringReport.first_layer_macs_per_sample`).
    `timesteps` is T (the mean T per sample if batches with different T were seen).
    """

    name: str
    neurons: int
    samples: int
    timesteps: int | float
    spikes: int
    rate: float
    spikes_per_sample: float
    silent_fraction: float
    synops_per_sample: float


@dataclass
class FiringReport:
    """Per-layer firing statistics plus per-sample operation counts of the whole network."""

    layers: list[LayerFiring]
    synops_per_sample: float
    first_layer_macs_per_sample: float
    ann_macs_per_sample: float

    def energy(self, e_ac: float = E_AC, e_mac: float = E_MAC) -> dict[str, float]:
        """Estimated energy in joules per sample: {'snn': ..., 'ann': ...}.

        snn = synops_per_sample·e_ac + first_layer_macs_per_sample·e_mac (layer 1 takes T
        real-valued inputs, so T × its MACs); ann = ann_macs_per_sample·e_mac (one pass).
        """
        snn = self.synops_per_sample * e_ac + self.first_layer_macs_per_sample * e_mac
        return {"snn": snn, "ann": self.ann_macs_per_sample * e_mac}

    def to_dict(self) -> dict:
        """JSON-ready dict: layers, totals and `energy_j_per_sample` at the default energies."""
        return {
            "layers": [asdict(layer) for layer in self.layers],
            "synops_per_sample": self.synops_per_sample,
            "first_layer_macs_per_sample": self.first_layer_macs_per_sample,
            "ann_macs_per_sample": self.ann_macs_per_sample,
            "energy_j_per_sample": self.energy(),
        }


@dataclass
class _Tally:
    """Accumulated spike counts per output position (int64, on device) of one neuron layer."""

    counts: torch.Tensor
    samples: int
    sample_steps: int

    def timesteps(self) -> int | float:
        steps = self.sample_steps / self.samples
        return int(steps) if self.sample_steps % self.samples == 0 else steps


def _neuron_names(model: nn.Module) -> dict[TSSLBPNeuron, str]:
    """Neuron → name of the conv/linear layer owning it (else the neuron's own name)."""
    names = {m: name for name, m in model.named_modules() if isinstance(m, TSSLBPNeuron)}
    for name, m in model.named_modules():
        if isinstance(m, SpikingConv2d | SpikingLinear):
            names[m.neuron] = name
    return names


class FiringMonitor:
    """Context manager collecting per-layer spike counts of every `TSSLBPNeuron` in `model`.

    While active (`with FiringMonitor(model) as mon: model(x)`), each neuron forward reruns the
    LIF recurrence on its detached input current (`lif_states`) and adds the spikes, summed over
    t and n, to a per-position count tensor on the current's device (no host sync). Outputs and
    gradients of the model are unchanged. Counts persist across `with` blocks until `reset()`.
    """

    def __init__(self, model: nn.Module):
        self.model = model
        self._names = _neuron_names(model)
        self._tallies: dict[TSSLBPNeuron, _Tally] = {}
        self._previous: dict[TSSLBPNeuron, object] = {}

    def __enter__(self) -> FiringMonitor:
        for neuron in self._names:
            self._previous[neuron] = neuron.monitor
            neuron.monitor = self
        return self

    def __exit__(self, *exc_info) -> None:
        for neuron, previous in self._previous.items():
            neuron.monitor = previous
        self._previous = {}

    def reset(self) -> None:
        """Forget all counts seen so far."""
        self._tallies = {}

    def observe(self, neuron: TSSLBPNeuron, current: torch.Tensor) -> None:
        """Add the spikes `neuron` emits for input current `[T, N, ...]` to its layer's tally."""
        spikes = lif_states(current.detach(), neuron.settings).spikes
        counts = spikes.sum(dim=(0, 1))
        T, N = current.shape[:2]
        tally = self._tallies.get(neuron)
        if tally is None:
            self._tallies[neuron] = _Tally(counts, N, T * N)
            return
        if tally.counts.shape != counts.shape:
            raise ValueError(
                f"layer {self._name(neuron)!r}: output shape {tuple(counts.shape)} differs from "
                f"earlier batches {tuple(tally.counts.shape)}"
            )
        tally.counts += counts
        tally.samples += N
        tally.sample_steps += T * N

    def _name(self, neuron: TSSLBPNeuron) -> str:
        if neuron not in self._names:
            self._names = _neuron_names(self.model)
        return self._names.get(neuron, type(neuron).__name__)

    def spike_counts(self) -> dict[str, torch.Tensor]:
        """Layer name → spike count per output position (`[C, H, W]` or `[F]`, int64)."""
        return {self._name(n): tally.counts for n, tally in self._tallies.items()}

    def report(self) -> FiringReport:
        """Firing rates and operation counts of everything observed so far (host sync here only)."""
        counts = {n: t.counts.detach().cpu().to(torch.float64) for n, t in self._tallies.items()}
        synops, first_macs, ann_macs = _operation_counts(self.model, self._tallies, counts)
        layers = [
            _layer_firing(self._name(n), tally, counts[n], synops.get(n, 0.0))
            for n, tally in self._tallies.items()
        ]
        order = {n: i for i, n in enumerate(self._names.values())}
        layers.sort(key=lambda layer: order.get(layer.name, len(order)))
        return FiringReport(
            layers=layers,
            synops_per_sample=sum(layer.synops_per_sample for layer in layers),
            first_layer_macs_per_sample=first_macs,
            ann_macs_per_sample=ann_macs,
        )


def _layer_firing(name: str, tally: _Tally, counts: torch.Tensor, synops: float) -> LayerFiring:
    """Summarise one layer's tally; `synops` is its total received SynOps over all samples."""
    neurons, spikes = counts.numel(), int(counts.sum().item())
    return LayerFiring(
        name=name,
        neurons=neurons,
        samples=tally.samples,
        timesteps=tally.timesteps(),
        spikes=spikes,
        rate=spikes / (tally.sample_steps * neurons),
        spikes_per_sample=spikes / tally.samples,
        silent_fraction=float((counts == 0).sum().item()) / neurons,
        synops_per_sample=synops / tally.samples,
    )


def _pair(value) -> tuple[int, int]:
    return (value, value) if isinstance(value, int) else tuple(value)


def conv_fanout(layer: SpikingConv2d, height: int, width: int) -> torch.Tensor:
    """Output windows covering each input position `[H, W]` (float64) for `layer`'s geometry.

    Computed as the transposed convolution of an all-ones output map with an all-ones kernel;
    `output_padding` restores input rows/columns the last window does not reach. Multiply by
    Cout for the number of weights each input touches.
    """
    kh, kw = layer.weight.shape[-2:]
    (sh, sw), (ph, pw) = _pair(layer.stride), _pair(layer.padding)
    out_h, out_w = (height + 2 * ph - kh) // sh + 1, (width + 2 * pw - kw) // sw + 1
    extra = (height + 2 * ph - kh - (out_h - 1) * sh, width + 2 * pw - kw - (out_w - 1) * sw)
    ones_out = torch.ones(1, 1, out_h, out_w, dtype=torch.float64)
    kernel = torch.ones(1, 1, kh, kw, dtype=torch.float64)
    return F.conv_transpose2d(
        ones_out, kernel, stride=(sh, sw), padding=(ph, pw), output_padding=extra
    )[0, 0]


def _macs_per_image(layer: nn.Module, out_shape: torch.Size) -> float:
    """Multiply-accumulates of one pass of `layer` on one image, from its output shape."""
    if isinstance(layer, SpikingLinear):
        return float(layer.in_features * layer.out_features)
    return float(out_shape.numel() * layer.weight[0].numel())


def _received_synops(layer: nn.Module, counts_in: torch.Tensor) -> float:
    """Σ_i counts_in[i]·fanout(i): SynOps `layer` receives from per-position input spike counts."""
    if isinstance(layer, SpikingLinear):
        return float(counts_in.sum().item()) * layer.out_features
    if counts_in.dim() != 3 or counts_in.shape[0] != layer.in_channels:
        raise ValueError(f"conv input counts have shape {tuple(counts_in.shape)}")
    fanout = conv_fanout(layer, *counts_in.shape[1:]) * layer.out_channels
    return float((counts_in.sum(0) * fanout).sum().item())


def _sum_pool(counts: torch.Tensor, k: int) -> torch.Tensor:
    """Spike counts `[C, H, W]` summed over non-overlapping k×k windows (unscaled)."""
    C, H, W = counts.shape
    return counts.reshape(C, H // k, k, W // k, k).sum((2, 4))


def _operation_counts(model, tallies, counts) -> tuple[dict, float, float]:
    """Walk weight layers and pools in order: (neuron → total SynOps, first-layer MACs per
    sample, ANN MACs per image). Layers never observed contribute nothing."""
    synops: dict[TSSLBPNeuron, float] = {}
    first_macs = ann_macs = 0.0
    incoming, seen_weight_layer = None, False
    for module in model.modules():
        if isinstance(module, SumPool2d):
            if incoming is not None:
                incoming = _sum_pool(incoming, module.kernel_size)
            continue
        if not isinstance(module, SpikingConv2d | SpikingLinear):
            continue
        tally = tallies.get(module.neuron)
        if tally is not None:
            ann_macs += _macs_per_image(module, tally.counts.shape)
            if not seen_weight_layer:
                first_macs = tally.timesteps() * _macs_per_image(module, tally.counts.shape)
            elif incoming is not None:
                synops[module.neuron] = _received_synops(module, incoming)
        seen_weight_layer = True
        incoming = counts.get(module.neuron)
    return synops, first_macs, ann_macs


def _model_device(model: nn.Module) -> torch.device:
    param = next(model.parameters(), None)
    return param.device if param is not None else torch.device("cpu")


def _inputs(loader_or_batch, max_batches: int | None) -> Iterator[torch.Tensor]:
    """Input tensors from one batch tensor or an iterable of `(x, y)` batches (or bare `x`)."""
    if isinstance(loader_or_batch, torch.Tensor):
        batches: Iterable = [loader_or_batch]
    else:
        batches = loader_or_batch
    if max_batches is not None:
        batches = itertools.islice(batches, max_batches)
    for batch in batches:
        yield batch[0] if isinstance(batch, tuple | list) else batch


def firing_summary(
    model: nn.Module,
    loader_or_batch,
    *,
    device=None,
    max_batches: int | None = None,
) -> FiringReport:
    """Run `model` in eval mode under `torch.no_grad()` on a batch tensor `x` or an iterable of
    `(x, y)` batches (at most `max_batches`) with a `FiringMonitor` active, and return its report.

    `device`: where to run (the model is moved there); default the device of its parameters.
    Inputs are cast to the parameters' dtype. The model's train/eval mode is restored afterwards.
    """
    device = _model_device(model) if device is None else torch.device(device)
    model.to(device)
    param = next(model.parameters(), None)
    dtype = param.dtype if param is not None else torch.get_default_dtype()
    was_training = model.training
    model.eval()
    try:
        with FiringMonitor(model) as monitor, torch.no_grad():
            for x in _inputs(loader_or_batch, max_batches):
                model(x.to(device=device, dtype=dtype))
    finally:
        model.train(was_training)
    return monitor.report()
