"""Whether a policy search converged: the histogram of the select probabilities α at its end.

A converged search leaves every α near 0 or 1, so the sampled policies barely vary; a search that
stayed in the soft regime (a high final temperature) leaves α near 0.5 and its sampled policies
are close to random.
"""

from __future__ import annotations

from pathlib import Path

import torch
from matplotlib.figure import Figure

BINS = 10
DECIDED = 0.1
"""An α within this distance of 0 or 1 counts as decided."""


def select_histogram(probs: torch.Tensor, *, bins: int = BINS) -> dict:
    """Counts of the select probabilities α [K, L] in `bins` equal bins of [0, 1] (the last bin
    closed), with the bin edges, the number of α and the fraction decided (α ≤ 0.1 or ≥ 0.9)."""
    alpha = torch.as_tensor(probs).detach().double().flatten().cpu()
    if alpha.numel() == 0 or bool(((alpha < 0) | (alpha > 1)).any()):
        raise ValueError("select_histogram expects probabilities in [0, 1]")
    index = (alpha * bins).floor().clamp(max=bins - 1).long()
    counts = torch.bincount(index, minlength=bins)
    decided = (alpha <= DECIDED) | (alpha >= 1 - DECIDED)
    return {
        "edges": [i / bins for i in range(bins + 1)],
        "counts": counts.tolist(),
        "total": alpha.numel(),
        "decided_fraction": float(decided.double().mean()),
    }


def plot_select_histogram(histogram: dict, path, *, title: str | None = None) -> Path:
    """Write a PNG bar chart of a `select_histogram` result."""
    edges, counts = histogram["edges"], histogram["counts"]
    fig = Figure(figsize=(5, 3))
    ax = fig.add_subplot()
    width = edges[1] - edges[0]
    ax.bar(edges[:-1], counts, width=width, align="edge", edgecolor="0.3")
    ax.set_xlim(0, 1)
    ax.set_xlabel("select probability α")
    ax.set_ylabel("(task, block) pairs")
    ax.set_title(title or f"{histogram['decided_fraction']:.0%} of α within 0.1 of 0 or 1")
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=100)
    return path
