"""Golden values (groups G1-G5 below): computed independently in float64 from the official code."""

import pytest
import torch

from efficientdl.snn.functional import kernel_weights, lif_states, psp, tsslbp
from efficientdl.snn.losses import count_loss, kernel_loss, kernel_target, predict

ATOL = 1e-8
F64 = torch.float64


def t64(values):
    return torch.tensor(values, dtype=F64)


def test_g1_kernel_and_psp_closed_forms():
    kappa = [0.333333333, 0.222222222, 0.148148148, 0.098765432, 0.065843621]
    torch.testing.assert_close(kernel_weights(5, 3.0), t64(kappa), atol=1e-9, rtol=0)
    torch.testing.assert_close(
        psp(torch.ones(5, dtype=F64), 3.0),
        t64([1 / 3, 5 / 9, 19 / 27, 65 / 81, 211 / 243]),
        atol=ATOL,
        rtol=0,
    )
    for t0 in range(5):
        spike = torch.zeros(5, dtype=F64)
        spike[t0] = 1
        expected = torch.zeros(5, dtype=F64)
        expected[t0:] = kernel_weights(5 - t0, 3.0)
        torch.testing.assert_close(psp(spike, 3.0), expected, atol=ATOL, rtol=0)


def test_g1_targets():
    y = torch.tensor([0])
    official = kernel_target(y, 1, 5, tau_s=3.0, dtype=F64)[:, 0, 0]
    torch.testing.assert_close(
        official, t64([0, 1 / 9, 7 / 27, 11 / 27, 131 / 243]), atol=ATOL, rtol=0
    )
    paper = kernel_target(y, 1, 5, tau_s=3.0, pattern="paper", target_filter_passes=1, dtype=F64)
    torch.testing.assert_close(
        paper[:, 0, 0], t64([0, 1 / 3, 2 / 9, 13 / 27, 53 / 81]), atol=ATOL, rtol=0
    )
    once = kernel_target(y, 1, 5, tau_s=3.0, target_filter_passes=1, dtype=F64)[:, 0, 0]
    torch.testing.assert_close(once, t64([0, 1 / 3, 5 / 9, 19 / 27, 65 / 81]), atol=ATOL, rtol=0)


def test_g1_psp_backward_is_anticausal_kernel():
    T = 6
    kappa = kernel_weights(T, 3.0)
    idx = torch.arange(T)
    diff = idx[:, None] - idx[None, :]
    matrix = torch.where(diff >= 0, kappa[diff.clamp(min=0)], torch.zeros((), dtype=F64))
    x = torch.randn(T, 3, dtype=F64, requires_grad=True)
    dy = torch.randn(T, 3, dtype=F64)
    (psp(x, 3.0) * dy).sum().backward()
    x2 = x.detach().clone().requires_grad_()
    ((matrix @ x2) * dy).sum().backward()
    torch.testing.assert_close(x.grad, x2.grad, atol=1e-12, rtol=0)


def test_g2_forward():
    states = lif_states(
        t64([0.6, 0.7, 0.2, 1.5, 0.1])[:, None], tau_m=5.0, tau_s=3.0, threshold=1.0
    )
    torch.testing.assert_close(
        states.membrane[:, 0], t64([0.6, 1.18, 0.2, 1.66, 0.1]), atol=ATOL, rtol=0
    )
    assert states.spikes[:, 0].tolist() == [False, True, False, True, False]
    torch.testing.assert_close(
        states.trace[:, 0],
        t64([0, 0.333333333, 0.222222222, 0.481481481, 0.320987654]),
        atol=1e-9,
        rtol=0,
    )
    edge = lif_states(t64([1.0, 0.0, 1.0])[:, None], tau_m=5.0, tau_s=3.0, threshold=1.0)
    torch.testing.assert_close(edge.membrane[:, 0], t64([1.0, 0.8, 1.64]), atol=ATOL, rtol=0)
    assert edge.spikes[:, 0].tolist() == [False, False, True]
    # reset: after the spike at t=1 in the first case the membrane restarts from 0 (u[2] = I[2]).
    assert states.membrane[2, 0].item() == pytest.approx(0.2, abs=1e-15)


ROWS = [
    (
        [0.6, 0.7, 0.2, 1.5, 0.1],
        0.051906044,
        [0.019345462, 0.090002448, -0.013028418, -0.016285523, 0],
    ),
    ([1.2] * 5, 0.385315585, [0.347674756, 0.336642449, 0.275059696, 0.188995580, 0.091449474]),
    (
        [0.3] * 5,
        0.143939779,
        [-0.016628797, -0.072603344, -0.170565426, -0.209315871, -0.548696845],
    ),
]


def _grad(current, **options):
    I = t64(current)[:, None, None].requires_grad_()
    out = tsslbp(
        I,
        tau_m=5.0,
        tau_s=3.0,
        threshold=1.0,
        **{k: v for k, v in options.items() if k not in ("pattern", "passes")},
    )
    loss = kernel_loss(
        out,
        torch.tensor([0]),
        tau_s=3.0,
        pattern=options.get("pattern", "official"),
        target_filter_passes=options.get("passes", 2),
    )
    loss.backward()
    return loss.item(), I.grad[:, 0, 0]


@pytest.mark.parametrize("current, loss, grad", ROWS)
def test_g3_backward_default(current, loss, grad):
    got_loss, got_grad = _grad(current)
    assert got_loss == pytest.approx(loss, abs=ATOL)
    torch.testing.assert_close(got_grad, t64(grad), atol=ATOL, rtol=0)


@pytest.mark.parametrize(
    "row, expected",
    [
        (0, [0.072001958, 0.090002448, -0.013028418, -0.016285523, 0]),
        (1, ROWS[1][2]),
        (2, [-0.224746228, -0.280932785, -0.351165981, -0.438957476, -0.548696845]),
    ],
)
def test_g3_without_warmup_surrogate(row, expected):
    _, grad = _grad(ROWS[row][0], warmup_surrogate=False)
    torch.testing.assert_close(grad, t64(expected), atol=ATOL, rtol=0)


@pytest.mark.parametrize(
    "row, expected",
    [
        (0, [0.019345462, 0.095303667, -0.013028418, -0.016285523, 0]),
        (1, [0.280346266, 0.281630510, 0.237260580, 0.170705685, 0.091449474]),
        (2, ROWS[2][2]),
    ],
)
def test_g3_without_intra_neuron(row, expected):
    _, grad = _grad(ROWS[row][0], intra_neuron=False)
    torch.testing.assert_close(grad, t64(expected), atol=ATOL, rtol=0)


def test_g3_paper_target():
    loss, grad = _grad(ROWS[0][0], pattern="paper", passes=1)
    assert loss == pytest.approx(0.055555556, abs=ATOL)
    torch.testing.assert_close(
        grad, t64([-0.011521930, -0.073277077, -0.040588534, -0.050735667, 0]), atol=ATOL, rtol=0
    )


def test_g4_long_neuron():
    I = t64([1.2, 0, 0.1, 0, 0.1, 0, 0.05, 0.9, 0.5, 0.1])[:, None].requires_grad_()
    delta = t64([0.1, -0.2, 0.05, 0.3, -0.1, 0, 0.2, -0.3, 0.15, -0.05])[:, None]
    out = tsslbp(I, tau_m=8.0, tau_s=4.0, threshold=1.0)
    out.backward(delta)
    expected = [
        0.013188701,
        -0.027590587,
        -0.031532099,
        -0.036036685,
        -0.041184782,
        0.000508605,
        0.000786847,
        -0.061476993,
        0,
        0,
    ]
    torch.testing.assert_close(I.grad[:, 0], t64(expected), atol=ATOL, rtol=0)
    states = lif_states(I.detach(), tau_m=8.0, tau_s=4.0, threshold=1.0)
    assert torch.nonzero(states.spikes[:, 0]).flatten().tolist() == [0, 7]
    assert torch.nonzero(states.trace[:, 0] < 1 / 16).flatten().tolist() == [5, 6]


def test_g5_count_loss():
    out = t64([[0.2, 0.5, 0], [0.3, 0.5, 0.1], [0.3, 0.4, 0], [0.2, 0.6, 0.1]])[:, None, :]
    out.requires_grad_()
    loss = count_loss(out, torch.tensor([0]), desired=2.0, undesired=0.5)
    assert loss.item() == pytest.approx(0.40625, abs=1e-12)
    loss.backward()
    torch.testing.assert_close(out.grad, t64([-0.25, 0.375, 0]).expand(4, 1, 3), atol=1e-12, rtol=0)
    saturated = out.detach().clone()
    saturated[:, 0, 0] = 1.0  # true-class count 4 >= desired 2 → no penalty on it
    zero_true = count_loss(saturated, torch.tensor([0]), desired=2.0, undesired=5.0)
    assert zero_true.item() == 0.0


def test_g5_kernel_loss_gradient_and_predict():
    out = torch.rand(5, 3, 4, dtype=F64, requires_grad=True)
    labels = torch.tensor([2, 0, 3])
    kernel_loss(out, labels, tau_s=3.0).backward()
    target = torch.zeros(5, 3, 4, dtype=F64)
    pattern = t64([0, 1 / 9, 7 / 27, 11 / 27, 131 / 243])
    for n, k in enumerate(labels.tolist()):
        target[:, n, k] = pattern
    torch.testing.assert_close(out.grad, out.detach() - target, atol=1e-12, rtol=0)
    traces = t64([[[0.1, 0.3, 0.3], [0.5, 0.0, 0.1]], [[0.2, 0.0, 0.0], [0.0, 0.2, 0.0]]])
    # sums: sample 0 → [0.3, 0.3, 0.3] (tie → first index 0); sample 1 → [0.5, 0.2, 0.1] → 0
    assert predict(traces).tolist() == [0, 0]
    traces[1, 1, 2] = 1.0
    assert predict(traces).tolist() == [0, 2]


def test_validation_errors():
    with pytest.raises(ValueError, match="tau_m"):
        tsslbp(torch.zeros(3, 2), tau_m=1.0, tau_s=3.0, threshold=1.0)
    with pytest.raises(ValueError, match="threshold"):
        tsslbp(torch.zeros(3, 2), tau_m=5.0, tau_s=3.0, threshold=0.0)
    with pytest.raises(ValueError, match="floating"):
        tsslbp(torch.zeros(3, 2, dtype=torch.long), tau_m=5.0, tau_s=3.0, threshold=1.0)
    with pytest.raises(ValueError, match="T >= 1"):
        psp(torch.zeros(0, 2), 3.0)
    with pytest.raises(ValueError, match=r"labels must be \[N=2\]"):
        kernel_loss(torch.zeros(5, 2, 3), torch.tensor([0]), tau_s=3.0)
