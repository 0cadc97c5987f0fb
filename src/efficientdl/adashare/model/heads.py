"""Task heads: DeepLab-v2 ASPP [code], a light conv head and a linear classifier (ours)."""

from __future__ import annotations

import torch
from torch import nn

from efficientdl.core.registry import create, register

ASPP_RATES = (6, 12, 18, 24)


class ASPP(nn.Module):
    """Sum of four branches conv3×3(rate) → ReLU → Dropout → conv1×1 → ReLU → Dropout → conv1×1."""

    def __init__(self, in_channels: int, out_channels: int, *, hidden: int = 1024) -> None:
        super().__init__()
        self.branches = nn.ModuleList(
            nn.Sequential(
                nn.Conv2d(in_channels, hidden, 3, padding=rate, dilation=rate),
                nn.ReLU(inplace=True),
                nn.Dropout(0.5),
                nn.Conv2d(hidden, hidden, 1),
                nn.ReLU(inplace=True),
                nn.Dropout(0.5),
                nn.Conv2d(hidden, out_channels, 1),
            )
            for rate in ASPP_RATES
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.branches[0](x)
        for branch in self.branches[1:]:
            out = out + branch(x)
        return out


class LightHead(nn.Module):
    """conv3×3 (no bias) → BN → ReLU → conv1×1 (bias); ~5% of the ASPP compute."""

    def __init__(self, in_channels: int, out_channels: int, *, hidden: int = 256) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(in_channels, hidden, 3, padding=1, bias=False),
            nn.BatchNorm2d(hidden),
            nn.ReLU(inplace=True),
            nn.Conv2d(hidden, out_channels, 1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


class LinearHead(nn.Module):
    """Global average pool → Linear, for classification tasks."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.fc = nn.Linear(in_channels, out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x.mean(dim=(2, 3)))


@register("head", "aspp", doc="DeepLab-v2 ASPP, hidden width 16·width [code]")
def aspp(in_channels: int, out_channels: int, *, width: int = 64) -> nn.Module:
    return ASPP(in_channels, out_channels, hidden=16 * width)


@register("head", "light", doc="conv3×3 → BN → ReLU → conv1×1, hidden width 4·width (ours)")
def light(in_channels: int, out_channels: int, *, width: int = 64) -> nn.Module:
    return LightHead(in_channels, out_channels, hidden=4 * width)


@register("head", "linear", doc="global average pool → Linear, for classification (ours)")
def linear(in_channels: int, out_channels: int, *, width: int = 64) -> nn.Module:
    return LinearHead(in_channels, out_channels)


def make_head(kind: str, in_channels: int, out_channels: int, *, width: int = 64) -> nn.Module:
    """Build the registered head `kind` on `in_channels` features; hidden sizes scale with
    width/64."""
    if out_channels < 1:
        raise ValueError(f"a task needs at least 1 output channel, got {out_channels!r}")
    return create("head", kind, in_channels=in_channels, out_channels=out_channels, width=width)
