"""KELS split + extract_slim on every CNN structure, in small hand-built models that reproduce
each pattern as torchvision / timm write it (no torchvision needed).

For each model: the slim net equals the dense net with its reset weights zeroed (eval mode,
float64), keeps the class of every module, has fewer parameters, and a KE training step
(forward, backward, SGD step, re-init) still works.
"""

import math
from collections import namedtuple

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from efficientdl.knowledge_evolution import (
    KEStructureError,
    extract_slim,
    keep,
    masked_copy,
    reinitialize,
    split,
)

pytestmark = pytest.mark.usefixtures("one_thread")


def conv_bn(cin, cout, k=1, stride=1, groups=1, act=nn.ReLU):
    """torchvision's Conv2dNormActivation: conv (no bias), BN, activation."""
    layers = [nn.Conv2d(cin, cout, k, stride, k // 2, groups=groups, bias=False),
              nn.BatchNorm2d(cout)]  # fmt: skip
    return nn.Sequential(*layers, *([act()] if act else []))


class Head(nn.Module):
    """Global average pool, flatten, dropout, classifier."""

    def __init__(self, c, classes=5):
        super().__init__()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.drop = nn.Dropout(0.2)
        self.fc = nn.Linear(c, classes)

    def forward(self, x):
        return self.fc(self.drop(torch.flatten(self.pool(x), 1)))


class ResNeXtBlock(nn.Module):
    """torchvision ResNeXt Bottleneck / timm resnext: 1×1, grouped 3×3, 1×1, projection add."""

    def __init__(self, cin=16, width=32, cout=32, groups=4):
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(cin, width, 1, bias=False), nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, padding=1, groups=groups, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3, self.bn3 = nn.Conv2d(width, cout, 1, bias=False), nn.BatchNorm2d(cout)
        self.downsample = conv_bn(cin, cout, act=None)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x):
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + self.downsample(x))


class ResNeXt(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = conv_bn(3, 16, 3)
        self.block = ResNeXtBlock()
        self.head = Head(32)

    def forward(self, x):
        return self.head(self.block(self.stem(x)))


class SqueezeExcitation(nn.Module):
    """torchvision.ops.SqueezeExcitation: scale = σ(fc2(act(fc1(pool(x))))); scale * x."""

    def __init__(self, c, squeeze, scale=nn.Sigmoid):
        super().__init__()
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc1, self.fc2 = nn.Conv2d(c, squeeze, 1), nn.Conv2d(squeeze, c, 1)
        self.activation, self.scale_activation = nn.ReLU(), scale()

    def forward(self, x):
        scale = self.scale_activation(self.fc2(self.activation(self.fc1(self.avgpool(x)))))
        return scale * x


class RegNetBlock(nn.Module):
    """torchvision RegNet ResBottleneckBlock: group width 4, SE on the bottleneck."""

    def __init__(self, c=24, group_width=4):
        super().__init__()
        self.a = conv_bn(c, c)
        self.b = conv_bn(c, c, 3, groups=c // group_width)
        self.se = SqueezeExcitation(c, 6)
        self.c = conv_bn(c, c, act=None)
        self.activation = nn.ReLU()

    def forward(self, x):
        return self.activation(x + self.c(self.se(self.b(self.a(x)))))


class RegNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = conv_bn(3, 24, 3, stride=2)
        self.trunk = nn.Sequential(RegNetBlock(), RegNetBlock())
        self.head = Head(24)

    def forward(self, x):
        return self.head(self.trunk(self.stem(x)))


def stochastic_depth(input, p: float, mode: str, training: bool = True):
    """torchvision.ops.stochastic_depth's body (the torchvision function is fx-wrapped)."""
    if not training or p == 0.0:
        return input
    survival_rate = 1.0 - p
    if mode == "row":
        size = [input.shape[0]] + [1] * (input.ndim - 1)
    else:
        size = [1] * input.ndim
    noise = torch.empty(size, dtype=input.dtype, device=input.device)
    noise = noise.bernoulli_(survival_rate)
    if survival_rate > 0.0:
        noise.div_(survival_rate)
    return input * noise


class MBConv(nn.Module):
    """torchvision EfficientNet MBConv: expand, depthwise, SE, project, stochastic depth, add."""

    def __init__(self, c=16, expand=4, p=0.2):
        super().__init__()
        hidden = c * expand
        self.block = nn.Sequential(
            conv_bn(c, hidden, act=nn.SiLU),
            conv_bn(hidden, hidden, 3, groups=hidden, act=nn.SiLU),
            SqueezeExcitation(hidden, c // 4, scale=nn.Hardsigmoid),
            conv_bn(hidden, c, act=None),
        )
        self.p = p

    def forward(self, x):
        return x + stochastic_depth(self.block(x), self.p, "row", self.training)


class EfficientNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = conv_bn(3, 16, 3, act=nn.SiLU)
        self.blocks = nn.Sequential(MBConv(), MBConv(p=0.4))
        self.head = Head(16)

    def forward(self, x):
        return self.head(self.blocks(self.stem(x)))


def drop_path(x, drop_prob: float = 0.0, training: bool = False, scale_by_keep: bool = True):
    """timm.layers.drop_path."""
    if drop_prob == 0.0 or not training:
        return x
    keep_prob = 1 - drop_prob
    shape = (x.shape[0],) + (1,) * (x.ndim - 1)
    random_tensor = x.new_empty(shape).bernoulli_(keep_prob)
    if keep_prob > 0.0 and scale_by_keep:
        random_tensor.div_(keep_prob)
    return x * random_tensor


class DropPath(nn.Module):
    """timm.layers.DropPath."""

    def __init__(self, drop_prob=0.0):
        super().__init__()
        self.drop_prob = drop_prob

    def forward(self, x):
        return drop_path(x, self.drop_prob, self.training, True)


class BatchNormAct2d(nn.BatchNorm2d):
    """timm.layers.BatchNormAct2d: reads its own attributes (self.weight, running stats) into
    F.batch_norm, then an activation."""

    def __init__(self, c, act=nn.SiLU):
        super().__init__(c)
        self.act = act()

    def forward(self, x):
        torch._assert(x.ndim == 4, f"expected 4D input (got {x.ndim}D input)")
        if self.training and self.track_running_stats:
            self.num_batches_tracked.add_(1)
        bn_training = self.training or (self.running_mean is None and self.running_var is None)
        x = F.batch_norm(x, self.running_mean if not self.training else self.running_mean,
                         self.running_var, self.weight, self.bias, bn_training, self.momentum,
                         self.eps)  # fmt: skip
        return self.act(x)


class TimmSE(nn.Module):
    """timm efficientnet_blocks.SqueezeExcite with hard_sigmoid gate (MobileNetV3)."""

    def __init__(self, c, rd):
        super().__init__()
        self.conv_reduce, self.act1 = nn.Conv2d(c, rd, 1), nn.ReLU(inplace=True)
        self.conv_expand = nn.Conv2d(rd, c, 1)

    def forward(self, x):
        x_se = self.conv_expand(self.act1(self.conv_reduce(x.mean((2, 3), keepdim=True))))
        return x * (F.relu6(x_se + 3.0) / 6.0)


class TimmInvertedResidual(nn.Module):
    """timm InvertedResidual (EfficientNet, MobileNetV3): BatchNormAct2d, DropPath."""

    def __init__(self, c=16, mid=48, drop=0.1):
        super().__init__()
        self.conv_pw, self.bn1 = nn.Conv2d(c, mid, 1, bias=False), BatchNormAct2d(mid)
        self.conv_dw = nn.Conv2d(mid, mid, 3, padding=1, groups=mid, bias=False)
        self.bn2, self.se = BatchNormAct2d(mid), TimmSE(mid, 8)
        self.conv_pwl = nn.Conv2d(mid, c, 1, bias=False)
        self.bn3 = BatchNormAct2d(c, act=nn.Identity)
        self.drop_path = DropPath(drop)

    def forward(self, x):
        shortcut = x
        x = self.bn2(self.conv_dw(self.bn1(self.conv_pw(x))))
        x = self.bn3(self.conv_pwl(self.se(x)))
        return self.drop_path(x) + shortcut


class TimmLinear(nn.Linear):
    """timm.layers.Linear: F.linear on its own weight and bias."""

    def forward(self, input):
        return F.linear(input, self.weight, self.bias)


class TimmMobileNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv_stem, self.bn1 = nn.Conv2d(3, 16, 3, padding=1, bias=False), BatchNormAct2d(16)
        self.blocks = nn.Sequential(TimmInvertedResidual(), TimmInvertedResidual())
        self.conv_head, self.classifier = nn.Conv2d(16, 32, 1), TimmLinear(32, 5)

    def forward(self, x):
        x = self.conv_head(self.blocks(self.bn1(self.conv_stem(x))).mean((2, 3), keepdim=True))
        return self.classifier(x.flatten(1))


class LayerNorm2d(nn.LayerNorm):
    """torchvision/timm LayerNorm2d: channels-first input, permute, layer_norm, permute."""

    def forward(self, x):
        x = x.permute(0, 2, 3, 1)
        x = F.layer_norm(x, self.normalized_shape, self.weight, self.bias, self.eps)
        return x.permute(0, 3, 1, 2)


class Permute(nn.Module):
    """torchvision.ops.misc.Permute."""

    def __init__(self, dims):
        super().__init__()
        self.dims = dims

    def forward(self, x):
        return torch.permute(x, self.dims)


class CNBlock(nn.Module):
    """torchvision ConvNeXt CNBlock: dw 7×7, channels-last LayerNorm and MLP, layer scale."""

    def __init__(self, c=16):
        super().__init__()
        self.block = nn.Sequential(
            nn.Conv2d(c, c, 7, padding=3, groups=c),
            Permute([0, 2, 3, 1]),
            nn.LayerNorm(c, eps=1e-6),
            nn.Linear(c, 4 * c),
            nn.GELU(),
            nn.Linear(4 * c, c),
            Permute([0, 3, 1, 2]),
        )
        self.layer_scale = nn.Parameter(torch.rand(c, 1, 1) + 0.5)

    def forward(self, x):
        return x + stochastic_depth(self.layer_scale * self.block(x), 0.1, "row", self.training)


class TimmConvNeXtBlock(nn.Module):
    """timm ConvNeXtBlock: permute, LayerNorm, Mlp, permute back, x.mul(gamma.reshape(…))."""

    def __init__(self, c=16):
        super().__init__()
        self.conv_dw = nn.Conv2d(c, c, 7, padding=3, groups=c)
        self.norm = nn.LayerNorm(c)
        self.fc1, self.act, self.fc2 = nn.Linear(c, 4 * c), nn.GELU(), nn.Linear(4 * c, c)
        self.gamma = nn.Parameter(torch.rand(c) + 0.5)
        self.drop_path = DropPath(0.1)

    def forward(self, x):
        shortcut = x
        x = self.conv_dw(x).permute(0, 2, 3, 1)
        x = self.fc2(self.act(self.fc1(self.norm(x)))).permute(0, 3, 1, 2)
        x = x.mul(self.gamma.reshape(1, -1, 1, 1))
        return self.drop_path(x) + shortcut


class GlobalResponseNorm(nn.Module):
    """timm GlobalResponseNorm (ConvNeXt-V2), channels-last: a spatial norm divided by its mean
    over the channels (so every channel is kept), addcmul with per-channel weight and bias."""

    def __init__(self, c):
        super().__init__()
        self.weight, self.bias = nn.Parameter(torch.rand(c)), nn.Parameter(torch.rand(c))

    def forward(self, x):
        x_g = x.norm(p=2, dim=(1, 2), keepdim=True)
        x_n = x_g / (x_g.mean(dim=-1, keepdim=True) + 1e-6)
        shape = (1, 1, 1, -1)
        return x + torch.addcmul(self.bias.view(shape), self.weight.view(shape), x * x_n)


class ConvNeXtV2(nn.Module):
    def __init__(self, c=16):
        super().__init__()
        self.stem = nn.Conv2d(3, c, 2, stride=2)
        self.conv_dw, self.norm = nn.Conv2d(c, c, 3, padding=1, groups=c), nn.LayerNorm(c)
        self.fc1, self.grn, self.fc2 = nn.Linear(c, 2 * c), GlobalResponseNorm(2 * c), nn.Linear(
            2 * c, c)  # fmt: skip
        self.head, self.fc = nn.Conv2d(c, 2 * c, 1), nn.Linear(2 * c, 5)

    def forward(self, x):
        x = self.stem(x)
        y = self.norm(self.conv_dw(x).permute(0, 2, 3, 1))
        y = self.fc2(self.grn(F.gelu(self.fc1(y)))).permute(0, 3, 1, 2)
        return self.fc(F.relu(self.head(x + y)).mean((2, 3)))


class ConvNeXt(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 16, 4, stride=4), LayerNorm2d(16))
        self.stages = nn.Sequential(CNBlock(), TimmConvNeXtBlock())
        self.down = nn.Sequential(LayerNorm2d(16), nn.Conv2d(16, 24, 2, stride=2))
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), LayerNorm2d(24), nn.Flatten(1),
                                  nn.Linear(24, 5))  # fmt: skip

    def forward(self, x):
        return self.head(self.down(self.stages(self.stem(x))))


class GroupNormNet(nn.Module):
    """Convs with GroupNorm (timm GroupNormAct, ResNet-GN): groups are kept whole."""

    def __init__(self):
        super().__init__()
        self.conv1, self.gn1 = nn.Conv2d(3, 32, 3, padding=1), nn.GroupNorm(8, 32)
        self.conv2, self.gn2 = nn.Conv2d(32, 32, 3, padding=1), nn.GroupNorm(4, 32)
        self.head = Head(32)

    def forward(self, x):
        y = F.relu(self.gn1(self.conv1(x)))
        return self.head(F.relu(self.gn2(self.conv2(y))) + y)


def channel_shuffle(x, groups: int):
    """torchvision shufflenetv2.channel_shuffle."""
    batchsize, num_channels, height, width = x.size()
    channels_per_group = num_channels // groups
    x = x.view(batchsize, groups, channels_per_group, height, width)
    x = torch.transpose(x, 1, 2).contiguous()
    return x.view(batchsize, num_channels, height, width)


class ShuffleUnit(nn.Module):
    """torchvision ShuffleNetV2 InvertedResidual (stride 1 and 2)."""

    def __init__(self, cin, cout, stride):
        super().__init__()
        half = cout // 2
        self.stride = stride
        if stride > 1:
            self.branch1 = nn.Sequential(conv_bn(cin, cin, 3, stride, groups=cin, act=None),
                                         conv_bn(cin, half))  # fmt: skip
        self.branch2 = nn.Sequential(
            conv_bn(cin if stride > 1 else half, half),
            conv_bn(half, half, 3, stride, groups=half, act=None),
            conv_bn(half, half),
        )

    def forward(self, x):
        if self.stride == 1:
            x1, x2 = x.chunk(2, dim=1)
            out = torch.cat((x1, self.branch2(x2)), dim=1)
        else:
            out = torch.cat((self.branch1(x), self.branch2(x)), dim=1)
        return channel_shuffle(out, 2)


class ShuffleNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = conv_bn(3, 8, 3)
        self.stage = nn.Sequential(ShuffleUnit(8, 16, 2), ShuffleUnit(16, 16, 1),
                                   ShuffleUnit(16, 16, 1))  # fmt: skip
        self.head = Head(16)

    def forward(self, x):
        return self.head(self.stage(self.conv1(x)))


class GhostModule(nn.Module):
    """timm GhostModule: primary conv, cheap depthwise conv, cat, slice to out_chs."""

    def __init__(self, cin, out_chs, relu=True):
        super().__init__()
        self.out_chs = out_chs
        init = math.ceil(out_chs / 2)
        act = nn.ReLU if relu else None
        self.primary_conv = conv_bn(cin, init, act=act)
        self.cheap_operation = conv_bn(init, init, 3, groups=init, act=act)

    def forward(self, x):
        x1 = self.primary_conv(x)
        x2 = self.cheap_operation(x1)
        out = torch.cat([x1, x2], dim=1)
        return out[:, : self.out_chs, :, :]


class GhostBottleneck(nn.Module):
    """timm GhostBottleneck: ghost1, SE, ghost2, plus a conv shortcut (or identity)."""

    def __init__(self, cin, mid, cout):
        super().__init__()
        self.ghost1, self.se = GhostModule(cin, mid), TimmSE(mid, 4)
        self.ghost2 = GhostModule(mid, cout, relu=False)
        self.shortcut = nn.Identity() if cin == cout else nn.Sequential(
            conv_bn(cin, cin, 3, groups=cin, act=None), conv_bn(cin, cout, act=None))  # fmt: skip

    def forward(self, x):
        shortcut = x
        x = self.ghost2(self.se(self.ghost1(x)))
        return x + self.shortcut(shortcut)


class GhostNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = conv_bn(3, 16, 3)
        self.blocks = nn.Sequential(GhostBottleneck(16, 24, 15), GhostBottleneck(15, 30, 15))
        self.head = Head(15)

    def forward(self, x):
        return self.head(self.blocks(self.stem(x)))


class CatResidual(nn.Module):
    """A residual add whose other operand is a concatenation (DPN-style dual path), a chunk,
    and torch.split with constant sizes (Res2Net-style)."""

    def __init__(self):
        super().__init__()
        self.a, self.b = conv_bn(3, 16, 3), conv_bn(3, 8, 3)
        self.c = conv_bn(24, 24, 3)
        self.d = conv_bn(12, 12, 3)
        self.e, self.f = conv_bn(6, 6, 3), conv_bn(3, 12, 3)
        self.head = Head(24 + 12 + 6)

    def forward(self, x):
        y = torch.cat([self.a(x), self.b(x)], 1)
        y = self.c(y) + y  # the conv's rows follow the concatenation's kept channels
        left, right = torch.chunk(y, 2, dim=1)
        z = self.d(right) + left
        p, q = torch.split(self.f(x), [6, 6], dim=1)  # constant sizes: kept whole
        return self.head(torch.cat([y, z, self.e(p) * q], 1))


AuxOutputs = namedtuple("AuxOutputs", ["logits", "aux_logits"])


class AuxHeadNet(nn.Module):
    """torchvision GoogLeNet / Inception-v3: an auxiliary classifier on an inner feature that runs
    only in training mode, where the outputs are a namedtuple."""

    def __init__(self):
        super().__init__()
        self.stem = conv_bn(3, 16, 3)
        self.inner = conv_bn(16, 24, 3)
        self.aux = nn.Sequential(conv_bn(16, 8), Head(8))
        self.head = Head(24)

    def forward(self, x):
        h = self.stem(x)
        aux = self.aux(h) if self.training else None
        out = self.head(self.inner(h))
        return AuxOutputs(out, aux) if self.training else out


def test_a_branch_that_runs_only_in_training_is_split_and_slimmed():
    """Split in eval mode, the train-only auxiliary head still gets masks; the slim net equals the
    masked dense net in eval mode and, auxiliary output included, in training mode."""
    torch.manual_seed(0)
    model = randomise(AuxHeadNet()).double().eval()
    for m in model.modules():  # dropout off: its draws depend on the width
        if isinstance(m, nn.Dropout):
            m.p = 0.0
    masks = split(model, rate=0.5)
    assert not model.training
    assert {"aux.0.0.weight", "aux.1.fc.weight"} <= masks.keys()
    assert rows(masks["aux.0.0.weight"]) == list(range(keep(8, 0.5)))
    slim, zeroed = extract_slim(model, masks), masked_copy(model, masks)
    x = torch.randn(3, 3, 12, 12, dtype=torch.float64)
    with torch.no_grad():
        assert rel_err(slim.eval()(x), zeroed.eval()(x)) < 1e-10
        got, want = slim.train()(x), zeroed.train()(x)  # BN on batch statistics
    assert isinstance(got, AuxOutputs)
    assert rel_err(got.aux_logits, want.aux_logits) < 1e-10
    assert rel_err(got.logits, want.logits) < 1e-10


def randomise(model, seed=0):
    """Random BN statistics and affine parameters (so reset channels are non-trivial)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._NormBase) and m.affine:
                m.running_mean.copy_(torch.randn(m.num_features, generator=gen))
                m.running_var.copy_(torch.rand(m.num_features, generator=gen) + 0.5)
            if isinstance(m, nn.modules.batchnorm._NormBase | nn.GroupNorm | nn.LayerNorm):
                if m.weight is not None:
                    m.weight.copy_(torch.randn(m.weight.shape, generator=gen))
                    m.bias.copy_(torch.randn(m.bias.shape, generator=gen))
    return model


MODELS = {
    "resnext": (ResNeXt, 16),
    "regnet": (RegNet, 16),
    "efficientnet": (EfficientNet, 12),
    "timm_mobilenet": (TimmMobileNet, 12),
    "convnext": (ConvNeXt, 32),
    "convnext_v2": (ConvNeXtV2, 8),
    "groupnorm": (GroupNormNet, 8),
    "shufflenet": (ShuffleNet, 12),
    "ghostnet": (GhostNet, 12),
    "cat_residual": (CatResidual, 10),
}


def rel_err(a, b):
    return ((a - b).abs().max() / b.abs().max()).item()


@pytest.mark.parametrize("name", list(MODELS))
def test_slim_equals_masked_dense(name):
    make, size = MODELS[name]
    torch.manual_seed(0)
    model = randomise(make()).double().eval()
    masks = split(model, rate=0.5)
    assert masks == {} or all(m.dtype == torch.bool for m in masks.values())
    train_masks = split(model.train(), rate=0.5)  # the train-mode graph (DropPath on)
    assert all(torch.equal(masks[k], train_masks[k]) for k in masks) and masks.keys() == \
        train_masks.keys()  # fmt: skip
    model.eval()
    slim = extract_slim(model, masks)
    zeroed = masked_copy(model, masks)
    x = torch.randn(3, 3, size, size, dtype=torch.float64)
    with torch.no_grad():
        out = slim(x)
        assert rel_err(out, zeroed(x)) < 1e-10
        assert rel_err(model(x), zeroed(x)) > 1e-3  # the reset weights matter
    dense_mods = dict(model.named_modules())
    for mname, module in slim.named_modules():
        assert type(module) is type(dense_mods[mname]), mname
    n_slim = sum(p.numel() for p in slim.parameters())
    assert n_slim < sum(p.numel() for p in model.parameters())
    # one KE training step on the dense net, then a re-draw of the reset hypothesis
    model.train()
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    F.cross_entropy(model(x), torch.tensor([0, 1, 2])).backward()
    opt.step()
    reinitialize(model, masks, generator=torch.Generator().manual_seed(1))
    assert torch.isfinite(extract_slim(model.eval(), masks)(x)).all()
    # WELS needs no graph: every conv/linear weight gets a mask, whatever the structure
    wels = split(model, rate=0.5, scheme="wels", generator=torch.Generator().manual_seed(0))
    weights = {
        f"{n}.weight" for n, m in model.named_modules() if isinstance(m, nn.Conv2d | nn.Linear)
    }
    assert weights <= wels.keys() and weights == {k for k in masks if k.endswith("weight")}
    reinitialize(model, wels, generator=torch.Generator().manual_seed(2))


def rows(mask):
    return mask.flatten(1).any(1).nonzero().flatten().tolist()


def cols(mask):
    return mask.transpose(0, 1).flatten(1).any(1).nonzero().flatten().tolist()


def test_grouped_conv_keeps_a_prefix_in_every_group():
    masks = split(ResNeXt(), rate=0.5)
    per_group = [0, 1, 2, 3]  # width 32 in 4 groups of 8: keep(8) = 4 per group
    expected = [g * 8 + i for g in range(4) for i in per_group]
    assert rows(masks["block.conv1.weight"]) == expected
    assert rows(masks["block.conv2.weight"]) == expected
    assert cols(masks["block.conv2.weight"]) == per_group  # within-group offsets
    assert cols(masks["block.conv3.weight"]) == expected
    slim = extract_slim(ResNeXt(), masks)
    assert slim.block.conv2.groups == 4 and slim.block.conv2.weight.shape == (16, 4, 3, 3)
    regnet = split(RegNet(), rate=0.25)  # group width 4: keep(4, 0.25) = 1 per group
    assert rows(regnet["trunk.0.b.0.weight"]) == list(range(0, 24, 4))
    assert extract_slim(RegNet(), regnet).trunk[0].b[0].groups == 6


def test_depthwise_follows_its_input_and_gates_follow_the_gated_tensor():
    masks = split(EfficientNet(), rate=0.5)
    hidden = rows(masks["blocks.0.block.0.0.weight"])
    assert hidden == list(range(32))  # expand 64 → 32 kept
    assert rows(masks["blocks.0.block.1.0.weight"]) == hidden  # depthwise
    assert rows(masks["blocks.0.block.2.fc2.weight"]) == hidden  # SE expand gates those
    assert rows(masks["blocks.0.block.3.0.weight"]) == list(range(8))  # project: residual


def test_layernorm_over_channels_and_groupnorm_keep_whole_groups():
    convnext = split(ConvNeXt(), rate=0.5)
    assert rows(convnext["stem.0.weight"]) == list(range(16))  # LayerNorm over channels
    assert rows(convnext["stages.0.block.3.weight"]) == list(range(32))  # MLP hidden 64 → 32
    assert cols(convnext["stages.0.block.5.weight"]) == list(range(32))
    slim = extract_slim(ConvNeXt(), convnext)
    assert slim.stages[1].fc1.out_features == 32 and slim.stages[1].gamma.shape == (16,)
    gn = split(GroupNormNet(), rate=0.3)
    # gn1 ties groups of 4, gn2 groups of 8, and the add ties both: keep(4 groups) of 8
    assert rows(gn["conv1.weight"]) == list(range(keep(4, 0.3) * 8))
    slim = extract_slim(GroupNormNet(), gn)
    assert (slim.gn1.num_groups, slim.gn1.num_channels) == (4, 16)  # and gn2 4 → 2 groups
    assert (slim.gn2.num_groups, slim.gn2.num_channels) == (2, 16)


def test_shuffle_chunk_slicing_and_add_after_concat():
    torch.manual_seed(0)
    shuffle = split(ShuffleNet(), rate=0.5)
    kept = rows(shuffle["stage.0.branch2.2.0.weight"])
    assert len(kept) < 8 and kept == sorted(kept)
    ghost = split(GhostNet(), rate=0.5)  # out_chs 15 = 8 + 8 sliced to 15
    assert rows(ghost["blocks.0.ghost2.primary_conv.0.weight"]) == list(range(4))
    assert rows(ghost["blocks.0.shortcut.1.0.weight"]) == [0, 1, 2, 3, 8, 9, 10, 11]
    cat = split(CatResidual(), rate=0.5)
    y_kept = rows(cat["c.0.weight"])
    assert cols(cat["c.0.weight"]) == y_kept  # c's rows follow the concatenation it is added to
    assert 16 in y_kept and y_kept != list(range(len(y_kept)))  # segment b keeps its own prefix
    left, right = [i for i in y_kept if i < 12], [i - 12 for i in y_kept if i >= 12]
    assert left == right and cols(cat["d.0.weight"]) == right and rows(cat["d.0.weight"]) == left
    assert rows(cat["f.0.weight"]) == list(range(12))  # split with constant sizes


def test_where_kept_sets_differ_is_named():
    model = GroupNormNet()
    masks = split(model, rate=0.5)
    bad = dict(masks)
    shifted = torch.zeros_like(masks["conv2.weight"])
    shifted[:15, :16] = True  # gn2 ties conv2's rows in groups of 8
    bad["conv2.weight"] = shifted
    with pytest.raises(
        ValueError,
        match=r"'conv2.weight' keeps other output channels .*first "
        r"difference at channel 15 \(reset vs kept\), 15 vs 16 of 32 kept",
    ):
        extract_slim(model, bad)
    resnext = ResNeXt()
    masks = split(resnext, rate=0.5)
    bad = dict(masks)
    prefix = torch.zeros_like(masks["block.conv1.weight"])
    prefix[:16] = True  # a plain prefix, not the same offsets in each of the 4 groups
    bad["block.conv1.weight"] = prefix
    with pytest.raises(
        ValueError,
        match=r"'block.conv1.weight' keeps other output channels .*"
        r"first difference at channel 16 \(reset vs kept\), 16 vs 32 of 32",
    ):
        extract_slim(resnext, bad)


class SliceNet(nn.Module):
    """A constant slice across two concatenated segments: cat(8, 8)[:, :10]."""

    def __init__(self):
        super().__init__()
        self.a, self.b = conv_bn(3, 8, 3), conv_bn(3, 8, 3)
        self.head = Head(10)

    def forward(self, x):
        return self.head(torch.cat([self.a(x), self.b(x)], 1)[:, :10])


def test_a_slice_the_slim_net_would_not_reproduce_keeps_its_input_whole():
    model = randomise(SliceNet()).double().eval()
    masks = split(model, rate=0.5)
    # with a and b keeping 4 each, the slim net's [:, :10] would take all 8 kept channels
    # (0-3 and 8-11) where the dense slice drops 10 and 11: both segments are kept whole
    assert masks["a.0.weight"].all() and masks["b.0.weight"].all()
    x = torch.randn(2, 3, 8, 8, dtype=torch.float64)
    with torch.no_grad():
        assert rel_err(extract_slim(model, masks)(x), masked_copy(model, masks)(x)) < 1e-10
    halves = dict(masks)
    for name in ("a.0.weight", "b.0.weight"):
        halves[name] = masks[name] & (torch.arange(8) < 4).view(-1, 1, 1, 1)
    halves["head.fc.weight"] = masks["head.fc.weight"] & (torch.arange(10) % 8 < 4)
    with pytest.raises(KEStructureError, match=r"node 'getitem'.*slice\(None, 10, None\)"):
        extract_slim(model, halves)
