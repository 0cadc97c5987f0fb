"""Spiking layers: folding, pooling, flatten order, dropout, init, clamp."""

import math

import pytest
import torch
import torch.nn.functional as F

from efficientdl.snn import (
    PSPEncoder,
    SpikingConv2d,
    SpikingDropout,
    SpikingLinear,
    SpikingNetwork,
    SumPool2d,
    TSSLBPNeuron,
    psp,
    tsslbp,
)


def test_conv_with_folded_time_equals_per_step_loop():
    torch.manual_seed(0)
    layer = SpikingConv2d(3, 4, 3, padding=1, stride=2).double()
    x = torch.rand(4, 2, 3, 8, 8, dtype=torch.float64)
    current = torch.stack([F.conv2d(x[t], layer.weight, stride=2, padding=1) for t in range(4)])
    expected = tsslbp(current, tau_m=5.0, tau_s=3.0, threshold=1.0)
    torch.testing.assert_close(layer(x), expected, atol=1e-14, rtol=0)


def test_sum_pool_is_4_4_times_avg_pool():
    x = torch.rand(3, 2, 5, 6, 8, dtype=torch.float64)
    out = SumPool2d(2)(x)
    ref = torch.stack([4.4 * F.avg_pool2d(x[t], 2) for t in range(3)])
    torch.testing.assert_close(out, ref, atol=1e-14, rtol=0)
    with pytest.raises(ValueError, match="H=5"):
        SumPool2d(2)(torch.rand(1, 1, 1, 5, 4))


@pytest.mark.parametrize("k", [2, 3])
def test_sum_pool_gradient_spreads_scale_times_the_output_gradient(k):
    x = torch.rand(2, 3, 4, 6, 12, dtype=torch.float64, requires_grad=True)
    g = torch.randn(2, 3, 4, 6 // k, 12 // k, dtype=torch.float64)
    SumPool2d(k, scale=1.1)(x).backward(g)
    # each input element is in exactly one window: its gradient is 1.1 × that window's gradient
    expected = (1.1 * g).repeat_interleave(k, dim=3).repeat_interleave(k, dim=4)
    assert torch.equal(x.grad, expected)


def test_spiking_cnns_save_at_most_1_2x_the_activations_of_their_ann_floor():
    """The pooling saves nothing, so a spiking layer's output trace is kept by no one: the step
    saves the membrane u per layer where the ReLU network keeps its activations."""
    from efficientdl.core.benchmark import saved_mib
    from efficientdl.snn.bench import FloorNet
    from efficientdl.snn.config import recipe
    from efficientdl.snn.networks import build
    from efficientdl.snn.train import compute_loss

    torch.manual_seed(0)
    r = recipe("mnist_cnn")
    net = build("mnist_cnn", backend="torch")
    floor = FloorNet(build("mnist_cnn"))
    x, y = torch.randn(20, 1, 28, 28), torch.randint(0, 10, (20,))
    x_floor = x.unsqueeze(0).expand(r.T, *x.shape).reshape(r.T * 20, 1, 28, 28)
    ours = saved_mib(lambda: compute_loss(net(x), y, r))
    ann = saved_mib(lambda: compute_loss(floor(x_floor).reshape(r.T, 20, 10), y, r))
    assert ours <= 1.2 * ann, (ours, ann)


def test_linear_flattens_channels_then_rows_then_columns():
    layer = SpikingLinear(
        2 * 3 * 4, 1, threshold=1e9
    ).double()  # threshold: only the current matters
    with torch.no_grad():
        layer.weight.copy_(torch.arange(24, dtype=torch.float64)[None])
    x = torch.zeros(1, 1, 2, 3, 4, dtype=torch.float64)
    x[0, 0, 1, 2, 3] = 1.0  # flat index c*12 + h*4 + w = 12 + 8 + 3
    assert layer.synapse(x[0]).item() == 23.0
    with pytest.raises(ValueError, match="24 input features"):
        layer(torch.zeros(2, 1, 5))


def test_dropout_mask_shared_over_time_and_unbiased():
    torch.manual_seed(0)
    drop = SpikingDropout(0.2)
    x = torch.ones(5, 64, 3, 4, 4)
    y = drop(x)
    assert torch.equal(y, y[0].expand_as(y))
    assert set(y.unique().tolist()) <= {0.0, 1.25}
    big = drop(torch.ones(2, 4000, 50))
    assert big.mean().item() == pytest.approx(1.0, abs=0.02)
    drop.eval()
    assert torch.equal(drop(x), x)


def test_dropout_row_mode_zeroes_whole_rows():
    torch.manual_seed(1)
    y = SpikingDropout(0.5, mask="row")(torch.ones(3, 8, 4, 6, 5))
    rows = y[0]  # [N, C, H, W]: each (n, c, h) row is all-zero or all-kept
    assert torch.equal(rows, rows[..., :1].expand_as(rows))
    assert (rows == 0).any() and (rows > 0).any()
    linear = SpikingDropout(0.5, mask="row")
    torch.manual_seed(2)
    a = linear(torch.ones(2, 3, 7))
    torch.manual_seed(2)
    b = SpikingDropout(0.5)(torch.ones(2, 3, 7))
    assert torch.equal(a, b)  # identical on linear traces
    with pytest.raises(ValueError, match="mask"):
        SpikingDropout(0.2, mask="column")


def test_init_statistics():
    torch.manual_seed(0)
    conv = SpikingConv2d(16, 64, 5)
    bound = 1 / math.sqrt(16 * 25)
    assert conv.weight.abs().max() <= bound
    assert conv.weight.abs().max() > 0.98 * bound
    assert conv.weight.std().item() == pytest.approx(bound / math.sqrt(3), rel=0.03)
    scaled = SpikingConv2d(16, 64, 5, weight_scale=5.0)
    assert scaled.weight.abs().max() <= 5 * bound and scaled.weight.abs().max() > 4.9 * bound
    fc = SpikingLinear(500, 400)
    assert fc.weight.std().item() == pytest.approx(math.sqrt(2 / 500), rel=0.02)
    assert fc.weight.mean().item() == pytest.approx(0.0, abs=0.003)


def test_encoder_static_and_event_inputs():
    x = torch.rand(2, 1, 4, 4)
    enc = PSPEncoder(3.0, T=5)
    torch.testing.assert_close(enc(x), psp(x.expand(5, *x.shape), 3.0))
    events = torch.rand(6, 2, 2, 3, 3)
    torch.testing.assert_close(PSPEncoder(4.0)(events), psp(events, 4.0))


def test_clamp_weights_and_neuron_options():
    net = SpikingNetwork(PSPEncoder(3.0, T=3), [SpikingLinear(4, 3, weight_scale=100.0)])
    net.clamp_weights_(4.0)
    assert net.layers[0].weight.abs().max() <= 4.0
    net.set_neuron_options(warmup_surrogate=False)
    assert net.neurons()[0].options["warmup_surrogate"] is False
    with pytest.raises(ValueError, match="unknown TSSL-BP option"):
        net.set_neuron_options(warmup=False)
    with pytest.raises(ValueError, match="backend"):
        TSSLBPNeuron(backend="cuda")


def test_neuron_keeps_no_state_between_calls():
    neuron = TSSLBPNeuron()
    current = torch.rand(5, 3, 7) * 2
    assert torch.equal(neuron(current), neuron(current))


def test_conv_shape_error_names_expected_channels():
    with pytest.raises(ValueError, match=r"\[T, N, 3, H, W\]"):
        SpikingConv2d(3, 4, 3)(torch.zeros(2, 1, 2, 8, 8))
    with pytest.raises(ValueError, match="5-D"):
        SpikingConv2d(3, 4, 3)(torch.zeros(1, 3, 8, 8))
