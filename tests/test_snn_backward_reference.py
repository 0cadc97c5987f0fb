"""TSSL-BP backward against an independent slow per-element transcription of its equations."""

import math

import pytest
import torch

from efficientdl.snn.functional import lif_states, tsslbp, tsslbp_backward

F64 = torch.float64
P = {"tau_m": 5.0, "tau_s": 3.0, "threshold": 1.0}


def slow_forward(I, tau_m, tau_s, threshold):
    """Scalar loop of the discrete LIF neuron for one neuron: lists u, du, s, a."""
    v, a = 0.0, 0.0
    us, dus, ss, as_ = [], [], [], []
    for x in I:
        du = x - v / tau_m
        u = v + du
        s = 1.0 if u > threshold else 0.0
        v = u * (1 - s)
        a = a + (s - a) / tau_s
        us.append(u), dus.append(du), ss.append(s), as_.append(a)
    return us, dus, ss, as_


def slow_backward(
    I,
    delta,
    *,
    tau_m,
    tau_s,
    threshold,
    warmup_surrogate=True,
    warmup_trace=None,
    surrogate_width=0.2,
    surrogate_clip=8.0,
    max_inv_du=8.0,
    intra_neuron=True,
):
    """Per-element, per-step TSSL-BP backward with the direct O(T²) kernel sum for G (no
    recursion)."""
    T = len(I)
    us, dus, ss, as_ = slow_forward(I, tau_m, tau_s, threshold)
    lam_m, lam_s = 1 - 1 / tau_m, 1 - 1 / tau_s
    theta = 1 / (4 * tau_s) if warmup_trace is None else warmup_trace
    G = [sum(lam_s**k / tau_s * delta[t + k] for k in range(T - t)) for t in range(T)]
    h_next = 0.0
    grad = [0.0] * T
    for t in reversed(range(T)):
        if ss[t]:
            rho = min(1 / dus[t], max_inv_du)
            h = rho * (G[t] + (us[t] / tau_m * h_next if intra_neuron else 0.0))
        else:
            h = lam_m * h_next
        if warmup_surrogate and as_[t] < theta:
            z = max(-surrogate_clip, min(surrogate_clip, (us[t] - threshold) / surrogate_width))
            grad[t] = math.exp(-z) / (1 + math.exp(-z)) ** 2 / surrogate_width * G[t]
        else:
            grad[t] = h
        h_next = h
    return grad


def random_case(shape=(7, 3, 4, 5, 5), seed=0):
    g = torch.Generator().manual_seed(seed)
    current = 0.2 + 0.9 * torch.rand(shape, generator=g, dtype=F64)  # spread around threshold
    delta = torch.randn(shape, generator=g, dtype=F64)
    return current, delta


OPTION_SETS = [
    {},
    {"warmup_surrogate": False},
    {"intra_neuron": False},
    {"max_inv_du": math.inf, "warmup_trace": 0.2},
    {"surrogate_width": 0.5, "surrogate_clip": 2.0},
]


@pytest.mark.parametrize("options", OPTION_SETS)
@pytest.mark.parametrize("backend", ["torch", "fused", "auto"])
def test_backward_matches_slow_reference(options, backend):
    current, delta = random_case()
    I = current.clone().requires_grad_()
    tsslbp(I, **P, backend=backend, **options).backward(delta)
    T = current.shape[0]
    flat_I, flat_d = current.reshape(T, -1), delta.reshape(T, -1)
    expected = torch.tensor(
        [
            slow_backward(flat_I[:, j].tolist(), flat_d[:, j].tolist(), **P, **options)
            for j in range(flat_I.shape[1])
        ],
        dtype=F64,
    ).T.reshape(current.shape)
    assert lif_states(current, **P).spikes.float().mean() > 0.1  # the case exercises spikes
    torch.testing.assert_close(I.grad, expected, atol=1e-10, rtol=0)


def test_forward_matches_slow_reference():
    current, _ = random_case(seed=1)
    states = lif_states(current, **P)
    T = current.shape[0]
    flat = current.reshape(T, -1)
    for j in range(flat.shape[1]):
        us, _, ss, as_ = slow_forward(flat[:, j].tolist(), **P)
        assert states.spikes.reshape(T, -1)[:, j].tolist() == [bool(s) for s in ss]
        torch.testing.assert_close(
            states.membrane.reshape(T, -1)[:, j], torch.tensor(us, dtype=F64), atol=1e-14, rtol=0
        )
        torch.testing.assert_close(
            states.trace.reshape(T, -1)[:, j], torch.tensor(as_, dtype=F64), atol=1e-14, rtol=0
        )


def _branches(current, delta):
    states = lif_states(current, **P)
    grad = tsslbp_backward(delta, states.membrane, **P)
    return states, grad


def test_branch_invariants():
    current, delta = random_case((9, 400), seed=2)
    current[:, :50] *= 0.3  # some neurons never fire
    states, grad = _branches(current, delta)
    s, a, u = states.spikes, states.trace, states.membrane
    T = current.shape[0]
    lam_s, lam_m, theta = 2 / 3, 0.8, 1 / 12
    kappa = torch.tensor([lam_s**k / 3 for k in range(T)], dtype=F64)
    G = torch.stack([(kappa[: T - t, None] * delta[t:]).sum(0) for t in range(T)])
    z = ((u - 1.0) / 0.2).clamp(-8, 8)
    surrogate = torch.sigmoid(z) * torch.sigmoid(-z) / 0.2 * G
    checked = {"never": 0, "after_last": 0, "carry": 0}
    for j in range(current.shape[1]):
        fires = torch.nonzero(s[:, j]).flatten().tolist()
        if not fires:
            torch.testing.assert_close(grad[:, j], surrogate[:, j], atol=1e-12, rtol=0)
            checked["never"] += 1
            continue
        for t in range(T):
            if s[t, j]:
                assert a[t, j] >= theta  # spike steps never take the surrogate
                continue
            if a[t, j] < theta:
                assert grad[t, j] == pytest.approx(surrogate[t, j].item(), abs=1e-12)
                continue
            later = [p for p in fires if p > t]
            if not later:
                assert grad[t, j].item() == 0.0
                checked["after_last"] += 1
            else:
                p = later[0]
                assert grad[t, j].item() == pytest.approx(
                    lam_m ** (p - t) * grad[p, j].item(), abs=1e-12
                )
                checked["carry"] += 1
    assert min(checked.values()) > 0, checked


def test_changing_a_quiet_step_changes_only_that_step():
    current, delta = random_case((6, 200), seed=3)
    states, grad = _branches(current, delta)
    quiet = (~states.spikes) & (states.trace < 1 / 12) & (states.membrane < 0.9)
    t, j = [int(i) for i in torch.nonzero(quiet)[0]]
    membrane = states.membrane.clone()
    membrane[t, j] += 0.05  # stays below threshold
    changed = tsslbp_backward(delta, membrane, **P)
    diff = changed != grad
    assert diff[t, j]
    diff[t, j] = False
    assert not diff.any()


def test_silent_network_without_surrogate_gets_zero_gradient():
    I = torch.full((5, 8), 0.1, dtype=F64, requires_grad=True)
    tsslbp(I, **P, warmup_surrogate=False).backward(torch.randn(5, 8, dtype=F64))
    assert torch.equal(I.grad, torch.zeros_like(I))


def test_backward_shape_error():
    with pytest.raises(ValueError, match="grad_trace shape"):
        tsslbp_backward(torch.zeros(5, 2), torch.zeros(5, 3), **P)
