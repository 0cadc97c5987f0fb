"""Task heads: DeepLab-v2 ASPP [code], a light conv head and a linear classifier (ours)."""

from __future__ import annotations

import torch
from torch import nn

HEADS = ("aspp", "light", "linear")
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


def make_head(kind: str, in_channels: int, out_channels: int, *, width: int = 64) -> nn.Module:
    """Build head `kind` on `in_channels` features; hidden sizes scale with width/64."""
    if out_channels < 1:
        raise ValueError(f"a task needs at least 1 output channel, got {out_channels!r}")
    if kind == "aspp":
        return ASPP(in_channels, out_channels, hidden=16 * width)
    if kind == "light":
        return LightHead(in_channels, out_channels, hidden=4 * width)
    if kind == "linear":
        return LinearHead(in_channels, out_channels)
    raise ValueError(f"unknown head {kind!r}; expected one of {HEADS}")
