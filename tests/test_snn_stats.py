"""Firing statistics and SynOps: brute-force SynOps, hand-built rates."""

import json

import pytest
import torch
from torch import nn

from efficientdl import snn
from efficientdl.snn.functional import lif_states
from efficientdl.snn.network import SpikingNetwork
from efficientdl.snn.networks import build
from efficientdl.snn.stats import FiringMonitor, conv_fanout, firing_summary

F64 = torch.float64
T = 4


def tiny_net(size: int, stride: int, padding: int) -> SpikingNetwork:
    """conv 1→2 k3 p1 on size², SumPool2d, dropout, conv 2→3 k3 (stride, padding), linear → 4."""
    torch.manual_seed(0)
    out = (size // 2 + 2 * padding - 3) // stride + 1
    layers = [
        snn.SpikingConv2d(1, 2, 3, padding=1, backend="torch"),
        snn.SumPool2d(2),
        snn.SpikingDropout(0.2),
        snn.SpikingConv2d(2, 3, 3, stride=stride, padding=padding, backend="torch"),
        snn.SpikingLinear(3 * out * out, 4, backend="torch"),
    ]
    with torch.no_grad():
        layers[0].weight.uniform_(-0.3, 0.7)
        layers[3].weight.uniform_(-0.5, 0.6)
        layers[4].weight.uniform_(-0.5, 2.0)
    return SpikingNetwork(snn.PSPEncoder(3.0, T=T), layers, fold_static_input=False).to(F64)


def layer_spikes(net: SpikingNetwork, x: torch.Tensor) -> dict[nn.Module, torch.Tensor]:
    """Weight layer → its spikes [T, N, ...] (int64), from the neurons' input currents."""
    spikes = {}
    hooks = [
        layer.neuron.register_forward_hook(
            lambda m, inputs, _out, layer=layer: spikes.__setitem__(
                layer,
                lif_states(
                    inputs[0], tau_m=m.tau_m, tau_s=m.tau_s, threshold=m.threshold
                ).spikes.long(),
            )
        )
        for layer in net.weight_layers()
    ]
    with torch.no_grad():
        net(x)
    for hook in hooks:
        hook.remove()
    return spikes


def brute_conv_synops(s_in: torch.Tensor, layer: snn.SpikingConv2d) -> int:
    """Σ over (t, n, input position) spikes × every (output channel, window) weight it touches."""
    _, _, cin, height, width = s_in.shape
    k, stride, pad = layer.kernel_size, layer.stride, layer.padding
    out_h, out_w = (height + 2 * pad - k) // stride + 1, (width + 2 * pad - k) // stride + 1
    total = 0
    for t, n, c, h, w in torch.nonzero(s_in).tolist():
        touched = 0
        for _co in range(layer.out_channels):
            for oh in range(out_h):
                for ow in range(out_w):
                    for kh in range(k):
                        for kw in range(k):
                            if oh * stride - pad + kh == h and ow * stride - pad + kw == w:
                                touched += 1
        total += int(s_in[t, n, c, h, w]) * touched
    return total


def brute_linear_synops(s_in: torch.Tensor, layer: snn.SpikingLinear) -> int:
    """Each input spike touches every one of the layer's out_features weights in its column."""
    flat = s_in.reshape(s_in.shape[0], s_in.shape[1], -1)
    total = 0
    for t, n, i in torch.nonzero(flat).tolist():
        total += int(flat[t, n, i]) * sum(1 for _ in range(layer.out_features))
    return total


@pytest.mark.parametrize("size, stride, padding", [(6, 1, 0), (6, 1, 1), (8, 2, 1), (10, 2, 0)])
def test_synops_equal_brute_force(size, stride, padding):
    net = tiny_net(size, stride, padding).eval()
    x = torch.rand(3, 1, size, size, dtype=F64) * 2
    conv1, _, _, conv2, fc = net.layers
    spikes = layer_spikes(net, x)
    pooled = spikes[conv1].reshape(T, 3, 2, size // 2, 2, size // 2, 2).sum((4, 6))
    for layer in (conv1, conv2):  # the test must exercise partial firing
        assert 0 < spikes[layer].sum() < spikes[layer].numel()
    expected = {
        "layers.3": brute_conv_synops(pooled, conv2) / 3,
        "layers.4": brute_linear_synops(spikes[conv2], fc) / 3,
    }
    report = firing_summary(net, x)
    got = {layer.name: layer.synops_per_sample for layer in report.layers}
    assert got == {"layers.0": 0.0, **expected}
    assert report.synops_per_sample == sum(expected.values())
    assert report.first_layer_macs_per_sample == T * 2 * 9 * size * size
    out = (size // 2 + 2 * padding - 3) // stride + 1
    assert report.ann_macs_per_sample == 2 * 9 * size**2 + 3 * 2 * 9 * out**2 + 3 * out**2 * 4
    for layer in report.layers:
        s = spikes[net.get_submodule(layer.name)]
        assert layer.spikes == int(s.sum())
        assert layer.samples == 3 and layer.timesteps == T


def test_conv_fanout_counts_covering_windows():
    layer = snn.SpikingConv2d(1, 1, 3, stride=2, padding=1, backend="torch")
    fanout = conv_fanout(layer, 4, 5)
    expected = torch.zeros(4, 5, dtype=F64)
    for oh in range(2):
        for ow in range(3):
            for kh in range(3):
                for kw in range(3):
                    h, w = 2 * oh - 1 + kh, 2 * ow - 1 + kw
                    if 0 <= h < 4 and 0 <= w < 5:
                        expected[h, w] += 1
    assert torch.equal(fanout, expected)


def hand_built_currents() -> torch.Tensor:
    """[T=5, N=2, 4] constant currents: 2.0 fires every step, 0 never, 0.6 fires at t = 1, 3."""
    per_sample = torch.tensor([[2.0, 0.0, 0.6, 0.0], [0.0, 0.0, 0.6, 2.0]], dtype=F64)
    return per_sample.expand(5, 2, 4).clone()


def test_firing_rate_and_silent_fraction_of_hand_built_spikes():
    model = nn.Sequential(snn.TSSLBPNeuron(backend="torch"))
    current = hand_built_currents()
    states = lif_states(current, tau_m=5.0, tau_s=3.0, threshold=1.0)
    assert states.spikes[:, 0, 2].tolist() == [False, True, False, True, False]
    with FiringMonitor(model) as monitor:
        model(current)
    assert monitor.spike_counts()["0"].tolist() == [5, 0, 4, 5]
    (layer,) = monitor.report().layers
    assert (layer.name, layer.neurons, layer.samples, layer.timesteps) == ("0", 4, 2, 5)
    assert layer.spikes == 14
    assert layer.rate == pytest.approx(14 / (2 * 5 * 4), abs=1e-15)
    assert layer.spikes_per_sample == 7.0
    assert layer.silent_fraction == 0.25
    with monitor:  # counts accumulate across blocks until reset()
        model(current[:, :1])
    (layer,) = monitor.report().layers
    assert (layer.samples, layer.spikes, layer.silent_fraction) == (3, 21, 0.25)
    assert layer.rate == pytest.approx(21 / (3 * 5 * 4), abs=1e-15)
    monitor.reset()
    assert monitor.report().layers == []


def test_monitor_detaches_and_leaves_training_unchanged():
    net = tiny_net(8, 2, 1).train()
    x = torch.rand(2, 1, 8, 8, dtype=F64) * 2

    def run():
        torch.manual_seed(1)
        net.zero_grad()
        out = net(x)
        out.square().sum().backward()
        return out.detach(), [p.grad.clone() for p in net.parameters()]

    plain_out, plain_grads = run()
    with pytest.raises(RuntimeError), FiringMonitor(net) as monitor:
        assert all(n.monitor is monitor for n in net.neurons())
        monitored_out, monitored_grads = run()
        raise RuntimeError("exit by exception")
    assert all(n.monitor is None for n in net.neurons())
    assert torch.equal(plain_out, monitored_out)
    assert all(torch.equal(a, b) for a, b in zip(plain_grads, monitored_grads))
    assert [layer.name for layer in monitor.report().layers] == ["layers.0", "layers.3", "layers.4"]


def test_firing_summary_on_mnist_cnn():
    torch.manual_seed(0)
    net = build("mnist_cnn", backend="torch").train()
    x = torch.randn(2, 1, 28, 28)
    report = firing_summary(net, [(x, torch.zeros(2)), (x[:1], torch.zeros(1))] * 3, max_batches=2)
    assert net.training
    names = ["layers.0", "layers.2", "layers.4", "layers.5"]
    assert [layer.name for layer in report.layers] == names
    assert [layer.neurons for layer in report.layers] == [15 * 24 * 24, 40 * 8 * 8, 300, 10]
    assert all(layer.samples == 3 and layer.timesteps == 5 for layer in report.layers)
    macs = 24 * 24 * 15 * 25 + 8 * 8 * 40 * 15 * 25 + 640 * 300 + 300 * 10
    assert report.ann_macs_per_sample == macs
    assert report.first_layer_macs_per_sample == 5 * 24 * 24 * 15 * 25
    energy = report.energy()
    assert energy["ann"] == pytest.approx(macs * 4.6e-12)
    assert energy["snn"] == pytest.approx(
        report.synops_per_sample * 0.9e-12 + report.first_layer_macs_per_sample * 4.6e-12
    )
    data = json.loads(json.dumps(report.to_dict()))
    assert len(data["layers"]) == 4 and data["ann_macs_per_sample"] == macs
    assert all(n.monitor is None for n in net.neurons())
