"""Fused CPU kernels for the TSSL-BP neuron: plain C (OpenMP), compiled once per machine with the
system C compiler into the cache and called through ctypes. T is a runtime argument, so one build
serves every network. The forward uses the canonical LIF arithmetic of the reference without FMA
contraction (`-ffp-contract=off`), so it is bit-equal to the torch reference.

Per neuron block the recurrence over T runs with v, a (forward) and G, h (backward) in registers;
the backward first writes the recomputed trace into its output buffer and overwrites it in the
reverse pass, so nothing but the pre-reset membrane u is saved between forward and backward.
The October 2020 backward (`snn.paper2020`) works the same way, its forward pass writing the
reset effect d[t] and counting the layer's spikes (exactly, as integers) for its firing-rate
switch, which is decided once for the whole call before the reverse pass.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import math
import os
import shutil
import string
import subprocess
import tempfile
from pathlib import Path

import torch

from efficientdl.snn import fused, paper2020

_EXP_NEG = string.Template(r"""
static inline $real exp_neg_$suffix($real x) {
    x = x < $lowest ? $lowest : x;
    $int k = ($int)(x * $log2e - $half);
    $real kf = ($real)k;
    $real r = (x - kf * $ln2_hi) - kf * $ln2_lo;
$horner
    $int bits = (k + $bias) << $mantissa;
    $real scale;
    memcpy(&scale, &bits, sizeof scale);
    return p * scale;
}
""")
"""e^x for x <= 0, branch-free so loops using it vectorise: x = k·ln2 + r, |r| <= ln2/2 (ln2
split in a high and a low part), e^r by its Taylor polynomial Σ r^i/i! up to `degree` (rel. error
< 1 ulp), 2^k built in the exponent bits."""

_DTYPES = {
    "f32": dict(real="float", int="int32_t", lit="f", degree=8, lowest="-87.0", bias=127,
                mantissa=23, log2e="1.44269504088896341", ln2_hi="0.693145751953125",
                ln2_lo="1.428606765330187045e-06"),
    "f64": dict(real="double", int="int64_t", lit="", degree=13, lowest="-708.0", bias=1023,
                mantissa=52, log2e="1.4426950408889634", ln2_hi="6.93147180369123816490e-01",
                ln2_lo="1.90821492927058770002e-10"),
}  # fmt: skip
"""Per C type: the exp polynomial's degree, range and ln2 split, and the float layout."""


def _exp_neg(suffix: str) -> str:
    """The C source of `exp_neg_<suffix>` (Horner form from the highest coefficient)."""
    d = _DTYPES[suffix]
    coefficient = [repr(1.0 / math.factorial(i)) + d["lit"] for i in range(d["degree"] + 1)]
    lines = [f"    {d['real']} p = {coefficient[-1]};"]
    lines += [f"    p = {c} + r * p;" for c in reversed(coefficient[:-1])]
    literals = {k: d[k] + d["lit"] for k in ("lowest", "log2e", "ln2_hi", "ln2_lo")}
    return _EXP_NEG.substitute(
        d, **literals, suffix=suffix, half="0.5" + d["lit"], horner="\n".join(lines)
    )


SOURCE = (
    r"""
#include <stdint.h>
#include <string.h>
#define BLOCK 512
"""
    + "".join(_exp_neg(suffix) for suffix in _DTYPES)
    + r"""
#define DEFINE_KERNELS(REAL, SUFFIX)                                                           \
void tsslbp_forward_##SUFFIX(const REAL* restrict cur, REAL* restrict trace,                  \
                             REAL* restrict mem, int64_t T, int64_t M, REAL r_m, REAL r_s,     \
                             REAL th, int threads) {                                           \
    _Pragma("omp parallel for num_threads(threads) schedule(static)")                        \
    for (int64_t i0 = 0; i0 < M; i0 += BLOCK) {                                                \
        int64_t n = M - i0 < BLOCK ? M - i0 : BLOCK;                                           \
        REAL v[BLOCK], a[BLOCK];                                                               \
        for (int64_t j = 0; j < n; j++) { v[j] = 0; a[j] = 0; }                                \
        for (int64_t t = 0; t < T; t++) {                                                      \
            const REAL* restrict c = cur + t * M + i0;                                         \
            REAL* restrict tr = trace + t * M + i0;                                            \
            REAL* restrict me = mem + t * M + i0;                                              \
            for (int64_t j = 0; j < n; j++) {                                                  \
                REAL du = c[j] - r_m * v[j];                                                   \
                REAL u = v[j] + du;                                                            \
                REAL s = u > th ? (REAL)1 : (REAL)0;                                           \
                v[j] = u * ((REAL)1 - s);                                                      \
                a[j] = a[j] + (s - a[j]) * r_s;                                                \
                tr[j] = a[j];                                                                  \
                me[j] = u;                                                                     \
            }                                                                                  \
        }                                                                                      \
    }                                                                                          \
}                                                                                              \
void tsslbp_backward_##SUFFIX(const REAL* restrict grad, const REAL* restrict mem,            \
                              REAL* restrict out, int64_t T, int64_t M, REAL r_m, REAL r_s,    \
                              REAL lam_m, REAL lam_s, REAL th, REAL theta, REAL inv_w,         \
                              REAL clip, REAL max_inv_du, int warm, int intra, int threads) {  \
    _Pragma("omp parallel for num_threads(threads) schedule(static)")                        \
    for (int64_t i0 = 0; i0 < M; i0 += BLOCK) {                                                \
        int64_t n = M - i0 < BLOCK ? M - i0 : BLOCK;                                           \
        REAL G[BLOCK], h[BLOCK], a[BLOCK], zero[BLOCK], intra_f = intra ? (REAL)1 : (REAL)0;    \
        for (int64_t j = 0; j < n; j++) { G[j] = 0; h[j] = 0; a[j] = 0; zero[j] = 0; }         \
        if (warm) {                                                                            \
            for (int64_t t = 0; t < T; t++) {                                                  \
                const REAL* restrict me = mem + t * M + i0;                                    \
                REAL* restrict o = out + t * M + i0;                                           \
                for (int64_t j = 0; j < n; j++) {                                              \
                    REAL s = me[j] > th ? (REAL)1 : (REAL)0;                                   \
                    a[j] = a[j] + (s - a[j]) * r_s;                                            \
                    o[j] = a[j];                                                               \
                }                                                                              \
            }                                                                                  \
        }                                                                                      \
        if (warm) BACKWARD_LOOP(REAL, SUFFIX, 1) else BACKWARD_LOOP(REAL, SUFFIX, 0)          \
    }                                                                                          \
}                                                                                              \
void tsslbp_paper2020_##SUFFIX(const REAL* restrict grad, const REAL* restrict mem,           \
                               REAL* restrict out, int64_t T, int64_t M, REAL r_m, REAL r_s,   \
                               REAL lam_s, REAL th, REAL rate_switch, REAL inv_du_clamp,       \
                               REAL width, REAL clip, int threads) {                          \
    int64_t fired = 0;                                                                         \
    _Pragma("omp parallel for num_threads(threads) schedule(static) reduction(+:fired)")      \
    for (int64_t i0 = 0; i0 < M; i0 += BLOCK) {                                                \
        int64_t n = M - i0 < BLOCK ? M - i0 : BLOCK;                                           \
        REAL r[BLOCK], count[BLOCK];                                                           \
        for (int64_t j = 0; j < n; j++) { r[j] = 0; count[j] = 0; }                            \
        for (int64_t t = 0; t < T; t++) {                                                      \
            const REAL* restrict me = mem + t * M + i0;                                        \
            REAL* restrict o = out + t * M + i0;                                               \
            for (int64_t j = 0; j < n; j++) {                                                  \
                REAL u = me[j];                                                                \
                REAL d = -r_m * r[j];                                                          \
                REAL decayed = r[j] + d;                                                       \
                o[j] = u > th ? d : (REAL)0;                                                   \
                r[j] = u > th ? -u : decayed;                                                  \
                count[j] = count[j] + (u > th ? (REAL)1 : (REAL)0);                            \
            }                                                                                  \
        }                                                                                      \
        for (int64_t j = 0; j < n; j++) fired += (int64_t)count[j];                            \
    }                                                                                          \
    int high = (REAL)fired / (REAL)(T * M) > rate_switch;                                      \
    _Pragma("omp parallel for num_threads(threads) schedule(static)")                        \
    for (int64_t i0 = 0; i0 < M; i0 += BLOCK) {                                                \
        int64_t n = M - i0 < BLOCK ? M - i0 : BLOCK;                                           \
        REAL G[BLOCK], next[BLOCK], zero[BLOCK];                                               \
        for (int64_t j = 0; j < n; j++) { G[j] = 0; next[j] = 0; zero[j] = 0; }                \
        if (high) PAPER2020_LOOP(REAL, SUFFIX, 1) else PAPER2020_LOOP(REAL, SUFFIX, 0)        \
    }                                                                                          \
}

/* The reverse recurrence (B1-B4) for one block; WARM selects the surrogate (a loop-invariant
   choice, so both variants vectorise). `intra` multiplies the reset term by 1 or 0 (exact). */
#define BACKWARD_LOOP(REAL, SUFFIX, WARM)                                                      \
    {                                                                                          \
        for (int64_t t = T - 1; t >= 0; t--) {                                                 \
            const REAL* restrict me = mem + t * M + i0;                                        \
            const REAL* restrict prev = t > 0 ? mem + (t - 1) * M + i0 : zero;                 \
            const REAL* restrict g = grad + t * M + i0;                                        \
            REAL* restrict o = out + t * M + i0;                                               \
            for (int64_t j = 0; j < n; j++) {                                                  \
                REAL u = me[j];                                                                \
                REAL v_prev = prev[j] > th ? (REAL)0 : prev[j];                                \
                REAL Gj = g[j] * r_s + lam_s * G[j];                                           \
                REAL inv = (REAL)1 / (u > th ? u - v_prev : (REAL)1);                          \
                inv = inv > max_inv_du ? max_inv_du : inv;                                     \
                REAL carry = Gj + u * r_m * h[j] * intra_f;                                    \
                REAL hj = u > th ? inv * carry : lam_m * h[j];                                 \
                REAL z = (u - th) * inv_w;                                                     \
                z = z > clip ? clip : (z < -clip ? -clip : z);                                 \
                REAL e = exp_neg_##SUFFIX(z > 0 ? -z : z);  /* σ(z)σ(−z) = e/(1+e)², e = e^−|z| */ \
                REAL surrogate = e / (((REAL)1 + e) * ((REAL)1 + e)) * inv_w * Gj;            \
                o[j] = (WARM & (o[j] < theta)) ? surrogate : hj;                               \
                G[j] = Gj;                                                                     \
                h[j] = hj;                                                                     \
            }                                                                                  \
        }                                                                                      \
    }

/* The reverse pass of the 2020 backward for one block, `out` holding the reset effect d[t]
   of the forward pass; HIGH is the layer's firing-rate switch (loop-invariant, as WARM). */
#define PAPER2020_LOOP(REAL, SUFFIX, HIGH)                                                     \
    {                                                                                          \
        for (int64_t t = T - 1; t >= 0; t--) {                                                 \
            const REAL* restrict me = mem + t * M + i0;                                        \
            const REAL* restrict prev = t > 0 ? mem + (t - 1) * M + i0 : zero;                 \
            const REAL* restrict g = grad + t * M + i0;                                        \
            REAL* restrict o = out + t * M + i0;                                               \
            for (int64_t j = 0; j < n; j++) {                                                  \
                REAL u = me[j];                                                                \
                REAL delta = g[j];                                                             \
                REAL e = u > th ? next[j] : (REAL)0;                                           \
                next[j] = u > th ? o[j] * delta : next[j];                                     \
                REAL Gj = (delta + e) * r_s + lam_s * G[j];                                    \
                G[j] = Gj;                                                                     \
                if (HIGH) {                                                                    \
                    REAL v_prev = prev[j] > th ? (REAL)0 : prev[j];                            \
                    REAL inv = (REAL)1 / (u > th ? u - v_prev : (REAL)1);                      \
                    inv = inv > inv_du_clamp ? inv_du_clamp : inv;                             \
                    inv = inv < -inv_du_clamp ? -inv_du_clamp : inv; /* du > 0 at spikes */    \
                    o[j] = u > th ? Gj * inv : (REAL)0;                                        \
                } else {                                                                       \
                    REAL z = (th - u) / width;                                                 \
                    z = z > clip ? clip : (z < -clip ? -clip : z);                             \
                    REAL f = exp_neg_##SUFFIX(z > 0 ? -z : z);  /* f/(1+f)² is even in z */     \
                    o[j] = Gj * (f / (((REAL)1 + f) * ((REAL)1 + f) * width));                 \
                }                                                                              \
            }                                                                                  \
        }                                                                                      \
    }

DEFINE_KERNELS(float, f32)
DEFINE_KERNELS(double, f64)
"""
)
"""The kernels' C source: one exp per dtype from `_EXP_NEG`, the kernels from one C macro."""

FLAGS = [
    "-O3",
    "-fopenmp",
    "-ffp-contract=off",
    "-fno-trapping-math",
    "-fPIC",
    "-shared",
    "-std=c11",
]


def _cache_dir() -> Path:
    root = os.environ.get("EFFICIENTDL_CACHE") or Path.home() / ".cache" / "efficientdl"
    return Path(root) / "kernels"


def _compiler() -> str | None:
    for name in (os.environ.get("CC"), "cc", "gcc", "clang"):
        if name and shutil.which(name):
            return name
    return None


def build(cache_dir: Path | None = None) -> Path:
    """Compile SOURCE into a shared library in the cache (atomic rename); return its path."""
    compiler = _compiler()
    if compiler is None:
        raise RuntimeError("no C compiler found (set CC, or install gcc)")
    digest = hashlib.sha256((SOURCE + " ".join(FLAGS) + compiler).encode()).hexdigest()[:16]
    cache_dir = cache_dir or _cache_dir()
    target = cache_dir / f"tsslbp_{digest}.so"
    if target.exists():
        return target
    cache_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=cache_dir) as tmp:
        src = Path(tmp) / "tsslbp.c"
        src.write_text(SOURCE)
        lib = Path(tmp) / "tsslbp.so"
        result = subprocess.run(
            [compiler, *FLAGS, str(src), "-o", str(lib), "-lm"], capture_output=True, text=True
        )
        if result.returncode != 0:
            raise RuntimeError(f"compiling the fused TSSL-BP kernels failed:\n{result.stderr}")
        os.replace(lib, target)
    return target


@functools.cache
def library() -> ctypes.CDLL:
    """The loaded kernel library (built on first use)."""
    lib = ctypes.CDLL(str(build()))
    i64, i32 = ctypes.c_int64, ctypes.c_int
    ptr = ctypes.c_void_p
    for suffix, real in (("f32", ctypes.c_float), ("f64", ctypes.c_double)):
        fwd = getattr(lib, f"tsslbp_forward_{suffix}")
        fwd.argtypes = [ptr, ptr, ptr, i64, i64, real, real, real, i32]
        fwd.restype = None
        bwd = getattr(lib, f"tsslbp_backward_{suffix}")
        bwd.argtypes = [ptr, ptr, ptr, i64, i64, *[real] * 9, i32, i32, i32]
        bwd.restype = None
        bwd2020 = getattr(lib, f"tsslbp_paper2020_{suffix}")
        bwd2020.argtypes = [ptr, ptr, ptr, i64, i64, *[real] * 8, i32]
        bwd2020.restype = None
    return lib


_SUFFIX = {torch.float32: "f32", torch.float64: "f64"}


def dtype_parameters(dtype: torch.dtype) -> dict:
    """The exp's degree, range, ln2 split and float layout the kernels use for `dtype`
    (float32 or float64), as written into SOURCE."""
    return _DTYPES[_SUFFIX[dtype]]


def forward(current: torch.Tensor, r_m: float, r_s: float, th: float):
    """Fused LIF forward of a CPU tensor `current` [T, ...] (float32/float64; any strides: read
    as a contiguous copy) → (trace a, pre-reset membrane u), contiguous in the input's shape.
    A KernelInputError names a wrong device, dtype or shape."""
    x = fused.time_major("current", current, ("cpu",))
    T, M = x.shape
    trace, membrane = torch.empty_like(x), torch.empty_like(x)
    getattr(library(), f"tsslbp_forward_{_SUFFIX[x.dtype]}")(
        x.data_ptr(),
        trace.data_ptr(),
        membrane.data_ptr(),
        T,
        M,
        r_m,
        r_s,
        th,
        torch.get_num_threads(),
    )
    return trace.reshape(current.shape), membrane.reshape(current.shape)


def _backward_kernel(kernel: str, grad: torch.Tensor, membrane: torch.Tensor, *constants):
    """Run the C backward `kernel` (its float32/float64 twin) on the [T, M] views of `grad` and
    `membrane` with the scalar `constants`; ∂L/∂I contiguous in the shape of `membrane`."""
    u = fused.time_major("membrane", membrane, ("cpu",))
    g = fused.time_major("grad", grad, ("cpu",), like=u)
    T, M = u.shape
    out = torch.empty_like(u)
    getattr(library(), f"{kernel}_{_SUFFIX[u.dtype]}")(
        g.data_ptr(), u.data_ptr(), out.data_ptr(), T, M, *constants, torch.get_num_threads()
    )
    return out.reshape(membrane.shape)


def backward(grad: torch.Tensor, membrane: torch.Tensor, c: dict, warmup: bool, intra: bool):
    """Fused TSSL-BP backward (B1-B4 of `functional.tsslbp_backward`) → ∂L/∂I, contiguous in the
    shape of `membrane` [T, ...] (the saved pre-reset u, a float32/float64 CPU tensor; `grad`
    ∂L/∂a of the same shape and dtype, any strides; `c` as `NeuronOptions.constants()`)."""
    keys = ("r_m", "r_s", "lam_m", "lam_s", "th", "theta", "inv_w", "clip", "max_inv_du")
    return _backward_kernel(
        "tsslbp_backward", grad, membrane, *(c[k] for k in keys), int(warmup), int(intra)
    )


def paper2020_backward(grad: torch.Tensor, membrane: torch.Tensor, c: dict) -> torch.Tensor:
    """The October 2020 backward (`snn.paper2020.backward`) → ∂L/∂I, contiguous in the shape of
    `membrane` [T, ...] (the saved pre-reset u, a float32/float64 CPU tensor; `grad` ∂L/∂a of the
    same shape and dtype, any strides; `c` as `NeuronOptions.constants()`). The firing-rate
    switch is `paper2020.high_rate` over the whole call: the spikes counted exactly, the rate and
    its comparison in u's dtype."""
    return _backward_kernel(
        "tsslbp_paper2020",
        grad,
        membrane,
        *(c[k] for k in ("r_m", "r_s", "lam_s", "th")),
        paper2020.RATE_SWITCH,
        paper2020.INV_DU_CLAMP,
        paper2020.SURROGATE_WIDTH,
        paper2020.SURROGATE_CLIP,
    )
