"""The fused backend against the torch reference: forward bit-equal, backward ≤ 1e-6 (float32) /
1e-12 (float64), both backwards; the C kernel helpers called directly (any layout read correctly,
bad inputs refused)."""

import os

import pytest
import torch

from efficientdl.core.errors import UserError
from efficientdl.snn import cpu_kernels, fused, paper2020
from efficientdl.snn.functional import lif_states, resolve_backend, tsslbp, tsslbp_backward
from efficientdl.snn.networks import build
from efficientdl.snn.options import NeuronOptions
from efficientdl.snn.triton_kernels import PAPER2020_CONSTANTS

P = {"tau_m": 5.0, "tau_s": 3.0, "threshold": 1.0}
OPTIONS = [
    {},
    {"warmup_surrogate": False},
    {"intra_neuron": False},
    {"surrogate_width": 0.5, "surrogate_clip": 2.0, "max_inv_du": float("inf")},
    {"warmup_trace": 0.3, "surrogate_clip": 30.0},
]
TOL = {torch.float32: {"rtol": 1e-6, "atol": 1e-9}, torch.float64: {"rtol": 1e-12, "atol": 1e-15}}


def _run(current, grad, backend, **options):
    x = current.detach().clone().requires_grad_()
    out = tsslbp(x, **P, backend=backend, **options)
    out.backward(grad)
    return out.detach(), x.grad


def _inputs(shape, dtype, seed):
    g = torch.Generator().manual_seed(seed)
    current = torch.rand(shape, generator=g, dtype=torch.float64) * 1.6 - 0.2
    grad = torch.randn(shape, generator=g, dtype=torch.float64)
    return current.to(dtype), grad.to(dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("shape", [(1, 1), (5, 3, 7), (2, 2, 515), (7, 4, 3, 9, 9), (30, 2, 33)])
@pytest.mark.parametrize("options", OPTIONS, ids=range(len(OPTIONS)))
def test_fused_equals_reference(shape, dtype, options):
    current, grad = _inputs(shape, dtype, seed=sum(shape))
    ref_out, ref_grad = _run(current, grad, "torch", **options)
    out, g = _run(current, grad, "fused", **options)
    assert torch.equal(out, ref_out)
    torch.testing.assert_close(g, ref_grad, **TOL[dtype])
    assert lif_states(current, **P).spikes.any()


def test_channels_last_and_non_contiguous_inputs():
    current, grad = _inputs((6, 3, 8, 5, 5), torch.float32, seed=1)
    variants = {
        "channels_last": current.reshape(18, 8, 5, 5)
        .contiguous(memory_format=torch.channels_last)
        .reshape(6, 3, 8, 5, 5),
        "transposed": current.transpose(3, 4).contiguous().transpose(3, 4),
        "strided": torch.stack([current, -current], dim=-1)[..., 0],
    }
    ref_out, ref_grad = _run(current, grad, "torch")
    for name, x in variants.items():
        assert torch.equal(x, current), name
        out, g = _run(x, grad.transpose(3, 4).contiguous().transpose(3, 4), "fused")
        assert torch.equal(out, ref_out), name
        torch.testing.assert_close(g, ref_grad, rtol=1e-6, atol=1e-9)


def test_half_precision_inputs_computed_in_float32():
    current, grad = _inputs((5, 4, 300), torch.float32, seed=2)
    out, g = _run(current.bfloat16(), grad.bfloat16(), "fused")
    ref_out, ref_grad = _run(current.bfloat16().float(), grad.bfloat16().float(), "torch")
    assert out.dtype == g.dtype == torch.bfloat16
    assert torch.equal(out, ref_out.bfloat16())
    torch.testing.assert_close(g, ref_grad.bfloat16())


def test_whole_network_gradients_agree():
    torch.manual_seed(0)
    nets = {b: build("mnist_cnn", backend=b) for b in ("torch", "fused")}
    nets["fused"].load_state_dict(nets["torch"].state_dict())
    x = torch.randn(6, 1, 28, 28) * 3
    grads = {}
    for backend, net in nets.items():
        out = net(x)
        (out**2).sum().backward()
        grads[backend] = (out.detach(), [p.grad for p in net.parameters()])
    assert torch.equal(grads["torch"][0], grads["fused"][0])
    for a, b in zip(grads["torch"][1], grads["fused"][1]):
        # weight gradients sum many terms: compare relative to the gradient's scale
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-5 * a.abs().max().item())


def test_auto_falls_back_without_error_and_fused_reports_why(monkeypatch):
    x = torch.rand(3, 4)
    assert resolve_backend("auto", x) == "fused"  # the C kernels build on every CI machine
    if os.environ.get("TRITON_INTERPRET", "0") in ("", "0"):  # CPU tensors: triton refused
        with pytest.raises((ValueError, RuntimeError), match="CUDA"):
            resolve_backend("triton", x)
    monkeypatch.setattr(fused, "available", lambda *args, **kwargs: (False, "no C compiler"))
    assert resolve_backend("auto", x) == "torch"
    out = tsslbp(x, **P)  # auto: no error
    assert torch.equal(out, lif_states(x, **P).trace)
    with pytest.raises(RuntimeError, match="no C compiler"):
        tsslbp(x, **P, backend="fused")


def _layouts(x):
    """`x` [T, N, C, H, W] in three non-contiguous layouts with the same values."""
    T, N = x.shape[:2]
    return {
        "channels_last": x.reshape(T * N, *x.shape[2:])
        .contiguous(memory_format=torch.channels_last)
        .reshape(x.shape),
        "transposed": x.transpose(3, 4).contiguous().transpose(3, 4),
        "strided": torch.stack([x, -x], dim=-1)[..., 0],
    }


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_cpu_kernel_helpers_read_any_layout(dtype):
    """Called directly (not through tsslbp), the C helpers read strided inputs correctly."""
    current, grad = _inputs((6, 3, 8, 5, 5), dtype, seed=4)
    opts = NeuronOptions(**P)
    c = opts.constants()
    ref = lif_states(current, opts)
    ref_grad = tsslbp_backward(grad, ref.membrane, opts)
    grads = _layouts(grad)
    for name, x in _layouts(current).items():
        assert not x.is_contiguous() and torch.equal(x, current), name
        trace, membrane = cpu_kernels.forward(x, c["r_m"], c["r_s"], c["th"])
        assert trace.shape == current.shape and trace.is_contiguous(), name
        assert torch.equal(trace, ref.trace) and torch.equal(membrane, ref.membrane), name
        for grad_name, g in grads.items():
            out = cpu_kernels.backward(g, _layouts(membrane)[name], c, True, True)
            torch.testing.assert_close(out, ref_grad, **TOL[dtype], msg=f"{name}/{grad_name}")


def _bad_cpu_calls():
    x = torch.rand(4, 6)
    c = NeuronOptions().constants()
    forward = lambda t: cpu_kernels.forward(t, 0.2, 0.3, 1.0)
    return {
        "float16": (lambda: forward(x.half()), "float16"),
        "bfloat16": (lambda: forward(x.bfloat16()), "bfloat16"),
        "int32": (lambda: forward(x.int()), "int32"),
        "device": (lambda: forward(torch.empty(4, 6, device="meta")), "device meta"),
        "scalar": (lambda: forward(torch.tensor(1.0)), "T >= 1"),
        "no_steps": (lambda: forward(x[:0]), "T >= 1"),
        "not_a_tensor": (lambda: forward([[1.0]]), "list"),
        "grad_shape": (lambda: cpu_kernels.backward(x[:, :5], x, c, True, True), "[4, 6]"),
        "grad_dtype": (lambda: cpu_kernels.backward(x.double(), x, c, True, True), "float64"),
    }


@pytest.mark.parametrize("name", list(_bad_cpu_calls()))
def test_cpu_kernel_helpers_refuse_bad_inputs(name):
    call, word = _bad_cpu_calls()[name]
    with pytest.raises(fused.KernelInputError) as err:
        call()
    assert word in str(err.value) and "\n" not in str(err.value)
    assert isinstance(err.value, UserError) and isinstance(err.value, ValueError)


def test_triton_modules_build_on_the_cpu_and_fail_only_when_run_there():
    """Modules are built on the CPU and moved to CUDA later: construction checks the name only."""
    net = build("mnist_cnn", backend="triton")
    with pytest.raises((ValueError, RuntimeError), match="CUDA"):
        net(torch.rand(2, 1, 28, 28))
    with pytest.raises(ValueError, match="backend must be one of"):
        build("mnist_cnn", backend="cuda")


def test_cpu_kernel_helpers_take_one_neuron_and_no_neurons():
    c = NeuronOptions(**P).constants()
    x = torch.tensor([0.6, 0.7, 0.1, 1.5])  # [T]: one neuron, spikes at t = 1 and 3
    trace, membrane = cpu_kernels.forward(x, c["r_m"], c["r_s"], c["th"])
    ref = lif_states(x, **P)
    assert ref.spikes.tolist() == [False, True, False, True]
    assert torch.equal(trace, ref.trace) and torch.equal(membrane, ref.membrane)
    empty = torch.rand(3, 0, 4)
    trace, membrane = cpu_kernels.forward(empty, c["r_m"], c["r_s"], c["th"])
    assert trace.shape == membrane.shape == empty.shape
    assert cpu_kernels.backward(trace, membrane, c, True, True).shape == empty.shape


# ---- the October 2020 backward (algorithm='paper2020') in the C kernels --------------------------

PAPER2020 = NeuronOptions(tau_m=5.0, tau_s=2.0, algorithm="paper2020")
RATES = {"high": (-0.2, 1.4), "low": (-0.3, 0.5)}  # currents landing above / below 10 % firing


def _paper2020_case(shape, dtype, rate, seed):
    """(current, grad, pre-reset membrane) of a layer firing above or below 10 %, and the
    reference 2020 backward of it."""
    lo, hi = RATES[rate]
    g = torch.Generator().manual_seed(seed)
    current = (torch.rand(shape, generator=g, dtype=torch.float64) * (hi - lo) + lo).to(dtype)
    grad = torch.randn(shape, generator=g, dtype=torch.float64).to(dtype)
    membrane = lif_states(current, PAPER2020).membrane
    return current, grad, membrane, _paper2020_reference(grad, membrane)


def _paper2020_reference(grad, membrane):
    c = PAPER2020.constants()
    r_m, r_s, lam_s, th = (torch.tensor(c[k], dtype=membrane.dtype) for k in PAPER2020_CONSTANTS)
    return paper2020.backward(grad, membrane, r_m, r_s, lam_s, th)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("rate", ["high", "low"])
@pytest.mark.parametrize("shape", [(1, 7), (3, 5, 9), (5, 1031), (8, 3, 171)])
def test_c_paper2020_backward_equals_the_reference(shape, rate, dtype):
    """Both sides of the firing-rate switch, T = 1, 3, 5, 8, odd M (one, two and three blocks)."""
    _, grad, membrane, expected = _paper2020_case(shape, dtype, rate, seed=sum(shape))
    assert paper2020.high_rate(membrane > 1.0, dtype) == (rate == "high")
    got = cpu_kernels.paper2020_backward(grad, membrane, PAPER2020.constants())
    assert got.shape == membrane.shape and got.is_contiguous()
    torch.testing.assert_close(got, expected, **TOL[dtype])
    if rate == "high":  # the spike-time gradient: zero off the spike steps
        assert torch.all(got[membrane <= 1.0] == 0) and (got != 0).any()
    else:  # the surrogate: every step
        assert torch.all(got != 0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_c_paper2020_backward_reads_any_layout(dtype):
    _, grad, membrane, expected = _paper2020_case((6, 3, 8, 5, 5), dtype, "high", seed=5)
    c = PAPER2020.constants()
    for name, u in _layouts(membrane).items():
        for grad_name, g in _layouts(grad).items():
            assert not u.is_contiguous() and not g.is_contiguous()
            got = cpu_kernels.paper2020_backward(g, u, c)
            torch.testing.assert_close(got, expected, **TOL[dtype], msg=f"{name}/{grad_name}")


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_c_paper2020_switch_is_more_than_ten_percent_of_the_whole_call(dtype):
    """The switch counts every block and thread of the call: 10 % exactly stays on the
    surrogate, one spike more switches the whole layer, wherever that spike is."""
    T, M = 5, 1100  # three blocks of 512 neurons
    membrane = torch.full((T, M), 0.5, dtype=dtype)
    membrane[1, :550] = 1.5  # 550 spikes, all in the first two blocks: 10 % of 5500
    grad = torch.randn(T, M, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    grad = grad.to(dtype)
    c = PAPER2020.constants()
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        low = cpu_kernels.paper2020_backward(grad, membrane, c)
        membrane[3, M - 1] = 1.5  # one more, in the last block
        high = cpu_kernels.paper2020_backward(grad, membrane, c)
    finally:
        torch.set_num_threads(threads)
    assert torch.all(low != 0)  # surrogate everywhere
    assert int((high != 0).sum()) == 551  # spike steps only
    membrane[3, M - 1] = 0.5
    torch.testing.assert_close(low, _paper2020_reference(grad, membrane), **TOL[dtype])
    membrane[3, M - 1] = 1.5
    torch.testing.assert_close(high, _paper2020_reference(grad, membrane), **TOL[dtype])


@pytest.mark.parametrize("backend", ["fused", "auto"])
def test_paper2020_through_tsslbp_runs_the_c_kernels(backend, monkeypatch):
    current, grad, _, _ = _paper2020_case((5, 4, 60), torch.float32, "low", seed=9)
    calls = []
    kernel = cpu_kernels.paper2020_backward
    monkeypatch.setattr(
        cpu_kernels, "paper2020_backward", lambda *args: calls.append(1) or kernel(*args)
    )
    results = {}
    for b in (backend, "torch"):
        x = current.clone().requires_grad_()
        out = tsslbp(x, PAPER2020, backend=b)
        out.backward(grad)
        results[b] = out.detach(), x.grad
    assert calls == [1]
    assert torch.equal(results[backend][0], results["torch"][0])
    torch.testing.assert_close(results[backend][1], results["torch"][1], **TOL[torch.float32])


def test_c_paper2020_helper_refuses_bad_inputs():
    x = torch.rand(4, 6)
    c = PAPER2020.constants()
    with pytest.raises(fused.KernelInputError, match=r"\[4, 6\]"):
        cpu_kernels.paper2020_backward(x[:, :5], x, c)
    with pytest.raises(fused.KernelInputError, match="float16"):
        cpu_kernels.paper2020_backward(x.half(), x.half(), c)
