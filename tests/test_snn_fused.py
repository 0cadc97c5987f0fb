"""The fused backend against the torch reference: forward bit-equal, backward ≤ 1e-6."""

import pytest
import torch

from efficientdl.snn import fused
from efficientdl.snn.functional import lif_states, resolve_backend, tsslbp
from efficientdl.snn.networks import build
from efficientdl.snn.options import NeuronOptions

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
    monkeypatch.setattr(fused, "available", lambda device_type: (False, "no C compiler"))
    assert resolve_backend("auto", x) == "torch"
    out = tsslbp(x, **P)  # auto: no error
    assert torch.equal(out, lif_states(x, **P).trace)
    with pytest.raises(RuntimeError, match="no C compiler"):
        tsslbp(x, **P, backend="fused")
    with pytest.raises(ValueError, match="needs a CUDA tensor"):
        resolve_backend("triton", x)


@pytest.mark.parametrize("options", [{}, {"intra_neuron": False, "warmup_surrogate": False}])
def test_gpu_recurrences_match_reference_on_cpu(options):
    """The functions torch.compile turns into Triton kernels on CUDA, run eagerly on the CPU."""
    current, grad = _inputs((6, 50), torch.float64, seed=3)
    full = {
        "warmup_trace": None,
        "surrogate_width": 0.2,
        "surrogate_clip": 8.0,
        "max_inv_du": 8.0,
        "warmup_surrogate": True,
        "intra_neuron": True,
        **options,
    }
    c = NeuronOptions(**P, **full).constants()
    one = torch.ones((), dtype=torch.float64)
    trace, membrane = fused.forward_recurrence(current, one * c["r_m"], one * c["r_s"], one * 1.0)
    ref_out, ref_grad = _run(current, grad, "torch", **options)
    assert torch.equal(trace, ref_out)
    got = fused.backward_recurrence(
        grad, membrane, c, full["warmup_surrogate"], full["intra_neuron"]
    )
    torch.testing.assert_close(got, ref_grad, rtol=1e-12, atol=1e-15)


def test_triton_modules_build_on_the_cpu_and_fail_only_when_run_there():
    """Modules are built on the CPU and moved to CUDA later: construction checks the name only."""
    net = build("mnist_cnn", backend="triton")
    with pytest.raises(ValueError, match="needs a CUDA tensor"):
        net(torch.rand(2, 1, 28, 28))
    with pytest.raises(ValueError, match="backend must be one of"):
        build("mnist_cnn", backend="cuda")
