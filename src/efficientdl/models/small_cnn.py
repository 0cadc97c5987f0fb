"""A small VGG-style CNN for 28×28 (MNIST-like) and 8×8 (scikit-learn digits) inputs."""

from __future__ import annotations

import torch
from torch import nn

from efficientdl.core.registry import register
from efficientdl.models.checks import check_positive_ints


def _stage(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, padding=1, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
        nn.Conv2d(cout, cout, 3, padding=1, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
        nn.MaxPool2d(2),
    )


class SmallCNN(nn.Module):
    """[conv3×3-BN-ReLU ×2, max-pool 2] at `width`, then at 2·`width`, global average pool, fc."""

    def __init__(self, *, num_classes: int, in_channels: int = 1, width: int = 32) -> None:
        super().__init__()
        check_positive_ints(num_classes=num_classes, in_channels=in_channels, width=width)
        self.stage1 = _stage(in_channels, width)
        self.stage2 = _stage(width, 2 * width)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(2 * width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.pool(self.stage2(self.stage1(x))), 1))


@register("model", "small_cnn", input_shape=(1, 28, 28), num_classes=10)
def small_cnn(num_classes: int, *, in_channels: int = 1, width: int = 32) -> SmallCNN:
    """The small CNN (PyTorch default init; KE's recipe applies `init_weights` itself)."""
    return SmallCNN(num_classes=num_classes, in_channels=in_channels, width=width)
