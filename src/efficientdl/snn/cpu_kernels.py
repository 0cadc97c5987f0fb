"""Fused CPU kernels for the TSSL-BP neuron: plain C (OpenMP), compiled once per machine with the
system C compiler into the cache and called through ctypes. T is a runtime argument, so one build
serves every network. The forward uses the canonical LIF arithmetic of the reference without FMA
contraction (`-ffp-contract=off`), so it is bit-equal to the torch reference.

Per neuron block the recurrence over T runs with v, a (forward) and G, h (backward) in registers;
the backward first writes the recomputed trace into its output buffer and overwrites it in the
reverse pass, so nothing but the pre-reset membrane u is saved between forward and backward.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import torch

SOURCE = r"""
#include <stdint.h>
#include <string.h>
#define BLOCK 512

/* e^x for x <= 0, branch-free so loops using it vectorise: x = k·ln2 + r, |r| <= ln2/2,
   e^r by a Taylor polynomial (rel. error < 1 ulp at these degrees), 2^k built in the exponent. */
static inline float exp_neg_f32(float x) {
    x = x < -87.0f ? -87.0f : x;
    int32_t k = (int32_t)(x * 1.44269504088896341f - 0.5f);
    float kf = (float)k;
    float r = (x - kf * 0.693145751953125f) - kf * 1.428606765330187045e-06f;
    float p = 2.48015873015873e-05f;
    p = 0.0001984126984126984f + r * p;
    p = 0.001388888888888889f + r * p;
    p = 0.008333333333333333f + r * p;
    p = 0.041666666666666664f + r * p;
    p = 0.16666666666666666f + r * p;
    p = 0.5f + r * p;
    p = 1.0f + r * p;
    p = 1.0f + r * p;
    int32_t bits = (k + 127) << 23;
    float scale;
    memcpy(&scale, &bits, sizeof scale);
    return p * scale;
}

static inline double exp_neg_f64(double x) {
    x = x < -708.0 ? -708.0 : x;
    int64_t k = (int64_t)(x * 1.4426950408889634 - 0.5);
    double kf = (double)k;
    double r = (x - kf * 6.93147180369123816490e-01) - kf * 1.90821492927058770002e-10;
    double p = 1.6059043836821613e-10;
    p = 2.08767569878681e-09 + r * p;
    p = 2.505210838544172e-08 + r * p;
    p = 2.755731922398589e-07 + r * p;
    p = 2.7557319223985893e-06 + r * p;
    p = 2.48015873015873e-05 + r * p;
    p = 0.0001984126984126984 + r * p;
    p = 0.001388888888888889 + r * p;
    p = 0.008333333333333333 + r * p;
    p = 0.041666666666666664 + r * p;
    p = 0.16666666666666666 + r * p;
    p = 0.5 + r * p;
    p = 1.0 + r * p;
    p = 1.0 + r * p;
    int64_t bits = (k + 1023) << 52;
    double scale;
    memcpy(&scale, &bits, sizeof scale);
    return p * scale;
}

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

DEFINE_KERNELS(float, f32)
DEFINE_KERNELS(double, f64)
"""

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
    return lib


_SUFFIX = {torch.float32: "f32", torch.float64: "f64"}


def forward(current: torch.Tensor, r_m: float, r_s: float, th: float):
    """Fused LIF forward on a contiguous [T, M] CPU tensor → (trace, membrane)."""
    T, M = current.shape
    trace, membrane = torch.empty_like(current), torch.empty_like(current)
    getattr(library(), f"tsslbp_forward_{_SUFFIX[current.dtype]}")(
        current.data_ptr(),
        trace.data_ptr(),
        membrane.data_ptr(),
        T,
        M,
        r_m,
        r_s,
        th,
        torch.get_num_threads(),
    )
    return trace, membrane


def backward(grad: torch.Tensor, membrane: torch.Tensor, c: dict, warmup: bool, intra: bool):
    """Fused TSSL-BP backward (B1-B4 of `functional.tsslbp_backward`) on contiguous [T, M] CPU
    tensors → ∂L/∂I (`c` as `_constants`)."""
    T, M = membrane.shape
    out = torch.empty_like(membrane)
    getattr(library(), f"tsslbp_backward_{_SUFFIX[membrane.dtype]}")(
        grad.data_ptr(),
        membrane.data_ptr(),
        out.data_ptr(),
        T,
        M,
        c["r_m"],
        c["r_s"],
        c["lam_m"],
        c["lam_s"],
        c["th"],
        c["theta"],
        c["inv_w"],
        c["clip"],
        c["max_inv_du"],
        int(warmup),
        int(intra),
        torch.get_num_threads(),
    )
    return out
