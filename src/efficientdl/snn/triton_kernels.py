"""Triton kernels of the TSSL-BP neuron, written by hand: the LIF forward, the TSSL-BP backward
and the October 2020 backward (`snn.paper2020`). One program per block of neurons, the
recurrence over T in a loop inside it with the state (v, a forward; G, h backward) in registers;
only the pre-reset membrane u is saved between forward and backward.

They compute the canonical arithmetic of the torch reference (`snn.functional`) and of the C
kernels (`snn.cpu_kernels`), so the forward is bit-equal to both:
- every scalar is rounded once to the compute dtype and read from a small tensor (Triton would
  type a Python float argument as float32);
- one rounding per operation: the kernels are launched with `enable_fp_fusion=False` (no FMA
  contraction); float32 divisions are `tl.fdiv(..., ieee_rounding=True)` (a float32 `/` is not
  correctly rounded on the GPU; a float64 `/` is);
- e^x of the warm-up surrogate is the range reduction and Taylor polynomial of `cpu_kernels`
  (Triton's `exp` is an approximation on the GPU), so the TSSL-BP backward equals the C
  kernels' bit for bit.

They run compiled on CUDA tensors, and on CPU tensors in the Triton interpreter when
TRITON_INTERPRET=1 was set before triton was imported (how CI checks them without a GPU).
`triton` is imported on first use: the kernel bodies below are plain functions until `_jit`
hands them to `triton.jit`, which reads `tl` from this module's globals.
"""

from __future__ import annotations

import contextlib
import functools
import math
import os

import torch

from efficientdl.snn import cpu_kernels, fused, paper2020

tl = None  # triton.language, bound by `_jit` on first use (the kernel bodies read it)

BLOCK = 512
"""Neurons per program (a power of two)."""

_DEVICES = ("cpu", "cuda")

NEURON_CONSTANTS = ("r_m", "r_s", "lam_m", "lam_s", "th", "theta", "inv_w", "clip", "max_inv_du")
"""`NeuronOptions.constants()` in the order the TSSL-BP backward reads them."""

PAPER2020_CONSTANTS = ("r_m", "r_s", "lam_s", "th")
"""`NeuronOptions.constants()` the 2020 backward reads, then its clamp of 1/du, the surrogate's
width and clip."""

EXP_CONSTANTS = ("lowest", "log2e", "ln2_hi", "ln2_lo")
"""The exp's range and ln2 split, then (in the same tensor) its Taylor coefficients 1/i!."""


def _divide(x, y, IS_F64: tl.constexpr):
    """x / y rounded once: a float64 `/` is IEEE, a float32 one needs the precise division."""
    if IS_F64:
        return x / y
    else:
        return tl.fdiv(x, y, ieee_rounding=True)


def _exp_neg(x, exp_consts, DEGREE: tl.constexpr, IS_F64: tl.constexpr):
    """e^x for x <= 0 as `cpu_kernels`' exp_neg: x = k·ln2 + r (ln2 in a high and a low part),
    e^r by Horner from the highest coefficient, 2^k built in the exponent bits."""
    lowest = tl.load(exp_consts + 0)
    x = tl.where(x < lowest, lowest, x)
    if IS_F64:
        k = (x * tl.load(exp_consts + 1) - 0.5).to(tl.int64)
    else:
        k = (x * tl.load(exp_consts + 1) - 0.5).to(tl.int32)
    kf = k.to(x.dtype)
    r = (x - kf * tl.load(exp_consts + 2)) - kf * tl.load(exp_consts + 3)
    p = tl.zeros_like(x) + tl.load(exp_consts + 4 + DEGREE)
    for j in tl.static_range(DEGREE):
        p = tl.load(exp_consts + 3 + DEGREE - j) + r * p
    if IS_F64:
        return p * ((k + 1023) << 52).to(tl.float64, bitcast=True)
    else:
        return p * ((k + 127) << 23).to(tl.float32, bitcast=True)


def _previous(mem, row, M, mask, i, T, BLOCK: tl.constexpr):
    """u[t-1] at reverse step i (t = T-1-i), 0 at t = 0 (the mask is a vector: the interpreter
    masks with vectors only)."""
    has_prev = mask & (tl.full([BLOCK], i, tl.int32) < T - 1)
    return tl.load(mem + row - M, mask=has_prev, other=0.0)


def _forward_kernel(cur, trace, mem, consts, T, M, BLOCK: tl.constexpr):
    """LIF forward of neurons [pid·BLOCK, (pid+1)·BLOCK) over T steps (see `forward`)."""
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < M
    r_m = tl.load(consts + 0)
    r_s = tl.load(consts + 1)
    th = tl.load(consts + 2)
    v = tl.zeros([BLOCK], dtype=cur.dtype.element_ty)
    a = tl.zeros([BLOCK], dtype=cur.dtype.element_ty)
    for _ in range(T):
        x = tl.load(cur + offs, mask=mask, other=0.0)
        du = x - r_m * v
        u = v + du
        s = (u > th).to(cur.dtype.element_ty)
        v = u * (1 - s)
        a = a + (s - a) * r_s
        tl.store(trace + offs, a, mask=mask)
        tl.store(mem + offs, u, mask=mask)
        offs += M


def _backward_kernel(
    grad,
    mem,
    out,
    consts,
    exp_consts,
    T,
    M,
    last_row,
    WARM: tl.constexpr,
    INTRA: tl.constexpr,
    DEGREE: tl.constexpr,
    IS_F64: tl.constexpr,
    BLOCK: tl.constexpr,
):
    """TSSL-BP backward B1-B4 of neurons [pid·BLOCK, (pid+1)·BLOCK) (see `backward`); with WARM
    the recomputed trace a[t] is first written into `out` and overwritten in the reverse pass."""
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < M
    r_m = tl.load(consts + 0)
    r_s = tl.load(consts + 1)
    lam_m = tl.load(consts + 2)
    lam_s = tl.load(consts + 3)
    th = tl.load(consts + 4)
    theta = tl.load(consts + 5)
    inv_w = tl.load(consts + 6)
    clip = tl.load(consts + 7)
    max_inv_du = tl.load(consts + 8)
    zero = tl.zeros([BLOCK], dtype=mem.dtype.element_ty)
    one = zero + 1
    if WARM:
        a = zero
        row = offs
        for _ in range(T):
            s = (tl.load(mem + row, mask=mask, other=0.0) > th).to(mem.dtype.element_ty)
            a = a + (s - a) * r_s
            tl.store(out + row, a, mask=mask)
            row += M
        tl.debug_barrier()
    G = zero
    h = zero
    row = offs + last_row
    u = tl.load(mem + row, mask=mask, other=0.0)
    for i in range(T):
        prev = _previous(mem, row, M, mask, i, T, BLOCK)
        v_prev = tl.where(prev > th, zero, prev)
        spike = u > th
        G = tl.load(grad + row, mask=mask, other=0.0) * r_s + lam_s * G
        inv = _divide(one, tl.where(spike, u - v_prev, one), IS_F64)
        inv = tl.where(inv > max_inv_du, max_inv_du, inv)
        if INTRA:
            carry = G + u * r_m * h
        else:
            carry = G
        h = tl.where(spike, inv * carry, lam_m * h)
        if WARM:
            z = (u - th) * inv_w
            z = tl.where(z > clip, clip, tl.where(z < -clip, -clip, z))
            # σ(z)·σ(−z) = e/(1 + e)² with e = e^(−|z|)
            e = _exp_neg(tl.where(z > 0, -z, z), exp_consts, DEGREE, IS_F64)
            surrogate = _divide(e, (one + e) * (one + e), IS_F64) * inv_w * G
            quiet = tl.load(out + row, mask=mask, other=0.0) < theta
            tl.store(out + row, tl.where(quiet, surrogate, h), mask=mask)
        else:
            tl.store(out + row, h, mask=mask)
        u = prev
        row -= M


def _paper2020_kernel(
    grad,
    mem,
    out,
    consts,
    exp_consts,
    T,
    M,
    last_row,
    HIGH: tl.constexpr,
    DEGREE: tl.constexpr,
    IS_F64: tl.constexpr,
    BLOCK: tl.constexpr,
):
    """The October 2020 backward (`snn.paper2020`, steps 1-3) of neurons [pid·BLOCK,
    (pid+1)·BLOCK); HIGH is the layer's firing-rate switch, decided by the caller. The reset
    effect d[t] is first written into `out` and overwritten in the reverse pass."""
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < M
    r_m = tl.load(consts + 0)
    r_s = tl.load(consts + 1)
    lam_s = tl.load(consts + 2)
    th = tl.load(consts + 3)
    inv_du_clamp = tl.load(consts + 4)
    width = tl.load(consts + 5)
    clip = tl.load(consts + 6)
    zero = tl.zeros([BLOCK], dtype=mem.dtype.element_ty)
    one = zero + 1
    r = zero
    row = offs
    for _ in range(T):
        u = tl.load(mem + row, mask=mask, other=0.0)
        d = -r_m * r
        r = r + d
        tl.store(out + row, tl.where(u > th, d, zero), mask=mask)
        r = tl.where(u > th, -u, r)
        row += M
    tl.debug_barrier()
    row = offs + last_row
    u = tl.load(mem + row, mask=mask, other=0.0)
    nxt = zero
    G = zero
    for i in range(T):
        prev = _previous(mem, row, M, mask, i, T, BLOCK)
        spike = u > th
        delta = tl.load(grad + row, mask=mask, other=0.0)
        e = tl.where(spike, nxt, zero)
        nxt = tl.where(spike, tl.load(out + row, mask=mask, other=0.0) * delta, nxt)
        G = (delta + e) * r_s + lam_s * G
        if HIGH:
            du = tl.where(spike, u - tl.where(prev > th, zero, prev), one)
            inv = _divide(one, du, IS_F64)
            inv = tl.where(inv > inv_du_clamp, inv_du_clamp, inv)
            inv = tl.where(inv < -inv_du_clamp, -inv_du_clamp, inv)
            result = tl.where(spike, G * inv, zero)
        else:
            z = _divide(th - u, zero + width, IS_F64)
            z = tl.where(z > clip, clip, tl.where(z < -clip, -clip, z))
            # f/(1 + f)² with f = e^z is even in z: take f = e^(−|z|)
            f = _exp_neg(tl.where(z > 0, -z, z), exp_consts, DEGREE, IS_F64)
            result = G * _divide(f, (one + f) * (one + f) * width, IS_F64)
        tl.store(out + row, result, mask=mask)
        u = prev
        row -= M


def _triton():
    """The triton module, imported on first use (BackendUnavailableError naming the extra)."""
    try:
        import triton
        import triton.language
    except Exception as err:  # any failure to import: not installed, broken install
        raise fused.BackendUnavailableError(
            "the Triton kernels need the triton package (pip install efficientdl[triton]); "
            f"importing it failed: {fused.one_line(err)}"
        ) from err
    return triton


def interpreting() -> bool:
    """Whether this process runs Triton kernels in the interpreter: triton fixes it when it is
    first imported (TRITON_INTERPRET=1 set then), so the variable must be set before that."""
    return type(_triton().language.zeros).__name__ == "InterpretedFunction"


_NEEDS = (
    "the Triton kernels run on CUDA tensors, or on CPU tensors with TRITON_INTERPRET=1 "
    "(the Triton interpreter)"
)


def interpreter_status() -> tuple[bool, str]:
    """(True, '') when CPU tensors can run in the Triton interpreter in this process, else
    (False, why in one line)."""
    try:
        if interpreting():
            return True, ""
    except fused.BackendUnavailableError as err:
        return False, str(err)
    if os.environ.get("TRITON_INTERPRET", "0").strip() not in ("", "0"):
        return False, f"{_NEEDS}: TRITON_INTERPRET=1 was set after triton was imported"
    return False, _NEEDS


def check_device(device_type: str) -> None:
    """KernelInputError unless the kernels can run on `device_type` now (CUDA, or the CPU in the
    interpreter)."""
    if device_type == "cuda" or (device_type == "cpu" and interpreting()):
        return
    raise fused.KernelInputError(f"{_NEEDS}; got a {device_type} tensor")


@functools.cache
def _jit():
    """(forward, backward, paper2020 backward): `triton.jit` of the kernel bodies above
    (compiled, or run by the interpreter when `interpreting()`). The kernels call the helpers
    `_divide`, `_exp_neg` and `_previous` by name: those names are rebound to their jit versions
    here, as `tl` is bound to triton.language."""
    global tl, _divide, _exp_neg, _previous
    triton = _triton()
    tl = triton.language
    _divide, _exp_neg, _previous = (triton.jit(f) for f in (_divide, _exp_neg, _previous))
    kernels = tuple(triton.jit(f) for f in (_forward_kernel, _backward_kernel, _paper2020_kernel))
    if (type(kernels[0]).__name__ == "InterpretedFunction") != interpreting():
        raise fused.BackendUnavailableError(
            "TRITON_INTERPRET changed after triton was imported: set it before the process starts"
        )
    return kernels


def _exp_constants(dtype: torch.dtype, device: torch.device) -> tuple[torch.Tensor, int]:
    """The exp's constants (EXP_CONSTANTS, then 1/i!) as a tensor and its polynomial degree, the
    numbers `cpu_kernels` writes into its C source for `dtype`."""
    d = cpu_kernels.dtype_parameters(dtype)
    values = [float(d[k]) for k in EXP_CONSTANTS]
    values += [1.0 / math.factorial(i) for i in range(d["degree"] + 1)]
    return _constants(tuple(values), dtype, device), d["degree"]


@functools.lru_cache(maxsize=64)
def _constants(values: tuple[float, ...], dtype: torch.dtype, device: torch.device):
    """`values` as one tensor of `dtype` on `device`, each rounded once (kept: kernels only read
    it)."""
    return torch.tensor(values, dtype=dtype, device=device)


def _on(device: torch.device):
    """The context that makes `device` current for a launch (Triton launches on the current
    CUDA device)."""
    return torch.cuda.device(device) if device.type == "cuda" else contextlib.nullcontext()


_LAUNCH = {"enable_fp_fusion": False, "num_warps": 4}
"""Launch options: no FMA contraction (the interpreter ignores them: it rounds every op)."""


def _grid(M: int, block: int) -> tuple[int]:
    """One program per `block` neurons (at least one)."""
    return (max(1, -(-M // block)),)


def _check_block(block: int) -> None:
    """KernelInputError unless `block` is a power of two >= 16 (what tl.arange takes)."""
    if block < 16 or block & (block - 1):
        raise fused.KernelInputError(f"block: expected a power of two >= 16, got {block}")


def forward(current: torch.Tensor, r_m: float, r_s: float, th: float, *, block: int = BLOCK):
    """LIF forward of `current` [T, ...] (float32/float64, CUDA; CPU under TRITON_INTERPRET=1) →
    (trace a, pre-reset membrane u), both contiguous in the input's shape; r_m = 1/τm, r_s = 1/τs
    and the threshold as numbers."""
    x = fused.time_major("current", current, _DEVICES)
    check_device(x.device.type)
    _check_block(block)
    T, M = x.shape
    trace, membrane = torch.empty_like(x), torch.empty_like(x)
    consts = _constants((float(r_m), float(r_s), float(th)), x.dtype, x.device)
    kernel = _jit()[0]
    with _on(x.device):
        kernel[_grid(M, block)](x, trace, membrane, consts, T, M, BLOCK=block, **_LAUNCH)
    return trace.reshape(current.shape), membrane.reshape(current.shape)


def backward(
    grad: torch.Tensor,
    membrane: torch.Tensor,
    c: dict,
    warmup: bool,
    intra: bool,
    *,
    block: int = BLOCK,
):
    """TSSL-BP backward (B1-B4 of `functional.tsslbp_backward`) → ∂L/∂I, contiguous in the shape
    of `membrane` [T, ...] (the saved pre-reset u; `grad` ∂L/∂a of the same shape and dtype; `c`
    as `NeuronOptions.constants()`; `warmup`: the warm-up surrogate, `intra`: the reset term)."""
    u = fused.time_major("membrane", membrane, _DEVICES)
    g = fused.time_major("grad", grad, _DEVICES, like=u)
    check_device(u.device.type)
    _check_block(block)
    T, M = u.shape
    consts = _constants(tuple(float(c[k]) for k in NEURON_CONSTANTS), u.dtype, u.device)
    exp_consts, degree = _exp_constants(u.dtype, u.device)
    out = torch.empty_like(u)
    kernel = _jit()[1]
    with _on(u.device):
        kernel[_grid(M, block)](
            g,
            u,
            out,
            consts,
            exp_consts,
            T,
            M,
            (T - 1) * M,
            WARM=bool(warmup),
            INTRA=bool(intra),
            DEGREE=degree,
            IS_F64=u.dtype == torch.float64,
            BLOCK=block,
            **_LAUNCH,
        )
    return out.reshape(membrane.shape)


def paper2020_backward(grad: torch.Tensor, membrane: torch.Tensor, c: dict, *, block: int = BLOCK):
    """The October 2020 backward (`snn.paper2020.backward`, the same per-call firing-rate
    switch) → ∂L/∂I, contiguous in the shape of `membrane` [T, ...] (the saved pre-reset u;
    `grad` ∂L/∂a of the same shape and dtype; `c` as `NeuronOptions.constants()`)."""
    u = fused.time_major("membrane", membrane, _DEVICES)
    g = fused.time_major("grad", grad, _DEVICES, like=u)
    check_device(u.device.type)
    _check_block(block)
    T, M = u.shape
    th = torch.tensor(c["th"], dtype=u.dtype, device=u.device)
    high = paper2020.high_rate(u > th, u.dtype)
    values = tuple(float(c[k]) for k in PAPER2020_CONSTANTS)
    values += (paper2020.INV_DU_CLAMP, paper2020.SURROGATE_WIDTH, paper2020.SURROGATE_CLIP)
    consts = _constants(values, u.dtype, u.device)
    exp_consts, degree = _exp_constants(u.dtype, u.device)
    out = torch.empty_like(u)
    kernel = _jit()[2]
    with _on(u.device):
        kernel[_grid(M, block)](
            g,
            u,
            out,
            consts,
            exp_consts,
            T,
            M,
            (T - 1) * M,
            HIGH=high,
            DEGREE=degree,
            IS_F64=u.dtype == torch.float64,
            BLOCK=block,
            **_LAUNCH,
        )
    return out.reshape(membrane.shape)
