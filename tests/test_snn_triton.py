"""The Triton kernels against the torch reference: forward bit-equal, backward within 1e-6
(float32) / 1e-12 (float64) relative, and bit-equal to the C kernels (the same canonical
arithmetic, no FMA contraction), both backwards.

On the CPU they run in the Triton interpreter, in one child process started with
TRITON_INTERPRET=1 (triton fixes the mode when it is imported); the comparisons are made here.
On a machine with CUDA the same cases also run compiled on the GPU.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest
import torch

from efficientdl.core.errors import UserError
from efficientdl.snn import cpu_kernels, fused, paper2020, triton_kernels
from efficientdl.snn.functional import lif_states, tsslbp, tsslbp_backward
from efficientdl.snn.networks import build
from efficientdl.snn.options import NeuronOptions
from efficientdl.snn.triton_kernels import PAPER2020_CONSTANTS

INF = float("inf")
CASES = {
    # name: (shape [T, ...], dtype, neuron options, layout, block)
    "T1_single": ((1, 1), torch.float32, {}, "contiguous", 16),
    "T1_f64_no_warmup": ((1, 3, 7), torch.float64, {"warmup_surrogate": False}, "contiguous", 16),
    "T5_tail": ((5, 70), torch.float32, {}, "contiguous", 32),
    "T5_f64_no_intra": ((5, 70), torch.float64, {"intra_neuron": False}, "contiguous", 32),
    "T8_default_block": ((8, 2, 515), torch.float32, {}, "contiguous", triton_kernels.BLOCK),
    "T8_f64_wide_surrogate": (
        (8, 33),
        torch.float64,
        {"surrogate_width": 0.5, "surrogate_clip": 2.0, "max_inv_du": INF},
        "contiguous",
        16,
    ),
    "T8_plain": (
        (8, 40),
        torch.float32,
        {"warmup_surrogate": False, "intra_neuron": False},
        "contiguous",
        16,
    ),
    "T30_clip30": (
        (30, 33),
        torch.float32,
        {"warmup_trace": 0.3, "surrogate_clip": 30.0},
        "contiguous",
        64,
    ),
    "T30_f64": ((30, 2, 17), torch.float64, {}, "contiguous", 64),
    "channels_last": ((6, 3, 8, 5, 5), torch.float32, {}, "channels_last", 128),
    "channels_last_f64": ((6, 3, 8, 5, 5), torch.float64, {}, "channels_last", 128),
    "transposed": ((6, 3, 8, 5, 5), torch.float32, {}, "transposed", 128),
    "strided_f64": ((5, 4, 9), torch.float64, {}, "strided", 16),
}
PAPER2020_CASES = {
    # name: (shape [T, ...], dtype, current range, block); the 2020 code's τm 5, τs 2
    "high_rate": ((8, 3, 50), torch.float32, (-0.2, 1.4), 64),
    "high_rate_f64": ((5, 2, 33), torch.float64, (-0.2, 1.4), 16),
    "low_rate": ((8, 3, 50), torch.float32, (-0.3, 0.5), 64),
    "low_rate_f64": ((30, 17), torch.float64, (-0.3, 0.5), 16),
}
PAPER2020 = NeuronOptions(tau_m=5.0, tau_s=2.0, algorithm="paper2020")
TOL = {torch.float32: {"rtol": 1e-6, "atol": 1e-9}, torch.float64: {"rtol": 1e-12, "atol": 1e-15}}
P = {"tau_m": 5.0, "tau_s": 3.0, "threshold": 1.0}


def _layout(x: torch.Tensor, layout: str) -> torch.Tensor:
    """A tensor equal to `x` with the memory layout `layout` (not contiguous unless asked)."""
    if layout == "channels_last":  # each [N, C, H, W] slice channels-last
        T, N = x.shape[:2]
        flat = x.reshape(T * N, *x.shape[2:]).contiguous(memory_format=torch.channels_last)
        return flat.reshape(x.shape)
    if layout == "transposed":
        return x.transpose(-1, -2).contiguous().transpose(-1, -2)
    if layout == "strided":
        return torch.stack([x, -x], dim=-1)[..., 0]
    return x


def inputs(name: str, device="cpu"):
    """(current, grad) of case `name`: currents in [-0.2, 1.4] (spiking and quiet neurons)."""
    shape, dtype, _, layout, _ = CASES[name]
    g = torch.Generator().manual_seed(sum(shape))
    current = torch.rand(shape, generator=g, dtype=torch.float64) * 1.6 - 0.2
    grad = torch.randn(shape, generator=g, dtype=torch.float64)
    current, grad = current.to(dtype), grad.to(dtype)
    if layout != "contiguous":
        current, grad = _layout(current, layout), _layout(grad, layout)
        assert not current.is_contiguous()
    return current.to(device), grad.to(device)


def options(name: str) -> NeuronOptions:
    return NeuronOptions(**P, **CASES[name][2])


def run_kernels(name: str, device="cpu") -> dict:
    """The Triton forward and backward of case `name` (in this process)."""
    current, grad = inputs(name, device)
    opts, block = options(name), CASES[name][4]
    c = opts.constants()
    trace, membrane = triton_kernels.forward(current, c["r_m"], c["r_s"], c["th"], block=block)
    out = triton_kernels.backward(
        grad, membrane, c, opts.warmup_surrogate, opts.intra_neuron, block=block
    )
    return {"trace": trace.cpu(), "membrane": membrane.cpu(), "grad_in": out.cpu()}


def paper2020_inputs(name: str):
    """(current, grad) of the 2020 case `name`, currents uniform in its range."""
    shape, dtype, (lo, hi), _ = PAPER2020_CASES[name]
    g = torch.Generator().manual_seed(sum(shape))
    current = torch.rand(shape, generator=g, dtype=torch.float64) * (hi - lo) + lo
    return current.to(dtype), torch.randn(shape, generator=g, dtype=torch.float64).to(dtype)


def run_paper2020(name: str, device="cpu") -> torch.Tensor:
    """The Triton 2020 backward of case `name` from the Triton forward's membrane."""
    current, grad = (t.to(device) for t in paper2020_inputs(name))
    c = PAPER2020.constants()
    _, membrane = triton_kernels.forward(current, c["r_m"], c["r_s"], c["th"])
    block = PAPER2020_CASES[name][3]
    return triton_kernels.paper2020_backward(grad, membrane, c, block=block).cpu()


def bad_calls():
    """Calls the helpers must refuse, each with a word its message must contain."""
    x = torch.rand(4, 6)
    c = NeuronOptions().constants()
    return {
        "float16": (lambda: triton_kernels.forward(x.half(), 0.2, 0.3, 1.0), "float16"),
        "int64": (lambda: triton_kernels.forward(x.long(), 0.2, 0.3, 1.0), "int64"),
        "no_steps": (lambda: triton_kernels.forward(x[:0], 0.2, 0.3, 1.0), "T >= 1"),
        "grad_shape": (lambda: triton_kernels.backward(x[:3], x, c, True, True), "[4, 6]"),
        "grad_dtype": (lambda: triton_kernels.backward(x.double(), x, c, True, True), "float64"),
        "block": (lambda: triton_kernels.forward(x, 0.2, 0.3, 1.0, block=24), "block"),
    }


CHILD = """
import sys
import torch
sys.path.insert(0, sys.argv[1])
import test_snn_triton as t  # the cases and run_kernels of this file
try:
    import triton  # noqa: F401
except Exception as err:  # any failure to import triton: the tests skip
    print(f"SKIP triton cannot be imported: {type(err).__name__}: {err}")
    raise SystemExit(0)
from efficientdl.snn import fused

results = {"available": fused.available("cpu", "triton")}
results["cases"] = {name: t.run_kernels(name) for name in t.CASES}
results["paper2020"] = {name: t.run_paper2020(name) for name in t.PAPER2020_CASES}
from efficientdl.snn.functional import tsslbp
e2e = {}
for algorithm in ("tsslbp", "paper2020"):  # the public op through backend='triton'
    current, grad = t.paper2020_inputs("low_rate_f64")
    x = current.clone().requires_grad_()
    out = tsslbp(x, tau_m=5.0, tau_s=2.0, algorithm=algorithm, backend="triton")
    out.backward(grad)
    e2e[algorithm] = (out.detach(), x.grad)
results["e2e"] = e2e
errors = {}
for name, (call, _) in t.bad_calls().items():
    try:
        call()
        errors[name] = None
    except Exception as err:
        errors[name] = (type(err).__name__, str(err))
results["errors"] = errors
torch.save(results, sys.argv[2])
"""


@pytest.fixture(scope="module")
def interpreted(tmp_path_factory):
    """Everything the child process computed in the Triton interpreter."""
    path = tmp_path_factory.mktemp("triton") / "results.pt"
    env = {**os.environ, "TRITON_INTERPRET": "1", "PYTHONUNBUFFERED": "1"}
    tests_dir = os.path.dirname(os.path.abspath(__file__))
    done = subprocess.run(
        [sys.executable, "-c", CHILD, tests_dir, str(path)],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    if done.stdout.startswith("SKIP"):
        pytest.skip(done.stdout.strip())
    return torch.load(path)


def _check_against_reference(name, got):
    current, grad = inputs(name)
    opts = options(name)
    ref = lif_states(current, opts)
    assert ref.spikes.any()  # and, past one neuron, quiet steps too: both branches are used
    assert ref.spikes.numel() == 1 or not ref.spikes.all()
    assert got["trace"].shape == current.shape and got["trace"].is_contiguous()
    assert torch.equal(got["trace"], ref.trace)
    assert torch.equal(got["membrane"], ref.membrane)
    expected = tsslbp_backward(grad, ref.membrane, opts)
    torch.testing.assert_close(got["grad_in"], expected, **TOL[current.dtype])
    c = opts.constants()
    in_c = cpu_kernels.backward(grad, ref.membrane, c, opts.warmup_surrogate, opts.intra_neuron)
    assert torch.equal(got["grad_in"], in_c)


@pytest.mark.parametrize("name", CASES)
def test_interpreted_kernels_equal_the_reference(interpreted, name):
    _check_against_reference(name, interpreted["cases"][name])


def _check_paper2020(name, got):
    current, grad = paper2020_inputs(name)
    ref = lif_states(current, PAPER2020)
    high = name.startswith("high")
    assert paper2020.high_rate(ref.spikes, current.dtype) == high  # the branch the case tests
    c = PAPER2020.constants()
    r_m, r_s, lam_s, th = (torch.tensor(c[k], dtype=current.dtype) for k in PAPER2020_CONSTANTS)
    expected = paper2020.backward(grad, ref.membrane, r_m, r_s, lam_s, th)
    assert got.shape == current.shape
    torch.testing.assert_close(got, expected, **TOL[current.dtype])
    assert (got != 0).any()
    assert torch.equal(got, cpu_kernels.paper2020_backward(grad, ref.membrane, c))


@pytest.mark.parametrize("name", PAPER2020_CASES)
def test_interpreted_paper2020_backward_equals_the_reference(interpreted, name):
    _check_paper2020(name, interpreted["paper2020"][name])


@pytest.mark.parametrize("algorithm", ["tsslbp", "paper2020"])
def test_backend_triton_on_cpu_tensors_in_the_interpreter(interpreted, algorithm):
    """`tsslbp(..., backend='triton')` on CPU tensors under the interpreter equals the torch
    reference: forward bit-equal, backward to float64 rounding."""
    current, grad = paper2020_inputs("low_rate_f64")
    x = current.clone().requires_grad_()
    out = tsslbp(x, tau_m=5.0, tau_s=2.0, algorithm=algorithm, backend="torch")
    out.backward(grad)
    got_out, got_grad = interpreted["e2e"][algorithm]
    assert torch.equal(got_out, out.detach())
    torch.testing.assert_close(got_grad, x.grad, rtol=1e-12, atol=1e-15)


def test_interpreter_is_available_in_the_child(interpreted):
    assert interpreted["available"] == (True, "")


@pytest.mark.parametrize("name", list(bad_calls()))
def test_kernels_refuse_bad_inputs_with_a_clear_error(interpreted, name):
    error = interpreted["errors"][name]
    assert error is not None, f"{name} was accepted"
    kind, message = error
    assert kind == "KernelInputError" and "\n" not in message
    assert bad_calls()[name][1] in message, message


@pytest.mark.skipif(
    os.environ.get("TRITON_INTERPRET") not in (None, "", "0"), reason="interpreter in this process"
)
def test_cpu_tensors_need_the_interpreter():
    """Without TRITON_INTERPRET=1 a CPU tensor is refused naming both ways to run."""
    ok, why = fused.available("cpu", "triton")
    assert not ok
    assert "TRITON_INTERPRET=1" in why or "pip install efficientdl[triton]" in why, why
    with pytest.raises(UserError, match="TRITON_INTERPRET=1|efficientdl\\[triton\\]"):
        triton_kernels.forward(torch.rand(3, 4), 0.2, 0.3, 1.0)


def test_missing_triton_is_one_line_naming_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "triton", None)  # `import triton` raises ImportError
    with pytest.raises(fused.BackendUnavailableError) as err:
        triton_kernels.forward(torch.rand(3, 4), 0.2, 0.3, 1.0)
    assert "pip install efficientdl[triton]" in str(err.value) and "\n" not in str(err.value)
    ok, why = fused.available("cpu", "triton")
    assert not ok and "pip install efficientdl[triton]" in why


def test_which_kernels_run_where():
    assert fused.implementation("cpu") == fused.implementation("cpu", "auto") == "c"
    assert fused.implementation("cpu", "triton") == "triton"
    assert fused.implementation("cuda") == fused.implementation("cuda", "triton") == "triton"
    assert fused.kernels("cpu") == (cpu_kernels.forward, cpu_kernels.backward)
    assert fused.kernels() == (triton_kernels.forward, triton_kernels.backward)
    assert fused.available("mps") == (False, "no fused kernels for device type 'mps'")
    assert fused.available("cpu", "fused", "paper2020") == (True, "")
    assert fused.available("cpu", "fused", "tsslbp2") == (
        False,
        "the c kernels have no algorithm='tsslbp2' backward",
    )


def test_fused_backward_dispatches_on_device_backend_and_algorithm():
    """On CPU tensors 'fused' is the C backward of the neuron's algorithm."""
    current, grad = inputs("T5_tail")
    opts = options("T5_tail")
    membrane = lif_states(current, opts).membrane
    c = opts.constants()
    expected = cpu_kernels.backward(grad, membrane, c, opts.warmup_surrogate, opts.intra_neuron)
    assert torch.equal(fused.backward(grad, membrane, opts.replace(backend="fused")), expected)
    c2020 = PAPER2020.constants()
    membrane = lif_states(current, PAPER2020).membrane
    expected = cpu_kernels.paper2020_backward(grad, membrane, c2020)
    got = fused.backward(grad, membrane, PAPER2020.replace(backend="fused"))
    assert torch.equal(got, expected)
    assert not torch.equal(got, cpu_kernels.backward(grad, membrane, c2020, True, True))


def _compiler():
    """triton's compiler in compiled mode, or a skip (triton missing, or the interpreter)."""
    try:
        import triton
        from triton.backends.compiler import GPUTarget
        from triton.compiler import ASTSource
    except Exception as err:  # any failure to import triton
        pytest.skip(f"triton cannot be imported: {type(err).__name__}: {err}")
    if triton_kernels.interpreting():
        pytest.skip("this process runs triton in the interpreter")
    return triton.compile, ASTSource, GPUTarget("cuda", 90, 32)  # sm_90: H100 / H200


@pytest.mark.parametrize("dtype", ["fp32", "fp64"])
def test_kernels_compile_for_the_gpu_without_fma(dtype):
    """Compiled ahead of time for an H100/H200 (no GPU needed): the PTX has no fused
    multiply-add and its divisions are IEEE-rounded (div.rn)."""
    compile_, ASTSource, target = _compiler()
    forward, backward, backward2020 = triton_kernels._jit()
    ptr = "*" + dtype
    tensors = {"cur": ptr, "trace": ptr, "mem": ptr, "consts": ptr, "T": "i32", "M": "i32"}
    reverse = {"grad": ptr, "mem": ptr, "out": ptr, "consts": ptr, "exp_consts": ptr,
               "T": "i32", "M": "i32", "last_row": "i64"}  # fmt: skip
    exp = {"DEGREE": 13 if dtype == "fp64" else 8, "IS_F64": dtype == "fp64", "BLOCK": 512}
    kernels = {
        "forward": (forward, tensors, {"BLOCK": 512}),
        "backward": (backward, reverse, {"WARM": True, "INTRA": True, **exp}),
        "paper2020_high": (backward2020, reverse, {"HIGH": True, **exp}),
        "paper2020_low": (backward2020, reverse, {"HIGH": False, **exp}),
    }
    for name, (fn, signature, constexprs) in kernels.items():
        source = ASTSource(fn, {**signature, **dict.fromkeys(constexprs, "constexpr")}, constexprs)
        ptx = compile_(source, target=target, options=triton_kernels._LAUNCH).asm["ptx"]
        assert not re.search(r"\b(fma|mad)(\.\w+)*\.f(32|64)\b", ptx), name  # float FMA
        divisions = {line.split()[0] for line in ptx.splitlines() if line.strip().startswith("div")}
        assert divisions == (set() if name == "forward" else {f"div.rn.f{dtype[2:]}"}), name


cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


@cuda
@pytest.mark.parametrize("name", CASES)
def test_cuda_kernels_equal_the_reference(name):
    """Compiled on the GPU: the same results as the interpreter (and the C kernels) give."""
    _check_against_reference(name, run_kernels(name, "cuda"))


@cuda
@pytest.mark.parametrize("backend", ["fused", "triton", "auto"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_cuda_backends_equal_the_torch_reference(backend, dtype):
    current, grad = (t.to(dtype) for t in inputs("channels_last", "cuda"))
    results = {}
    for b in (backend, "torch"):
        x = current.detach().clone().requires_grad_()
        out = tsslbp(x, **P, backend=b)
        out.backward(grad)
        results[b] = (out.detach(), x.grad)
    assert torch.equal(results[backend][0], results["torch"][0])
    torch.testing.assert_close(results[backend][1], results["torch"][1], **TOL[dtype])


@cuda
@pytest.mark.parametrize("name", PAPER2020_CASES)
def test_cuda_paper2020_backward_equals_the_reference(name):
    _check_paper2020(name, run_paper2020(name, "cuda"))


@cuda
def test_cuda_whole_network_gradients_agree():
    torch.manual_seed(0)
    nets = {b: build("mnist_cnn", backend=b).cuda() for b in ("torch", "fused")}
    nets["fused"].load_state_dict(nets["torch"].state_dict())
    x = torch.randn(6, 1, 28, 28, device="cuda") * 3
    grads = {}
    for backend, net in nets.items():
        out = net(x)
        (out**2).sum().backward()
        grads[backend] = (out.detach(), [p.grad for p in net.parameters()])
    assert torch.equal(grads["torch"][0], grads["fused"][0])
    for a, b in zip(grads["torch"][1], grads["fused"][1]):
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-5 * a.abs().max().item())
