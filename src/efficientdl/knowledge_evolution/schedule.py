"""The learning-rate schedule of the official recipe: linear warm-up, then cosine decay."""

from __future__ import annotations

import math


def lr_at(epoch: int, *, epochs: int, lr: float, warmup: int = 5) -> float:
    """Per-epoch LR of the official recipe, restarted every generation: η·(e+1)/W for e < W, then
    ½(1 + cos(π(e − W)/(E − W)))·η."""
    if epoch < warmup:
        return lr * (epoch + 1) / warmup
    return 0.5 * (1.0 + math.cos(math.pi * (epoch - warmup) / max(1, epochs - warmup))) * lr
