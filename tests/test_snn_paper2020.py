"""algorithm='paper2020' against independent transcriptions of the October 2020 official code
(commit 5947a03, functions/TSSLBP.py `PSP_spike_large_batch`, cnns.py, loss_f.py, main.py): a slow
per-neuron scalar transcription, and that code's vectorised form (T×T matrices, `delta_refs`,
einsum, mini-batches of 5) in its own [N, C, H, W, T] layout."""

import json
import logging
import math
import os

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from efficientdl.core.errors import ConfigError
from efficientdl.snn import functional as fn
from efficientdl.snn import fused
from efficientdl.snn.config import recipe
from efficientdl.snn.functional import lif_states, resolve_backend, tsslbp
from efficientdl.snn.layers import TSSLBPNeuron
from efficientdl.snn.networks import build
from efficientdl.snn.options import NeuronOptions
from efficientdl.snn.train import make_optimizer, train_step

F64 = torch.float64
pytestmark = pytest.mark.usefixtures("one_thread")


# ---- slow transcription: one neuron at a time, python floats ----------------------------------


def slow_neuron_forward(I, tau_m, tau_s, threshold):
    """One neuron of PSP_spike_large_batch.forward: traces, du, pre-reset u, spikes, delta_refs."""
    T = len(I)
    theta_m, theta_s = 1 / tau_m, 1 / tau_s
    mem, syn = 0.0, 0.0
    ref = [0.0] * T
    delta_refs = [[0.0] * T for _ in range(T)]
    traces, dus, us, outs = [], [], [], []
    for t in range(T):
        mem_update = -theta_m * mem + I[t]
        delta_ref = [-theta_m * r for r in ref]
        mem = mem + mem_update
        ref = [r + d for r, d in zip(ref, delta_ref)]
        out = 1.0 if mem > threshold else 0.0
        us.append(mem)
        for j in range(t):
            ref[j] *= 1 - out
            delta_ref[j] *= out
        ref[t] = -mem * out
        for j in range(t):
            delta_refs[j][t] = delta_ref[j]
        mem = mem * (1 - out)
        outs.append(out)
        dus.append(mem_update)
        syn = syn + (out - syn) * theta_s
        traces.append(syn)
    return traces, dus, us, outs, delta_refs


def slow_layer(current, delta, tau_m, tau_s, threshold):
    """A whole layer [T, M] (python lists): output traces and ∂L/∂I, with the per-call switch on
    the firing rate of all its (neuron, step) pairs."""
    T, M = len(current), len(current[0])
    partial_a = [[0.0] * T for _ in range(T)]  # glv.init: partial_a[i][t] = κ[t − i]
    for t in range(T):
        if t > 0:
            for i in range(T):
                partial_a[i][t] = partial_a[i][t - 1] - partial_a[i][t - 1] / tau_s
        partial_a[t][t] = 1 / tau_s
    neurons = [
        slow_neuron_forward([current[t][m] for t in range(T)], tau_m, tau_s, threshold)
        for m in range(M)
    ]
    rate = sum(sum(n[3]) for n in neurons) / (T * M)
    traces = [[neurons[m][0][t] for m in range(M)] for t in range(T)]
    grad = [[0.0] * M for _ in range(T)]
    for m, (_, du, u, out, D) in enumerate(neurons):
        d = [delta[t][m] for t in range(T)]
        intra = [
            [sum(partial_a[i][j] * D[j][k] for j in range(T)) for k in range(T)] for i in range(T)
        ]
        grad_a = [sum((partial_a[i][k] + intra[i][k]) * d[k] for k in range(T)) for i in range(T)]
        for t in range(T):
            if rate > 0.1:
                g = grad_a[t] * (min(max(1 / du[t], -10), 10) * out[t] if out[t] else 0.0)
            else:
                z = math.exp(min(max((threshold - u[t]) / 0.2, -8), 8))
                g = grad_a[t] * (z / ((1 + z) * (1 + z) * 0.2))
            grad[t][m] = g
    return traces, grad, rate


# ---- the October 2020 code's vectorised form, [N, C, H, W, T] ----------------------------------


def official_partial_a(T, tau_s, dtype):
    partial_a = torch.zeros((1, 1, 1, 1, T, T), dtype=dtype)
    for t in range(T):
        if t > 0:
            partial_a[..., t] = partial_a[..., t - 1] - partial_a[..., t - 1] / tau_s
        partial_a[..., t, t] = 1 / tau_s
    return partial_a


class OfficialNeuron(torch.autograd.Function):
    """PSP_spike_large_batch of the 2020 code on [N, C, H, W, T] (N divisible by 5); `branches`
    records each backward's switch (True: spike-time gradient)."""

    branches: list = []

    @staticmethod
    def forward(ctx, inputs, tau_m, tau_s, threshold):
        shape = inputs.shape
        n_steps = shape[4]
        theta_m, theta_s = 1 / tau_m, 1 / tau_s
        mem = torch.zeros(shape[:4], dtype=inputs.dtype)
        syn = torch.zeros(shape[:4], dtype=inputs.dtype)
        ref = torch.zeros(shape, dtype=inputs.dtype)
        delta_refs = torch.zeros((*shape, shape[4]), dtype=inputs.dtype)
        mems, mem_updates, outputs, syns_posts = [], [], [], []
        for t in range(n_steps):
            mem_update = (-theta_m) * mem + inputs[..., t]
            delta_ref = (-theta_m) * ref
            mem += mem_update
            ref += delta_ref
            out = (mem > threshold).type(inputs.dtype)
            mems.append(mem)
            if t > 0:
                out_tmp = out.unsqueeze(-1).repeat(1, 1, 1, 1, t)
                ref[..., 0:t] *= 1 - out_tmp
                delta_ref[..., 0:t] *= out_tmp
            ref[..., t] = (-1) * mem * out
            delta_refs[..., 0:t, t] = delta_ref[..., 0:t]
            mem = mem * (1 - out)
            outputs.append(out)
            mem_updates.append(mem_update)
            syn = syn + (out - syn) * theta_s
            syns_posts.append(syn)
        ctx.tau_s, ctx.threshold = tau_s, threshold
        ctx.save_for_backward(
            torch.stack(mem_updates, 4), torch.stack(outputs, 4), torch.stack(mems, 4), delta_refs
        )
        return torch.stack(syns_posts, dim=4)

    @staticmethod
    def backward(ctx, grad_delta):
        delta_u, outputs, u, delta_refs = ctx.saved_tensors
        shape = outputs.shape
        mini_batch = 5
        partial_a = official_partial_a(shape[4], ctx.tau_s, u.dtype)
        partial_a_inter = partial_a.repeat(mini_batch, shape[1], shape[2], shape[3], 1, 1)
        grad_a = torch.empty_like(delta_u)
        for i in range(int(shape[0] / mini_batch)):
            b = slice(i * mini_batch, (i + 1) * mini_batch)
            partial_a_intra = torch.einsum("...ij, ...jk -> ...ik", partial_a_inter, delta_refs[b])
            partial_a_all = partial_a_inter + partial_a_intra
            grad_a[b] = torch.einsum("...ij, ...j -> ...i", partial_a_all, grad_delta[b])
        OfficialNeuron.branches.append(bool(torch.sum(outputs) / outputs.numel() > 0.1))
        if torch.sum(outputs) / outputs.numel() > 0.1:
            grad = grad_a * (torch.clamp(1 / delta_u, -10, 10) * outputs)
        else:
            a = 0.2
            f = torch.exp(torch.clamp((-1 * u + ctx.threshold) / a, -8, 8))
            grad = grad_a * (f / ((1 + f) * (1 + f) * a))
        return grad, None, None, None


def official_psp(inputs, tau_s):
    syn = torch.zeros(inputs.shape[:-1], dtype=inputs.dtype)
    syns = torch.zeros(inputs.shape, dtype=inputs.dtype)
    for t in range(inputs.shape[-1]):
        syn = syn - syn / tau_s + inputs[..., t]
        syns[..., t] = syn / tau_s
    return syns


def to_official(x):
    """Our [T, M] → the official [M, 1, 1, 1, T] (each column one neuron)."""
    return x.t().reshape(x.shape[1], 1, 1, 1, x.shape[0])


def from_official(y):
    return y.reshape(y.shape[0], y.shape[-1]).t()


# ---- inputs ------------------------------------------------------------------------------------


def layer_case(rate: str, T=5, M=40, seed=0):
    """Currents [T, M] whose layer fires well above ('high') or well below ('low') 10 %."""
    g = torch.Generator().manual_seed(seed)
    base = 0.55 if rate == "high" else 0.05
    current = base + 0.5 * torch.rand(T, M, generator=g, dtype=F64) - 0.1
    return current, torch.randn(T, M, generator=g, dtype=F64)


P = {"tau_m": 5.0, "tau_s": 2.0, "threshold": 1.0}


def ours(current, delta, **kw):
    x = current.clone().requires_grad_()
    out = tsslbp(x, **P, algorithm="paper2020", backend="torch", **kw)
    out.backward(delta)
    return out.detach(), x.grad


@pytest.mark.parametrize("rate", ["high", "low"])
@pytest.mark.parametrize("T", [3, 5, 8])
def test_layer_equals_the_slow_transcription(rate, T):
    current, delta = layer_case(rate, T=T, seed=T)
    traces, grad, spike_rate = slow_layer(current.tolist(), delta.tolist(), **P)
    assert (spike_rate > 0.1) == (rate == "high")  # the case lands on the intended branch
    out, got = ours(current, delta)
    torch.testing.assert_close(out, torch.tensor(traces, dtype=F64), rtol=0, atol=0)
    torch.testing.assert_close(got, torch.tensor(grad, dtype=F64), rtol=1e-12, atol=1e-14)
    if rate == "high":  # the spike-time branch: gradient only at spike steps
        assert torch.all(got[~lif_states(current, **P).spikes] == 0)


def test_exactly_ten_percent_takes_the_surrogate():
    """The switch is 'more than 10 %': 5 spikes in 50 neuron-steps stays on the surrogate."""
    T, M = 5, 10
    current = torch.full((T, M), 0.05, dtype=F64)
    current[1, :5] = 2.0  # 5 neurons spike once, at t = 1
    delta = torch.randn(T, M, generator=torch.Generator().manual_seed(1), dtype=F64)
    _, grad, rate = slow_layer(current.tolist(), delta.tolist(), **P)
    assert rate == 0.1
    _, got = ours(current, delta)
    assert torch.all(got[0] != 0)  # surrogate: every step gets a gradient
    torch.testing.assert_close(got, torch.tensor(grad, dtype=F64), rtol=1e-12, atol=1e-14)
    current[3, 5] = 2.0  # one more spike: 6 / 50 > 10 % → spike steps only
    _, grad, rate = slow_layer(current.tolist(), delta.tolist(), **P)
    _, got = ours(current, delta)
    assert rate > 0.1 and int((got != 0).sum()) <= 6
    torch.testing.assert_close(got, torch.tensor(grad, dtype=F64), rtol=1e-12, atol=1e-14)


def test_the_decision_is_per_call_over_the_whole_layer():
    """The same neuron gets the surrogate or the spike-time gradient depending on the others."""
    high, dh = layer_case("high", M=30, seed=3)
    low, dl = layer_case("low", M=30, seed=4)
    joint = torch.cat([high[:, :1], low], 1)  # neuron 0 of `high` among quiet neighbours
    _, g_alone = ours(high, dh)
    _, g_joint = ours(joint, torch.cat([dh[:, :1], dl], 1))
    _, ref_joint, rate = slow_layer(joint.tolist(), torch.cat([dh[:, :1], dl], 1).tolist(), **P)
    assert rate <= 0.1
    torch.testing.assert_close(g_joint, torch.tensor(ref_joint, dtype=F64), rtol=1e-12, atol=1e-14)
    assert not torch.allclose(g_alone[:, 0], g_joint[:, 0])


@pytest.mark.parametrize("rate", ["high", "low"])
def test_the_vectorised_official_form_agrees_with_both(rate):
    """The transcription the network test relies on equals the slow one, and ours, per layer."""
    current, delta = layer_case(rate, M=60, seed=7)
    x = to_official(current).requires_grad_()
    out = OfficialNeuron.apply(x, P["tau_m"], P["tau_s"], P["threshold"])
    out.backward(to_official(delta))
    traces, grad, _ = slow_layer(current.tolist(), delta.tolist(), **P)
    torch.testing.assert_close(from_official(out.detach()), torch.tensor(traces, dtype=F64))
    torch.testing.assert_close(
        from_official(x.grad), torch.tensor(grad, dtype=F64), rtol=1e-12, atol=1e-14
    )
    _, got = ours(current, delta)
    torch.testing.assert_close(got, from_official(x.grad), rtol=1e-12, atol=1e-14)


# ---- network level: a few float64 training steps of the paper2020 recipes ---------------------


def official_network(weights, x, cfg):
    """cnns.Network.forward of the 2020 code for the MNIST / Fashion-MNIST CNNs on images x."""
    T, pad = cfg["T"], cfg["padding"]
    spikes = official_psp(x.unsqueeze(-1).repeat(1, 1, 1, 1, T), cfg["tau_s"])
    neuron = (cfg["tau_m"], cfg["tau_s"], 1.0)
    for w in weights:
        if w.dim() == 4:  # conv (k, k, 1) kernels, then pooling as a Conv3d with 1.1 weights
            y = F.conv3d(spikes, w.unsqueeze(-1), None, 1, (pad, pad, 0))
            y = OfficialNeuron.apply(y, *neuron)
            shape = y.shape
            pool = torch.full((1, 1, 2, 2, 1), 1.1, dtype=y.dtype)
            r = F.conv3d(
                y.reshape(shape[0], 1, shape[1] * shape[2], shape[3], shape[4]),
                pool,
                None,
                (2, 2, 1),
            )
            spikes = r.reshape(r.shape[0], shape[1], -1, r.shape[3], r.shape[4])
        else:
            s = spikes.reshape(spikes.shape[0], -1, spikes.shape[4]).transpose(1, 2)
            y = F.linear(s, w).transpose(1, 2)
            spikes = OfficialNeuron.apply(
                y.reshape(y.shape[0], y.shape[1], 1, 1, y.shape[2]), *neuron
            )
    return spikes


def official_loss(outputs, labels, cfg):
    T = cfg["T"]
    if cfg["loss"] == "kernel":  # main.train: desired_spikes = psp([0,1,0,1,1]) once; loss_kernel
        pattern = torch.tensor([0, 1, 0, 1, 1], dtype=outputs.dtype).repeat(T // 5)
        desired = official_psp(pattern.view(1, 1, 1, 1, T), cfg["tau_s"]).view(1, 1, 1, T)
        targets = torch.zeros_like(outputs)
        for i in range(len(labels)):
            targets[i, labels[i], ...] = desired
        return 0.5 * torch.sum((outputs - targets) ** 2)
    targets = torch.ones(outputs.shape[0], outputs.shape[1], 1, 1, dtype=outputs.dtype) * 1.0
    for i in range(len(labels)):
        targets[i, labels[i], ...] = 4.0
    return 0.5 * torch.sum(OfficialCountDelta.apply(outputs, targets) ** 2)


class OfficialCountDelta(torch.autograd.Function):
    """loss_f.loss_count (desired 4, undesired 1): one-sided (count − target)/T, repeated over T;
    its backward passes the gradient through unchanged."""

    @staticmethod
    def forward(ctx, outputs, target):
        n_steps = outputs.shape[4]
        delta = (torch.sum(outputs, dim=4) - target) / n_steps
        mask = torch.ones_like(delta)
        mask[target == 1.0] = 0
        mask[delta < 0] = 0
        delta[mask == 1] = 0
        mask = torch.ones_like(delta)
        mask[target == 4.0] = 0
        mask[delta > 0] = 0
        delta[mask == 1] = 0
        return delta.unsqueeze_(-1).repeat(1, 1, 1, 1, n_steps)

    @staticmethod
    def backward(ctx, grad):
        return grad, None


MNIST_2020 = {"T": 5, "tau_m": 5.0, "tau_s": 2.0, "padding": 0, "loss": "kernel"}
FMNIST_2020 = {"T": 5, "tau_m": 4.0, "tau_s": 2.0, "padding": 2, "loss": "count"}


@pytest.mark.parametrize(
    "name, cfg, backend",
    [
        ("mnist_cnn_paper2020", MNIST_2020, "torch"),
        ("fmnist_cnn_paper2020", FMNIST_2020, "torch"),
        ("mnist_cnn_paper2020", MNIST_2020, "fused"),  # the C kernels
    ],
)
def test_training_steps_equal_the_official_network(name, cfg, backend):
    r = recipe(name, backend=backend, fold_static_input=False)
    torch.manual_seed(0)
    net = build(r.model, **r.model_overrides()).double()
    weights = [layer.weight.detach().clone().requires_grad_() for layer in net.weight_layers()]
    opt_ours = make_optimizer(net, r)
    opt_official = torch.optim.AdamW(weights, lr=r.lr, betas=(0.9, 0.999))
    g = torch.Generator().manual_seed(1)
    ran = set()
    OfficialNeuron.branches.clear()
    for _ in range(2):
        x = ((torch.rand(5, 1, 28, 28, generator=g) > 0.75).double() - 0.1307) / 0.3081
        y = torch.randint(0, 10, (5,), generator=g)
        train_step(net, opt_ours, x, y, r)
        out = official_network(weights, x, cfg)
        loss = official_loss(out, y, cfg)
        opt_official.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(weights, 1)
        opt_official.step()
        with torch.no_grad():
            for w in weights:
                w.clamp_(-4, 4)
        for layer in net.weight_layers():
            ran.add(layer.neuron.ran)
    assert set(OfficialNeuron.branches) == {True, False}  # both sides of the switch were taken
    for layer, w in zip(net.weight_layers(), weights):
        torch.testing.assert_close(layer.weight.detach(), w.detach(), rtol=1e-10, atol=1e-12)
    assert ran == {backend}


# ---- recipes, options, no silent fallbacks ------------------------------------------------------

# Networks/MNIST_CNN.yaml and Networks/FashionMNIST_CNN.yaml at 5947a03, and main.py there
# (AdamW with PyTorch's default decay 0.01, the [0,1,0,1,1] target psp-filtered once).
OFFICIAL_2020 = {
    "mnist_cnn_paper2020": {
        "model": "mnist_cnn", "T": 5, "tau_m": 5.0, "tau_s": 2.0, "threshold": 1.0,
        "batch_size": 100, "epochs": 200, "lr": 5e-4, "weight_decay": 0.01, "loss": "kernel",
        "pattern": "paper", "target_filter_passes": 1,
    },
    "fmnist_cnn_paper2020": {
        "model": "fmnist_cnn", "T": 5, "tau_m": 4.0, "tau_s": 2.0, "threshold": 1.0,
        "batch_size": 50, "epochs": 100, "lr": 5e-4, "weight_decay": 0.01, "loss": "count",
        "desired": 4.0, "undesired": 1.0, "normalize": "mnist",
    },
}  # fmt: skip


@pytest.mark.parametrize("name", sorted(OFFICIAL_2020))
def test_recipes_hold_the_2020_settings(name):
    r = recipe(name)
    for key, value in OFFICIAL_2020[name].items():
        assert getattr(r, key) == value, key
    assert (r.algorithm, r.conv_init, r.grad_clip, r.weight_clamp) == (
        "paper2020",
        "kaiming_normal",
        1.0,
        4.0,
    )
    assert r.neuron().algorithm == "paper2020"
    net = build(r.model, **r.model_overrides())
    assert {n.settings.algorithm for n in net.neurons()} == {"paper2020"}


def test_today_recipes_keep_the_later_algorithm_and_init():
    r = recipe("mnist_cnn")
    assert (r.algorithm, r.conv_init) == ("tsslbp", "uniform")


def test_kaiming_normal_conv_init_has_std_sqrt_2_over_fan_in():
    torch.manual_seed(0)
    w = build("fmnist_cnn", conv_init="kaiming_normal").weight_layers()[1].weight  # 64×32×5×5
    fan_in = 32 * 5 * 5
    assert abs(w.std().item() / math.sqrt(2 / fan_in) - 1) < 0.02
    assert abs(w.mean().item()) < 0.01 * math.sqrt(2 / fan_in) * 10
    u = build("fmnist_cnn").weight_layers()[1].weight  # U(±1/√fan_in): max |w| ≤ bound
    assert u.abs().max().item() <= 1 / math.sqrt(fan_in)


@pytest.mark.parametrize(
    "bad, message",
    [
        ({"algorithm": "paper"}, "algorithm: expected one of ('tsslbp', 'paper2020'), got 'paper'"),
        (
            {"algorithm": "paper2020", "max_inv_du": 3.0},
            "max_inv_du: algorithm='paper2020' does not",
        ),
        ({"algorithm": "paper2020", "warmup_surrogate": False}, "warmup_surrogate: algorithm="),
        ({"conv_init": "xavier"}, "conv_init: expected one of ['uniform', 'kaiming_normal']"),
    ],
)
def test_bad_algorithm_settings_are_one_line_config_errors(bad, message):
    with pytest.raises(ConfigError) as info:
        recipe("mnist_cnn", **bad)
    assert str(info.value).startswith(message) and "\n" not in str(info.value)


def test_set_options_switches_the_backward_of_a_neuron():
    neuron = TSSLBPNeuron(**P, backend="torch")
    current, delta = layer_case("high", seed=2)
    neuron.set_options(algorithm="paper2020")
    x = current.clone().requires_grad_()
    neuron(x).backward(delta)
    torch.testing.assert_close(x.grad, ours(current, delta)[1], rtol=0, atol=0)
    assert NeuronOptions().algorithm == "tsslbp"


@pytest.fixture
def snn_log(caplog, monkeypatch):
    """caplog on the efficientdl.snn logger (propagating even if the CLI configured it), with a
    fresh once-only memory of what resolve_backend has logged."""
    monkeypatch.setattr(fn, "_LOGGED", set())
    monkeypatch.setattr(logging.getLogger("efficientdl"), "propagate", True)
    caplog.set_level(logging.INFO, logger="efficientdl.snn")
    return caplog


def messages(caplog):
    return [r.getMessage() for r in caplog.records if r.name == "efficientdl.snn"]


NO_INTERPRETER = pytest.mark.skipif(
    os.environ.get("TRITON_INTERPRET", "0").strip() not in ("", "0"),
    reason="this process runs triton in the interpreter (CPU tensors are accepted)",
)


@pytest.mark.parametrize("backend", ["fused", "auto"])
@pytest.mark.parametrize("rate", ["high", "low"])
def test_fused_and_auto_run_paper2020_in_the_c_kernels(backend, rate):
    """On CPU tensors 'fused' and 'auto' run the 2020 backward in the C kernels, and equal the
    reference on both sides of the switch (forward bit-equal)."""
    current, delta = layer_case(rate, M=60, seed=11)
    neuron = TSSLBPNeuron(**P, algorithm="paper2020", backend=backend)
    x = current.clone().requires_grad_()
    out = neuron(x)
    out.backward(delta)
    assert neuron.ran == "fused"
    ref_out, ref_grad = ours(current, delta)
    assert torch.equal(out.detach(), ref_out)
    torch.testing.assert_close(x.grad, ref_grad, rtol=1e-12, atol=1e-15)


def test_fused_with_a_dtype_the_kernels_lack_is_an_error_not_a_switch():
    x = torch.rand(5, 4).to(torch.float8_e4m3fn)
    with pytest.raises(ConfigError) as info:
        tsslbp(x, **P, algorithm="paper2020", backend="fused")
    assert str(info.value) == (
        "backend='fused' on cpu: the fused kernels take no torch.float8_e4m3fn"
    )


@NO_INTERPRETER
def test_triton_with_paper2020_on_cpu_tensors_is_an_error_not_a_switch():
    with pytest.raises(fused.BackendUnavailableError, match="backend='triton' is not available"):
        tsslbp(torch.rand(5, 4), **P, algorithm="paper2020", backend="triton")


def test_auto_with_paper2020_runs_the_c_kernels_and_says_so_once(snn_log):
    x = torch.rand(5, 4)
    assert resolve_backend("auto", x, algorithm="paper2020") == "fused"
    for _ in range(3):
        tsslbp(x, **P, algorithm="paper2020")
    assert messages(snn_log) == ["backend: auto runs the fused kernels on cpu"]


def test_auto_logs_its_choice_and_each_fallback_reason_once(snn_log, monkeypatch):
    x = torch.rand(5, 4)
    for _ in range(2):
        assert resolve_backend("auto", x) == "fused"  # the C kernels build on every CI machine
    monkeypatch.setattr(fused, "available", lambda *args: (False, "no C compiler"))
    for _ in range(2):
        tsslbp(x, **P)
    monkeypatch.setattr(fused, "available", lambda *args: (False, "cache not writable"))
    tsslbp(x, **P)
    assert messages(snn_log) == [
        "backend: auto runs the fused kernels on cpu",
        "backend: auto runs the torch reference on cpu: the fused kernels are unavailable: "
        "no C compiler",
        "backend: auto runs the torch reference on cpu: the fused kernels are unavailable: "
        "cache not writable",
    ]


def test_the_neuron_records_the_path_it_ran(monkeypatch):
    x = torch.rand(5, 2, 3)
    auto, ref = TSSLBPNeuron(**P), TSSLBPNeuron(**P, backend="torch")
    assert auto.ran is None
    auto(x), ref(x)
    assert (auto.ran, ref.ran) == ("fused", "torch")
    monkeypatch.setattr(fused, "available", lambda *args: (False, "no C compiler"))
    auto(x)
    assert auto.ran == "torch"


def test_a_run_records_the_algorithm_and_the_backend_that_ran(tmp_path, snn_log):
    from efficientdl.data import write_idx
    from efficientdl.snn.report import write_report
    from efficientdl.snn.train import fit

    rng = np.random.default_rng(0)
    for prefix, n in (("train", 20), ("t10k", 10)):
        labels = (np.arange(n) % 10).astype(np.uint8)
        images = rng.integers(0, 255, size=(n, 28, 28), dtype=np.uint8)
        write_idx(tmp_path / "data" / f"{prefix}-images-idx3-ubyte.gz", images)
        write_idx(tmp_path / "data" / f"{prefix}-labels-idx1-ubyte.gz", labels)
    r = recipe("mnist_cnn_paper2020", epochs=1, batch_size=10, device="cpu", threads=1)
    summary = fit(r, data_root=str(tmp_path / "data"), run_dir=tmp_path / "run", progress=False)
    assert (summary["algorithm"], summary["backend_requested"], summary["backend"]) == (
        "paper2020",
        "auto",
        "fused",
    )
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["backend"] == "fused"
    assert "backend: fused C/OpenMP kernels on cpu (backend=auto, algorithm=paper2020)" in messages(
        snn_log
    )
    text = write_report(tmp_path / "run").read_text()
    assert "TSSL-BP backward `paper2020`; backend that ran: `fused` (asked for `auto`)." in text


def test_a_recipe_asking_fused_kernels_for_paper2020_runs_them():
    from efficientdl.snn.train import _log_backend

    assert _log_backend(recipe("mnist_cnn_paper2020", backend="fused"), torch.device("cpu")) == (
        "fused"
    )


@NO_INTERPRETER
def test_a_recipe_asking_triton_kernels_on_the_cpu_is_refused_before_training():
    from efficientdl.snn.train import _log_backend

    with pytest.raises(ConfigError) as info:
        _log_backend(recipe("mnist_cnn_paper2020", backend="triton"), torch.device("cpu"))
    assert str(info.value).startswith(
        "config key 'backend': backend='triton' is not available on cpu: "
    )
    assert "\n" not in str(info.value)
