"""Evaluation of a network on a test set: the driver's `eval_fn`."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def accuracy_fn(test_set, *, device, batch_size: int = 1000):
    """The driver's `eval_fn`: top-1 accuracy and mean cross-entropy on `test_set`."""
    device = torch.device(device)

    def evaluate(model: nn.Module) -> dict[str, float]:
        correct, loss = 0, 0.0
        for idx in torch.arange(len(test_set)).split(batch_size):
            x, y = test_set.get_batch(idx)
            x, y = x.to(device), y.to(device)
            logits = model(x)
            correct += int((logits.argmax(1) == y).sum())
            loss += float(F.cross_entropy(logits, y, reduction="sum"))
        return {"accuracy": correct / len(test_set), "loss": loss / len(test_set)}

    return evaluate
