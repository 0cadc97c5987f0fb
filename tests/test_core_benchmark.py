"""The shared benchmark timer (call order, statistics from an injected clock) and the
saved-activation measure against closed forms."""

import pytest
import torch
from torch import nn

from efficientdl.core.benchmark import Timing, saved_mib, time_variants


class FakeClock:
    """A clock (seconds) that only moves when a fake variant says it took some time."""

    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


def test_rounds_alternate_their_order_after_the_warm_up():
    calls = []
    fns = {name: (lambda name=name: calls.append(name)) for name in ("a", "b", "c")}
    timings = time_variants(fns, device=torch.device("cpu"), warmup=2, rounds=3)
    assert list(timings) == ["a", "b", "c"]
    assert all(v >= 0 for t in timings.values() for v in t.times_ms)
    assert all(len(t.times_ms) == 3 and t.peak_mib is None for t in timings.values())
    assert calls == ["a"] * 2 + ["b"] * 2 + ["c"] * 2 + [*"abc", *"cba", *"abc"]


def test_median_spread_and_best_of_known_durations():
    clock = FakeClock()
    durations_ms = {"a": [100.0, 5.0, 1.0, 3.0, 7.0], "b": [100.0, 2.0, 2.0, 8.0, 4.0]}

    def variant(name):
        left = iter(durations_ms[name])

        def call():
            clock.now += next(left) / 1000.0

        return call

    timings = time_variants({n: variant(n) for n in durations_ms}, warmup=1, rounds=4, clock=clock)
    a, b = timings["a"], timings["b"]
    assert a.times_ms == pytest.approx((5.0, 1.0, 3.0, 7.0))  # the warm-up call is not timed
    assert b.times_ms == pytest.approx((2.0, 2.0, 8.0, 4.0))
    assert a.median_ms == pytest.approx(4.0) and b.median_ms == pytest.approx(3.0)
    # interquartile range, linear interpolation: a: 5.5 − 2.5; b: 5 − 2
    assert a.spread_ms == pytest.approx(3.0) and b.spread_ms == pytest.approx(3.0)
    assert a.best_ms == pytest.approx(1.0) and b.best_ms == pytest.approx(2.0)
    assert Timing("one", (4.0,)).spread_ms == 0.0


def test_saved_mib_of_linear_relu_is_its_closed_form():
    torch.manual_seed(0)
    batch, d_in, d_out = 64, 32, 16
    linear = nn.Linear(d_in, d_out)
    x = torch.randn(batch, d_in)
    # W's gradient needs the input; ReLU's backward needs its output; fp32 = 4 bytes
    expected = 4 * (batch * d_in + batch * d_out)
    assert saved_mib(lambda: torch.relu(linear(x)).sum()) == expected / 2**20
    # an input that needs a gradient also keeps W (its transpose is a view of W's storage)
    x.requires_grad_()
    expected += 4 * d_out * d_in
    assert saved_mib(lambda: torch.relu(linear(x)).sum()) == expected / 2**20
    with torch.no_grad():
        assert saved_mib(lambda: torch.relu(linear(x))) == 0.0


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_peak_memory_is_recorded_per_variant():
    device = torch.device("cuda")
    n = 2**22  # 16 MiB of fp32

    def allocate():
        torch.empty(n, device=device).fill_(1.0)

    timings = time_variants({"alloc": allocate}, warmup=1, rounds=2, device=device)
    assert timings["alloc"].peak_mib >= 16.0
    assert all(ms > 0 for ms in timings["alloc"].times_ms)
