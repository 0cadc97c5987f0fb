"""Side-by-side timing of named variants, and the activation memory a forward keeps for backward.

`time_variants` times every variant in one process, interleaved: after the warm-up calls, each
round calls every variant once, the order reversed every other round (a b c, c b a, a b c, ...),
so load from other processes and a slow drift of the machine's state hit every variant alike and
the ratios between variants stay fair. On CUDA each call is synchronised before the clock is read
and its peak allocated memory is recorded. `saved_mib` measures the tensors autograd saves for
backward, the same way on every device.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import torch
from tqdm import tqdm

MIB = 2**20


@dataclass(frozen=True)
class Timing:
    """The timed calls of one variant: wall times in milliseconds (in call order) and, on CUDA,
    the largest peak allocated memory of a timed call in MiB (None on other devices, where the
    allocator keeps no statistics; use `saved_mib` for a device-independent memory measure)."""

    name: str
    times_ms: tuple[float, ...]
    peak_mib: float | None = None

    @property
    def median_ms(self) -> float:
        """Median of the timed calls."""
        return statistics.median(self.times_ms)

    @property
    def spread_ms(self) -> float:
        """Interquartile range of the timed calls (0 for a single call)."""
        if len(self.times_ms) < 2:
            return 0.0
        q1, _, q3 = statistics.quantiles(self.times_ms, n=4, method="inclusive")
        return q3 - q1

    @property
    def best_ms(self) -> float:
        """Fastest timed call."""
        return min(self.times_ms)


def round_order(names: list[str], round_index: int) -> list[str]:
    """The call order of round `round_index`: `names` in even rounds, reversed in odd ones."""
    return names if round_index % 2 == 0 else names[::-1]


def time_variants(
    variants: Mapping[str, Callable[[], object]],
    *,
    warmup: int,
    rounds: int,
    device: torch.device | str | None = None,
    clock: Callable[[], float] = time.perf_counter,
    progress: str | None = None,
) -> dict[str, Timing]:
    """A `Timing` per variant: `warmup` untimed calls of each variant in turn, then `rounds`
    rounds of one timed call of every variant, in alternating order (`round_order`).

    `device`: where the variants run; on CUDA the device is synchronised before each call starts
    and after it returns, and each call's peak allocated memory is recorded. `clock` returns
    seconds (injectable for tests). `progress`: show a progress bar over the rounds with this
    label."""
    device = torch.device("cpu" if device is None else device)
    cuda = device.type == "cuda"
    names = list(variants)
    for name in names:
        for _ in range(warmup):
            variants[name]()
    times: dict[str, list[float]] = {name: [] for name in names}
    peaks: dict[str, float | None] = dict.fromkeys(names)
    indices = range(rounds)
    if progress is not None:
        indices = tqdm(indices, desc=progress, leave=False)
    for i in indices:
        for name in round_order(names, i):
            if cuda:
                torch.cuda.synchronize(device)
                torch.cuda.reset_peak_memory_stats(device)
            start = clock()
            variants[name]()
            if cuda:
                torch.cuda.synchronize(device)
            times[name].append(1000.0 * (clock() - start))
            if cuda:
                peak = torch.cuda.max_memory_allocated(device) / MIB
                peaks[name] = max(peak, peaks[name] or 0.0)
    return {name: Timing(name, tuple(times[name]), peaks[name]) for name in names}


def saved_mib(forward: Callable[[], object]) -> float:
    """MiB of the distinct tensor storages autograd saves for backward while `forward()` runs
    (the activation memory of a training step). A storage saved twice, or through views, counts
    once, at its full size."""
    storages: dict[tuple[torch.device, int], int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        storages[(t.device, storage.data_ptr())] = storage.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        forward()
    return sum(storages.values()) / MIB
