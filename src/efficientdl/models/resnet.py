"""ResNet-18/34/50 with torchvision's module tree, parameter names, shapes and initialisation.

No torchvision import: the architecture follows He et al. 2016 as torchvision implements it
(ResNet v1.5: the Bottleneck strides on its 3×3 conv), so `model.load_state_dict(tv_state_dict)`
works with `strict=True`. `stem='cifar'` swaps in a 3×3 stride-1 `conv1` and an identity
`maxpool` (names kept) for 28×28 and 8×8 inputs.
"""

from __future__ import annotations

import functools

import torch
from torch import nn

from efficientdl.core.registry import register
from efficientdl.models.checks import check_positive_ints


def _conv3x3(cin: int, cout: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, kernel_size=3, stride=stride, padding=1, bias=False)


def _conv1x1(cin: int, cout: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, kernel_size=1, stride=stride, bias=False)


def _downsample(cin: int, cout: int, stride: int) -> nn.Sequential | None:
    if stride == 1 and cin == cout:
        return None
    return nn.Sequential(_conv1x1(cin, cout, stride), nn.BatchNorm2d(cout))


class BasicBlock(nn.Module):
    """Two 3×3 conv-BN layers plus the identity (or 1×1 conv-BN downsample) shortcut."""

    expansion = 1

    def __init__(self, *, inplanes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = _conv3x3(inplanes, planes, stride)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = _conv3x3(planes, planes)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = _downsample(inplanes, planes, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class Bottleneck(nn.Module):
    """1×1 reduce, 3×3 (strided), 1×1 expand (×4), each conv-BN, plus the shortcut."""

    expansion = 4

    def __init__(self, *, inplanes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = _conv1x1(inplanes, planes)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = _conv3x3(planes, planes, stride)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = _conv1x1(planes, planes * 4)
        self.bn3 = nn.BatchNorm2d(planes * 4)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = _downsample(inplanes, planes * 4, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)


class ResNet(nn.Module):
    """conv1-bn1-relu-maxpool, layer1..4, avgpool, fc (torchvision names).

    `in_channels` changes conv1 only; `stem='cifar'` gives a 3×3 stride-1 conv1 and an identity
    maxpool; `width` scales the base width 64; `zero_init_residual` zeroes each block's last BN γ.
    """

    def __init__(
        self,
        num_classes: int = 1000,
        *,
        block: type[BasicBlock] | type[Bottleneck],
        layers: tuple[int, int, int, int],
        in_channels: int = 3,
        stem: str = "imagenet",
        width: int = 64,
        zero_init_residual: bool = False,
    ) -> None:
        super().__init__()
        if stem not in ("imagenet", "cifar"):
            raise ValueError(f"stem must be 'imagenet' or 'cifar', got {stem!r}")
        check_positive_ints(num_classes=num_classes, in_channels=in_channels, width=width)
        big = stem == "imagenet"
        self.conv1 = nn.Conv2d(
            in_channels, width, 7 if big else 3, stride=2 if big else 1, padding=3 if big else 1,
            bias=False,
        )  # fmt: skip
        self.bn1 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1) if big else nn.Identity()
        inplanes = width
        for i, blocks in enumerate(layers):
            planes, stride = width * 2**i, 1 if i == 0 else 2
            stage = []
            for j in range(blocks):
                stage.append(
                    block(inplanes=inplanes, planes=planes, stride=stride if j == 0 else 1)
                )
                inplanes = planes * block.expansion
            setattr(self, f"layer{i + 1}", nn.Sequential(*stage))
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(inplanes, num_classes)
        self._init(zero_init_residual)

    def _init(self, zero_init_residual: bool) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        if zero_init_residual:
            for m in self.modules():
                if isinstance(m, Bottleneck):
                    nn.init.zeros_(m.bn3.weight)
                elif isinstance(m, BasicBlock):
                    nn.init.zeros_(m.bn2.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(self.avgpool(x), 1))


def _variant(name: str, block: type[BasicBlock] | type[Bottleneck], layers, params: str):
    """`ResNet` with `block` and `layers` fixed, registered as model `name`: called as
    `(num_classes=1000, *, in_channels=3, stem='imagenet', width=64, zero_init_residual=False)`;
    `params` is its parameter count with 1000 classes (torchvision's documentation)."""
    doc = (
        f"ResNet-{name[6:]} ({block.__name__}, {list(layers)}); {params} parameters (1000 classes)"
    )
    build = functools.partial(ResNet, block=block, layers=layers)
    build.__doc__ = f"{doc}; options as for `ResNet`."
    return register("model", name, input_shape=(3, 224, 224), doc=doc, num_classes=1000)(build)


resnet18 = _variant("resnet18", BasicBlock, (2, 2, 2, 2), "11,689,512")
resnet34 = _variant("resnet34", BasicBlock, (3, 4, 6, 3), "21,797,672")
resnet50 = _variant("resnet50", Bottleneck, (3, 4, 6, 3), "25,557,032")
