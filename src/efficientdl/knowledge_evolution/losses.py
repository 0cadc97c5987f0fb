"""The training losses of the recipe besides plain cross-entropy: class-wise self-knowledge
distillation and the same-class partners it compares against."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def cskd_loss(
    logits: torch.Tensor,
    partner_logits: torch.Tensor,
    labels: torch.Tensor,
    *,
    temperature: float = 4.0,
    weight: float = 3.0,
    label_smoothing: float = 0.0,
) -> torch.Tensor:
    """Class-wise self-knowledge distillation (Yun et al. 2020, the paper's CS-KD variant):
    CE(z, y) + λ·T²·Σ_k q_k(log q_k − log p_k)/B with p = softmax(z/T), q = softmax(z'/T) and the
    partner logits z' treated as constants."""
    ce = F.cross_entropy(logits, labels, label_smoothing=label_smoothing)
    log_p = F.log_softmax(logits / temperature, dim=1)
    log_q = F.log_softmax(partner_logits.detach() / temperature, dim=1)
    kl = (log_q.exp() * (log_q - log_p)).sum() / logits.shape[0]
    return ce + weight * temperature**2 * kl


def class_partners(
    labels: torch.Tensor, indices: torch.Tensor, generator: torch.Generator | None = None
) -> torch.Tensor:
    """For each dataset index in `indices`, another index of the same class drawn uniformly
    (itself only if its class has a single sample)."""
    labels = torch.as_tensor(labels)
    out = torch.empty_like(indices)
    for k, i in enumerate(indices.tolist()):
        pool = (labels == labels[i]).nonzero().flatten()
        if len(pool) == 1:
            out[k] = i
            continue
        r = int(torch.randint(0, len(pool) - 1, (1,), generator=generator))
        own = int((pool == i).nonzero()[0])
        out[k] = pool[r + 1 if r >= own else r]
    return out
