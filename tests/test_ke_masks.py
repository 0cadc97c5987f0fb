"""KE masks: golden KELS counts, graph rules on toy nets, WELS, errors."""

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from conftest import ConcatNet
from efficientdl.knowledge_evolution import KEStructureError, forget_from, keep, split
from efficientdl.models import resnet18, small_cnn

pytestmark = pytest.mark.usefixtures("one_thread")

# the official code's log: resnet18(num_classes=100), sr = 0.5
GOLDEN_05 = {
    "conv1.weight": 4704,
    **{f"layer1.{b}.conv{c}.weight": 9216 for b in (0, 1) for c in (1, 2)},
    "layer2.0.conv1.weight": 18432,
    "layer2.0.conv2.weight": 36864,
    "layer2.0.downsample.0.weight": 2048,
    "layer2.1.conv1.weight": 36864,
    "layer2.1.conv2.weight": 36864,
    "layer3.0.conv1.weight": 73728,
    "layer3.0.conv2.weight": 147456,
    "layer3.0.downsample.0.weight": 8192,
    "layer3.1.conv1.weight": 147456,
    "layer3.1.conv2.weight": 147456,
    "layer4.0.conv1.weight": 294912,
    "layer4.0.conv2.weight": 589824,
    "layer4.0.downsample.0.weight": 32768,
    "layer4.1.conv1.weight": 589824,
    "layer4.1.conv2.weight": 589824,
    "fc.weight": 25600,
}
GOLDEN_RATES = {  # conv1, layer1 convs, layer2.0.conv1, layer2.0.downsample.0, layer4.1.conv2, fc
    0.3: (2940, 3600, 7020, 780, 213444, 15400, 1_030_632),
    0.8: (7644, 24336, 48204, 5356, 1_512_900, 41000, 7_211_016),
}


@pytest.fixture(scope="module")
def r18():
    return resnet18(100)


def prefix_mask(shape, rows, cols):
    mask = torch.zeros(shape, dtype=torch.bool)
    mask[:rows, :cols] = True
    return mask


def test_golden_counts_sr05(r18):
    masks = split(r18, rate=0.5)
    assert list(masks) == list(GOLDEN_05)  # parameter order, no BN / bias entries
    assert {k: int(v.sum()) for k, v in masks.items()} == GOLDEN_05
    assert sum(int(m.sum()) for m in masks.values()) == 2_819_680
    assert sum(m.numel() for m in masks.values()) == 11_218_112
    assert all(m.dtype == torch.bool and m.device.type == "cpu" for m in masks.values())


@pytest.mark.parametrize("rate", [0.5, 0.3, 0.8])
def test_every_mask_is_its_prefix_product(r18, rate):
    masks = split(r18, rate=rate)
    params = dict(r18.named_parameters())
    for key, mask in masks.items():
        out, cin = params[key].shape[:2]
        rows = out if key == "fc.weight" else math.ceil(out * rate - 1e-9)
        cols = cin if key == "conv1.weight" else math.ceil(cin * rate - 1e-9)
        assert torch.equal(mask, prefix_mask(mask.shape, rows, cols)), key
    if rate in GOLDEN_RATES:
        names = ["conv1.weight", "layer1.0.conv1.weight", "layer2.0.conv1.weight",
                 "layer2.0.downsample.0.weight", "layer4.1.conv2.weight", "fc.weight"]  # fmt: skip
        got = tuple(int(masks[n].sum()) for n in names)
        total = sum(int(m.sum()) for m in masks.values())
        assert got + (total,) == GOLDEN_RATES[rate]
        layer1 = {int(masks[f"layer1.{b}.conv{c}.weight"].sum()) for b in (0, 1) for c in (1, 2)}
        assert layer1 == {GOLDEN_RATES[rate][1]}


def test_split_does_not_modify_the_model(r18):
    before = {k: v.clone() for k, v in r18.state_dict().items()}
    split(r18, rate=0.5, example_input=torch.randn(1, 3, 32, 32))
    after = r18.state_dict()
    assert list(before) == list(after) and all(torch.equal(before[k], after[k]) for k in before)
    assert r18.training and not r18._forward_hooks


def test_keep_rounding():
    assert keep(100, 0.07) == 7  # 0.07·100 = 7.000000000000001 → 7, not 8
    assert keep(10, 0.3) == 3 and keep(64, 0.5) == 32 and keep(3, 0.5) == 2
    assert keep(5, 0.01) == 1  # always at least one channel
    assert keep(100, 0.5, 8) == 56 and keep(10, 0.9, 8) == 10 and keep(64, 0.5, 8) == 32
    for rate in (0.1, 0.2, 0.25, 0.3, 0.4, 0.5, 0.6, 0.7, 0.75, 0.8, 0.9, 1.0):
        for c in (1, 3, 7, 64, 100, 513, 4096):
            assert keep(c, rate) == max(1, round_up_decimal(c, rate)), (c, rate)
    for bad in (0, 1.5, -0.2, True):
        with pytest.raises(ValueError, match="split rate must be a number in"):
            keep(10, bad)


def round_up_decimal(c, rate):
    """ceil(c·rate) in exact decimal arithmetic (no float artefacts)."""
    from fractions import Fraction

    return math.ceil(Fraction(str(rate)) * c)


def test_one_channel_stem_keeps_all_inputs():
    masks = split(small_cnn(10, in_channels=1, width=32), rate=0.5)
    stem = masks["stage1.0.weight"]
    assert stem.shape == (32, 1, 3, 3) and int(stem.sum()) == 16 * 1 * 9
    assert torch.equal(stem, prefix_mask(stem.shape, 16, 1))
    assert int(masks["stage2.0.weight"].sum()) == 32 * 16 * 9
    assert int(masks["fc.weight"].sum()) == 10 * 32


class MLPHead(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 64, 3, padding=1)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.hidden = nn.Linear(64, 30)
        self.out = nn.Linear(30, 10)

    def forward(self, x):
        x = torch.flatten(self.pool(F.relu(self.conv(x))), 1)
        return self.out(F.relu(self.hidden(x)))


def test_mlp_head_split_on_both_dims_and_conv_bias():
    masks = split(MLPHead(), rate=0.5)
    assert torch.equal(masks["hidden.weight"], prefix_mask((30, 64), 15, 32))
    assert torch.equal(masks["out.weight"], prefix_mask((10, 30), 10, 15))
    assert torch.equal(masks["conv.bias"], torch.arange(64) < 32)  # conv bias follows rows
    assert "hidden.bias" not in masks and "out.bias" not in masks


class FlattenNet(nn.Module):
    def __init__(self, channels=5):
        super().__init__()
        self.conv = nn.Conv2d(1, channels, 3, stride=2, padding=1, bias=False)
        self.fc = nn.Linear(channels * 16, 4)

    def forward(self, x):  # 8×8 input → 4×4 map
        return self.fc(self.conv(x).view(x.size(0), -1))


def test_flatten_of_spatial_map_keeps_channel_major_features():
    for example in (None, torch.randn(2, 1, 8, 8)):
        masks = split(FlattenNet(), rate=0.5, example_input=example)
        kept = masks["fc.weight"][0].nonzero().flatten().tolist()
        assert kept == list(range(48))  # channels 0..2 of 5 → features 0..47 (not 40)
        assert masks["fc.weight"].all(1).tolist() == [False] * 4  # all rows kept, not all cols
    with pytest.raises(ValueError, match=r"example_input of shape \(2, 1, 16, 16\) does not run"):
        split(FlattenNet(), rate=0.5, example_input=torch.randn(2, 1, 16, 16))


def test_concat_keeps_per_segment_prefixes():
    masks = split(ConcatNet(), rate=0.5)
    segment = list(range(32)) + list(range(64, 80))
    cols_c = masks["c.weight"][0, :, 0, 0].nonzero().flatten().tolist()
    assert cols_c == segment and int(masks["c.weight"].any(1).flatten(1).any(1).sum()) == 8
    cols_fc = masks["fc.weight"][0].nonzero().flatten().tolist()
    assert cols_fc == segment + list(range(96, 104))
    assert masks["fc.weight"].any(1).all()


class Bad(nn.Module):
    def __init__(self, kind):
        super().__init__()
        self.kind = kind
        self.conv = nn.Conv2d(3, 16, 3)
        self.fc = nn.Linear(16, 2)
        self.attn = nn.MultiheadAttention(16, 2)

    def forward(self, x):
        y = self.conv(x)
        if self.kind == "pad":
            y = F.pad(y, (0, 0, 0, 0, 0, 2))[:, 2:]
        elif self.kind == "twice":
            y = self.conv(x) + y
        elif self.kind == "roll":
            y = torch.roll(y, 1, 1)
        elif self.kind == "attention":
            y = self.attn(y, y, y)[0]
        elif self.kind == "functional":
            y = F.conv2d(y, self.conv.weight[:, :1].repeat(1, 16, 1, 1))
        return self.fc(y.mean((2, 3)))


@pytest.mark.parametrize(
    "kind, message",
    [
        ("pad", r"node 'pad' \(call_function pad\).*padding of the channel dimension"),
        ("twice", r"node 'conv_1' .*called twice"),
        ("roll", r"node 'roll' .*unsupported operation"),
        ("attention", r"node 'attn' \(call_module attn\).*unsupported layer MultiheadAttention"),
        ("functional", r"node 'getitem' .*indexing parameter 'conv.weight'"),
    ],
)
def test_unsupported_ops_raise_naming_the_node(kind, message):
    with pytest.raises(KEStructureError, match=message):
        split(Bad(kind), rate=0.5)
    assert issubclass(KEStructureError, ValueError)
    split(Bad(kind), rate=0.5, scheme="wels")  # WELS needs no graph


class Residual(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(8, 8, 3, padding=1)
        self.fc = nn.Linear(8, 2)

    def forward(self, x):
        return self.fc((self.conv(x) + x).mean((2, 3)))


class Untraceable(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3)

    def forward(self, x):
        return self.conv(x) if x.sum() > 0 else -self.conv(x)


def test_add_with_the_input_keeps_all_rows_and_tracing_errors_hint_wels():
    masks = split(Residual(), rate=0.5)  # the unsplit input fixes the add's channels
    assert masks["conv.weight"].all() and masks["conv.bias"].all()
    assert torch.equal(masks["fc.weight"], prefix_mask((2, 8), 2, 8))
    with pytest.raises(KEStructureError, match="could not trace Untraceable.*scheme='wels'"):
        split(Untraceable(), rate=0.5)


def test_split_argument_errors(r18):
    with pytest.raises(ValueError, match="split rate must be a number in \\(0, 1\\], got 0"):
        split(r18, rate=0)
    with pytest.raises(ValueError, match="unknown split scheme 'kernel'"):
        split(r18, rate=0.5, scheme="kernel")
    with pytest.raises(ValueError, match="unknown wels_sampling 'poisson'"):
        split(r18, rate=0.5, scheme="wels", wels_sampling="poisson")
    with pytest.raises(ValueError, match="BatchNorm2d has no Conv1d/2d/3d or Linear layer"):
        split(nn.BatchNorm2d(3), rate=0.5)


def test_rate_one_is_all_true_and_channel_multiple(r18):
    assert all(m.all() for m in split(r18, rate=1.0).values())
    masks = split(small_cnn(10, width=20), rate=0.5, channel_multiple=8)
    assert int(masks["stage1.0.weight"].any(1).flatten(1).any(1).sum()) == 16  # 10 → 16
    assert int(masks["stage2.3.weight"].any(1).flatten(1).any(1).sum()) == 24  # 20 → 24


def test_wels_exact_and_bernoulli(r18):
    gen = torch.Generator().manual_seed(0)
    masks = split(r18, rate=0.3, scheme="wels", generator=gen)
    params = dict(r18.named_parameters())
    assert "conv1.weight" in masks and "fc.weight" in masks  # stem and classifier too
    assert not any("bn" in k or "downsample.1" in k or k == "fc.bias" for k in masks)
    for key, mask in masks.items():
        assert mask.shape == params[key].shape
        assert int(mask.sum()) == math.ceil(mask.numel() * 0.3 - 1e-9), key
    again = split(r18, rate=0.3, scheme="wels", generator=torch.Generator().manual_seed(0))
    other = split(r18, rate=0.3, scheme="wels", generator=torch.Generator().manual_seed(1))
    assert all(torch.equal(masks[k], again[k]) for k in masks)
    assert not torch.equal(masks["layer1.0.conv1.weight"], other["layer1.0.conv1.weight"])
    bern = split(r18, rate=0.3, scheme="wels", wels_sampling="bernoulli",
                 generator=torch.Generator().manual_seed(2))  # fmt: skip
    n = sum(m.numel() for m in bern.values())
    frac = sum(int(m.sum()) for m in bern.values()) / n
    assert abs(frac - 0.3) < 4 * math.sqrt(0.3 * 0.7 / n)
    stem = bern["conv1.weight"]
    assert abs(stem.float().mean().item() - 0.3) < 4 * math.sqrt(0.21 / stem.numel())
    assert int(stem.sum()) != math.ceil(stem.numel() * 0.3)  # not exact (seed-specific)


def test_forget_from(r18):
    masks = forget_from(r18, "layer4")
    assert not masks["layer4.0.conv1.weight"].any() and not masks["fc.weight"].any()
    assert masks["conv1.weight"].all() and masks["layer3.1.conv2.weight"].all()
    assert "fc.bias" not in masks and len(masks) == 21
    with pytest.raises(ValueError, match="module 'layer9' not found in ResNet"):
        forget_from(r18, "layer9")
