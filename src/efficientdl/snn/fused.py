"""The fused TSSL-BP kernels behind backend='fused' and 'triton': which implementation runs on
which tensors, whether it can run there (and why not), and the checks of their inputs.

- 'fused' on CPU tensors: the C/OpenMP kernels of `cpu_kernels`;
- 'fused' and 'triton' on CUDA tensors: the Triton kernels of `triton_kernels`;
- 'triton' on CPU tensors: the same Triton kernels in the Triton interpreter, only when
  TRITON_INTERPRET=1 is set (how CI checks them without a GPU).

Both implementations have both backwards (`algorithm` 'tsslbp' and 'paper2020').

Every implementation computes the canonical arithmetic of the torch reference (`functional`):
forward bit-equal, backward equal up to rounding.
"""

from __future__ import annotations

import functools

import torch

from efficientdl.core.errors import UserError
from efficientdl.snn.options import NeuronOptions

DTYPES = (torch.float32, torch.float64)
"""The dtypes the kernels compute in (others are converted by the caller, `functional`)."""

ALGORITHMS = ("tsslbp", "paper2020")
"""The backwards (`NeuronOptions.algorithm`) the kernels have, C and Triton alike."""


class KernelInputError(UserError, ValueError):
    """A fused-kernel helper was called with a tensor of the wrong device, dtype or shape."""


class BackendUnavailableError(UserError, RuntimeError):
    """A backend cannot run here: a missing package, no CUDA, no interpreter, no compiler."""


def one_line(err: BaseException) -> str:
    """'ErrorType: first line of the message' (a reason that fits in one log or error line)."""
    return f"{type(err).__name__}: {(str(err).strip().splitlines() or [''])[0]}"


def time_major(
    name: str, tensor: torch.Tensor, devices: tuple[str, ...], like: torch.Tensor | None = None
) -> torch.Tensor:
    """`tensor` [T, ...] as the contiguous [T, M] view the kernels read (a copy when it is not
    contiguous, e.g. channels-last or strided); KernelInputError unless it is a float32/float64
    tensor with T >= 1 on one of `devices` (and, given `like` [T, M], of its shape, dtype and
    device)."""
    if not isinstance(tensor, torch.Tensor):
        raise KernelInputError(f"{name}: expected a torch.Tensor, got {type(tensor).__name__}")
    if tensor.device.type not in devices:
        raise KernelInputError(
            f"{name}: expected a tensor on {' or '.join(devices)}, got device {tensor.device}"
        )
    if tensor.dtype not in DTYPES:
        raise KernelInputError(
            f"{name}: expected dtype float32 or float64, got {tensor.dtype} "
            "(convert it first, as tsslbp() does)"
        )
    if tensor.dim() < 1 or tensor.shape[0] < 1:
        raise KernelInputError(
            f"{name}: expected a time-first tensor [T, ...] with T >= 1, "
            f"got shape {tuple(tensor.shape)}"
        )
    view = tensor.reshape(tensor.shape[0], tensor[0].numel()).contiguous()
    if like is not None and (view.shape, view.dtype, view.device) != (
        like.shape,
        like.dtype,
        like.device,
    ):
        raise KernelInputError(
            f"{name}: expected shape [T, M] = {list(like.shape)}, {like.dtype} on {like.device} "
            f"like the membrane, got {list(view.shape)}, {view.dtype} on {view.device}"
        )
    return view


def implementation(device_type: str, backend: str = "fused") -> str:
    """Which kernels `backend` ('fused', 'triton' or 'auto') runs on `device_type`: 'c' or
    'triton' (whether they can run there is `available`)."""
    return "c" if device_type == "cpu" and backend != "triton" else "triton"


def _module(device_type: str, backend: str):
    """The kernel module (`cpu_kernels` or `triton_kernels`) `backend` runs on `device_type`."""
    if implementation(device_type, backend) == "c":
        from efficientdl.snn import cpu_kernels as module
    else:
        from efficientdl.snn import triton_kernels as module
    return module


def kernels(device_type: str = "cuda", backend: str = "fused"):
    """(forward, backward) of the implementation `backend` runs on `device_type`: forward(current,
    r_m, r_s, th) → (trace, membrane), backward(grad, membrane, c, warmup, intra) → ∂L/∂I
    (`c` as `NeuronOptions.constants()`)."""
    module = _module(device_type, backend)
    return module.forward, module.backward


@functools.cache
def _probe(device_type: str, name: str) -> tuple[bool, str]:
    """Build and run the kernels `name` once on a small tensor of `device_type`."""
    try:
        if name == "c":
            from efficientdl.snn import cpu_kernels

            cpu_kernels.library()
        else:
            from efficientdl.snn import triton_kernels

            triton_kernels.check_device(device_type)
            probe = torch.rand(2, 4, device=device_type) * 2
            c = NeuronOptions().constants()
            _, membrane = triton_kernels.forward(probe, c["r_m"], c["r_s"], c["th"])
            triton_kernels.backward(probe, membrane, c, True, True)
    except Exception as err:  # the reason goes to the caller, which reports or logs it
        return False, one_line(err)
    return True, ""


def available(
    device_type: str, backend: str = "fused", algorithm: str = "tsslbp"
) -> tuple[bool, str]:
    """(True, '') when the kernels of `backend` ('fused', 'triton' or 'auto') build and run the
    neuron's `algorithm` on `device_type`, else (False, the reason in one line). Probed once per
    device type and implementation; whether the Triton interpreter is asked for is read on every
    call."""
    if device_type not in ("cpu", "cuda"):
        return False, f"no fused kernels for device type {device_type!r}"
    name = implementation(device_type, backend)
    if algorithm not in ALGORITHMS:
        return False, f"the {name} kernels have no algorithm={algorithm!r} backward"
    if name == "triton" and device_type == "cpu":
        from efficientdl.snn import triton_kernels

        ok, why = triton_kernels.interpreter_status()
        if not ok:
            return False, why
    return _probe(device_type, name)


def backward(grad: torch.Tensor, membrane: torch.Tensor, options: NeuronOptions) -> torch.Tensor:
    """∂L/∂I of the neuron `options` (its algorithm, on the kernels its backend runs on the
    membrane's device) from ∂L/∂a and the saved pre-reset membrane u, both [T, ...]."""
    device_type = membrane.device.type
    if options.algorithm not in ALGORITHMS:
        raise BackendUnavailableError(available(device_type, options.backend, options.algorithm)[1])
    module = _module(device_type, options.backend)
    c = options.constants()
    if options.algorithm == "paper2020":
        return module.paper2020_backward(grad, membrane, c)
    return module.backward(grad, membrane, c, options.warmup_surrogate, options.intra_neuron)
