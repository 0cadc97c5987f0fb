"""Deeplab-ResNet-18/34 (output stride 8) whose blocks can be executed or skipped.

Every block exposes `shortcut(x)` (r), `residual(x)` (F) and `execute(x)` = ReLU(r + F(x)), so all
execution paths (soft gates, true skip, the prefix tree, the masked official mode) compose the same
three operations and give bit-identical results for hard decisions.
"""

from __future__ import annotations

import math
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import nn

from efficientdl.core.registry import create, register

LAYERS = {"resnet18": (2, 2, 2, 2), "resnet34": (3, 4, 6, 3)}
STAGE_STRIDES = (1, 2, 1, 1)
STAGE_DILATIONS = (1, 1, 2, 4)
STEMS = ("deeplab", "cifar")


@dataclass(frozen=True)
class BlockInfo:
    """Static description of one gated block (0-based `index`, 1-based `stage` 1–4)."""

    index: int
    stage: int
    stride: int
    dilation: int
    in_channels: int
    out_channels: int
    has_projection: bool


def resnet_layout(*, layers: tuple[int, ...], width: int = 64) -> tuple[BlockInfo, ...]:
    """Per-block layout of a Deeplab-ResNet with `layers` blocks per stage and stage-1 `width`.

    Stage planes are width·(1, 2, 4, 8), strides 1/2/1/1, dilations 1/1/2/4; the first block of
    stages 2–4 has a 1×1 projection shortcut (channel change).
    """
    if width < 1:
        raise ValueError(f"width must be a positive int, got {width!r}")
    infos, cin = [], width
    for s, count in enumerate(layers):
        planes = width * 2**s
        for j in range(count):
            stride = STAGE_STRIDES[s] if j == 0 else 1
            infos.append(
                BlockInfo(
                    index=len(infos),
                    stage=s + 1,
                    stride=stride,
                    dilation=STAGE_DILATIONS[s],
                    in_channels=cin,
                    out_channels=planes,
                    has_projection=stride != 1 or cin != planes,
                )
            )
            cin = planes
    return tuple(infos)


for _name, _layers in LAYERS.items():
    register(
        "backbone",
        _name,
        doc=f"Deeplab-ResNet-{_name[6:]}, output stride 8, L = {sum(_layers)} gated blocks",
        layers=_layers,
    )(resnet_layout)


def block_layout(backbone: str, *, width: int = 64) -> tuple[BlockInfo, ...]:
    """Per-block layout of the registered `backbone` ('resnet18': L = 8, 'resnet34': L = 16)."""
    return create("backbone", backbone, width=width)


def make_stem(kind: str, in_channels: int, width: int) -> nn.Sequential:
    """'deeplab': conv7×7/2 → BN → ReLU → maxpool 3×3/2 (ceil); 'cifar': conv3×3/1 → BN → ReLU."""
    if kind == "deeplab":
        return nn.Sequential(
            nn.Conv2d(in_channels, width, 7, stride=2, padding=3, bias=False),
            nn.BatchNorm2d(width),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(3, stride=2, padding=1, ceil_mode=True),
        )
    if kind == "cifar":
        return nn.Sequential(
            nn.Conv2d(in_channels, width, 3, stride=1, padding=1, bias=False),
            nn.BatchNorm2d(width),
            nn.ReLU(inplace=True),
        )
    raise ValueError(f"unknown stem {kind!r}; expected one of {STEMS}")


class GatedBlock(nn.Module):
    """BasicBlock with dilation: F(x) = BN(conv(ReLU(BN(conv_s(x))))), r(x) = x or conv1×1+BN."""

    def __init__(self, info: BlockInfo) -> None:
        super().__init__()
        self.info = info
        d = info.dilation
        self.conv1 = nn.Conv2d(
            info.in_channels, info.out_channels, 3, info.stride, padding=d, dilation=d, bias=False
        )
        self.bn1 = nn.BatchNorm2d(info.out_channels)
        self.conv2 = nn.Conv2d(
            info.out_channels, info.out_channels, 3, 1, padding=d, dilation=d, bias=False
        )
        self.bn2 = nn.BatchNorm2d(info.out_channels)
        self.relu = nn.ReLU()
        self.projection = (
            nn.Sequential(
                nn.Conv2d(info.in_channels, info.out_channels, 1, info.stride, bias=False),
                nn.BatchNorm2d(info.out_channels),
            )
            if info.has_projection
            else None
        )

    def shortcut(self, x: torch.Tensor) -> torch.Tensor:
        """r(x): the input itself, or the projection conv + BN (what a skipped block returns)."""
        return x if self.projection is None else self.projection(x)

    def residual(self, x: torch.Tensor) -> torch.Tensor:
        """F(x), the residual branch."""
        return self.bn2(self.conv2(self.relu(self.bn1(self.conv1(x)))))

    def execute(self, x: torch.Tensor) -> torch.Tensor:
        """The ordinary residual block ReLU(r + F(x))."""
        return self.relu(self.shortcut(x) + self.residual(x))

    def mix(self, x: torch.Tensor, select: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        """Gated output u_sel·ReLU(r + F(x)) + u_skip·r; gates are scalars."""
        r = self.shortcut(x)
        return select * self.relu(r + self.residual(x)) + skip * r

    def forward(self, x: torch.Tensor, execute: bool = True) -> torch.Tensor:
        """Hard decision with true skipping: `execute(x)` or `shortcut(x)`."""
        return self.execute(x) if execute else self.shortcut(x)


def init_backbone_(module: nn.Module) -> None:
    """Official Deeplab init: convs N(0, 0.01²), BN weight 1 and bias 0."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.normal_(m.weight, 0.0, 0.01)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


@contextmanager
def shared_bn_momentum(modules, copies: int):
    """While computing `modules` once for `copies` tasks, update BN running stats as if `copies`
    identical updates happened: momentum m → 1 − (1 − m)^copies."""
    bns = [m for mod in modules for m in mod.modules() if isinstance(m, nn.BatchNorm2d)]
    saved = [bn.momentum for bn in bns]
    if copies > 1:
        for bn in bns:
            if bn.momentum is not None:
                bn.momentum = 1.0 - math.pow(1.0 - bn.momentum, copies)
    try:
        yield
    finally:
        for bn, m in zip(bns, saved):
            bn.momentum = m
