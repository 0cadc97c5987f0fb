"""Task losses and policy regularisers against values worked out by hand."""

import math

import pytest
import torch
import torch.nn.functional as F

from efficientdl.adashare.objectives.losses import (
    depth_loss,
    downsample_target,
    l1_loss,
    normal_loss,
    seg_loss,
    sharing_loss,
    sparsity_loss,
)

pytestmark = pytest.mark.usefixtures("one_thread")

LN3 = math.log(3)
# 2 tasks × 4 blocks × (select, skip)
LOGITS = torch.tensor(
    [
        [[0.0, 0.0], [1.0, 0.0], [0.0, 1.0], [2.0, 2.0]],
        [[1.0, 1.0], [0.0, 0.0], [LN3, 0.0], [0.0, LN3]],
    ]
)

# −log softmax(a)[skip] = log(1 + e^(a0 − a1)), per (task, block)
NLL_SKIP = [
    [math.log(2), math.log(1 + math.e), math.log(1 + 1 / math.e), math.log(2)],
    [math.log(2), math.log(2), math.log(4), math.log(4 / 3)],
]
SIG = lambda d: 1 / (1 + math.exp(-d))  # noqa: E731  α = sigmoid(a0 − a1)
ALPHA = [[0.5, SIG(1), SIG(-1), 0.5], [0.5, 0.5, 0.75, 0.25]]


@pytest.mark.parametrize("n", [4, 2, 1])
def test_official_sparsity_by_hand(n):
    expected = sum(sum(row[4 - n :]) / n for row in NLL_SKIP)
    assert sparsity_loss(LOGITS, n).item() == pytest.approx(expected, rel=1e-6)
    weighted = sum((2 / n) * sum((l + 1) / 4 * row[l] for l in range(4 - n, 4)) for row in NLL_SKIP)
    got = sparsity_loss(LOGITS, n, depth_weighted=True).item()
    assert got == pytest.approx(weighted, rel=1e-6)
    paper = sum(math.log(a) for row in ALPHA for a in row[4 - n :])
    assert sparsity_loss(LOGITS, n, variant="paper").item() == pytest.approx(paper, rel=1e-6)


def test_sparsity_defaults_to_all_blocks_and_is_float32():
    out = sparsity_loss(LOGITS.double())
    assert out.dtype == torch.float32
    assert out.item() == pytest.approx(sparsity_loss(LOGITS, 4).item())


def test_sharing_by_hand():
    diffs = [1.0, 1.0, LN3, 2.0]  # |a_0,l,select − a_1,l,select|
    official = sum((l + 1) / 4 * d for l, d in enumerate(diffs))
    assert sharing_loss(LOGITS).item() == pytest.approx(official, rel=1e-6)
    uniform = sharing_loss(LOGITS, block_weights="uniform").item()
    assert uniform == pytest.approx(sum(diffs), rel=1e-6)
    paper = sum((4 - l) / 4 * abs(ALPHA[0][l] - ALPHA[1][l]) for l in range(4))
    assert sharing_loss(LOGITS, variant="paper").item() == pytest.approx(paper, rel=1e-6)


def test_sharing_sums_over_task_pairs_and_is_zero_for_equal_logits():
    same = LOGITS[:1].repeat(3, 1, 1)
    assert sharing_loss(same).item() == 0.0
    assert sharing_loss(same, variant="paper").item() == 0.0
    three = torch.cat([LOGITS, LOGITS[:1]])  # pairs (0,1), (0,2) = 0, (1,2) = (0,1)
    assert sharing_loss(three).item() == pytest.approx(2 * sharing_loss(LOGITS).item(), rel=1e-6)


@pytest.mark.parametrize("variant", ["official", "paper"])
def test_sparsity_gradient_touches_only_unlocked_blocks(variant):
    logits = torch.randn(3, 8, 2, requires_grad=True)
    sparsity_loss(logits, 3, variant=variant).backward()
    assert (logits.grad[:, :5] == 0).all()
    assert (logits.grad[:, 5:] != 0).all()
    pair = torch.randn(2, 8, 2, requires_grad=True)
    sharing_loss(pair, variant=variant).backward()  # all L blocks, independent of n
    assert (pair.grad[..., 0] != 0).all()


def test_regulariser_errors():
    with pytest.raises(ValueError, match=r"\[K, L, 2\]"):
        sparsity_loss(torch.zeros(2, 4))
    with pytest.raises(ValueError, match="n_unlocked must be in 1..4"):
        sparsity_loss(LOGITS, 5)
    with pytest.raises(ValueError, match="unknown regulariser variant 'both'"):
        sharing_loss(LOGITS, variant="both")
    with pytest.raises(ValueError, match="unknown block_weights 'linear'"):
        sharing_loss(LOGITS, block_weights="linear")
    with pytest.raises(ValueError, match="depth_weighted applies to variant='official'"):
        sparsity_loss(LOGITS, variant="paper", depth_weighted=True)


@pytest.mark.parametrize("size", [(8, 8), (9, 13), (5, 7)])
def test_downsample_matches_interpolate_nearest(size):
    target = torch.randint(0, 40, (2, 61, 81))
    expected = F.interpolate(target[:, None].float(), size=size, mode="nearest")[:, 0].long()
    assert torch.equal(downsample_target(target, size), expected)
    normals = torch.randn(2, 3, 61, 81)
    assert torch.equal(
        downsample_target(normals, size), F.interpolate(normals, size=size, mode="nearest")
    )


def test_seg_loss_ignores_255_and_pools_valid_pixels():
    pred = torch.randn(2, 4, 4, 4)
    target = torch.randint(0, 4, (2, 32, 32))
    target[0, :16] = 255
    small = downsample_target(target, (4, 4))
    logp = torch.log_softmax(pred, 1)
    valid = small != 255
    picked = logp.gather(1, small.clamp(max=3)[:, None])[:, 0]
    expected = -(picked[valid]).mean()
    torch.testing.assert_close(seg_loss(pred, target), expected)
    weight = torch.tensor([1.0, 2.0, 3.0, 4.0])
    w = weight[small.clamp(max=3)]
    expected_w = -(picked * w)[valid].sum() / w[valid].sum()
    torch.testing.assert_close(seg_loss(pred, target, class_weight=weight), expected_w)


def test_dense_losses_over_valid_pixels_and_empty_masks():
    pred = torch.randn(2, 3, 4, 4, requires_grad=True)
    target = torch.randn(2, 3, 8, 8)
    mask = torch.rand(2, 8, 8) > 0.4
    t, m = downsample_target(target, (4, 4)), downsample_target(mask, (4, 4))
    cos = (F.normalize(pred, dim=1) * F.normalize(t, dim=1)).sum(1)
    torch.testing.assert_close(normal_loss(pred, target, mask), 1 - cos[m].mean())
    err = (pred - t).abs().sum(1)
    torch.testing.assert_close(l1_loss(pred, target, mask), err[m].sum() / (3 * m.sum()))
    depth_t = torch.rand(2, 1, 8, 8) * (torch.rand(2, 1, 8, 8) > 0.3)
    d_small = downsample_target(depth_t, (4, 4))
    valid = d_small > 0
    expected = (pred[:, :1] - d_small).abs()[valid].mean()
    torch.testing.assert_close(depth_loss(pred[:, :1], depth_t), expected)
    empty = torch.zeros(2, 8, 8, dtype=torch.bool)
    for loss in (
        normal_loss(pred, target, empty),
        l1_loss(pred, target, empty),
        seg_loss(pred, torch.full((2, 8, 8), 255)),
    ):
        assert loss.item() == 0.0 and not torch.isnan(loss)
        loss.backward()
        assert torch.isfinite(pred.grad).all()
