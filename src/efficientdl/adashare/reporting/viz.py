"""Policy pictures: tasks × blocks grids like the paper's figure."""

from __future__ import annotations

from pathlib import Path

import torch
from matplotlib import colormaps
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

from efficientdl.adashare.model.backbone import LAYERS
from efficientdl.adashare.model.policy import Policy

_BLOCKS_TO_LAYERS = {sum(v): v for v in LAYERS.values()}


def _stage_starts(num_blocks: int) -> list[int]:
    layers = _BLOCKS_TO_LAYERS.get(num_blocks)
    if layers is None:
        return []
    starts, total = [], 0
    for count in layers[:-1]:
        total += count
        starts.append(total)
    return starts


def plot_policy(policy_or_probs, path, *, tasks=None, title=None) -> Path:
    """Write a PNG: K rows (tasks) × L columns (blocks, input → output).

    A `Policy` (or a bool [K, L] tensor) draws executed cells in the task's colour and skipped cells
    white with a grey outline, row labels "name (n/L)"; probabilities [K, L] draw a 0–1 colour map
    with α printed in each cell. Thicker lines mark stage boundaries.
    """
    if isinstance(policy_or_probs, Policy):
        tasks = tasks or policy_or_probs.tasks
        grid = policy_or_probs.execute
    else:
        grid = torch.as_tensor(policy_or_probs).detach().cpu()
    if grid.dim() != 2:
        raise ValueError(
            f"plot_policy expects a Policy or a [K, L] tensor, got {tuple(grid.shape)}"
        )
    K, L = grid.shape
    tasks = tuple(tasks) if tasks is not None else tuple(f"task {k}" for k in range(K))
    if len(tasks) != K:
        raise ValueError(f"{len(tasks)} task names for {K} rows")
    hard = grid.dtype == torch.bool
    fig = Figure(figsize=(0.45 * L + 2.5, 0.45 * K + 1.2))
    ax = fig.add_subplot()
    colours, blues = colormaps["tab10"], colormaps["Blues"]
    for k in range(K):
        for l in range(L):
            value = grid[k, l].item()
            if hard:
                face = colours(k % 10) if value else "white"
                edge = "white" if value else "0.6"
            else:
                face, edge = blues(float(value)), "0.6"
            ax.add_patch(Rectangle((l, K - 1 - k), 1, 1, facecolor=face, edgecolor=edge, lw=1))
            if not hard:
                ax.text(
                    l + 0.5,
                    K - 0.5 - k,
                    f"{value:.2f}",
                    ha="center",
                    va="center",
                    fontsize=6,
                    color="white" if value > 0.6 else "black",
                )
    for start in _stage_starts(L):
        ax.plot([start, start], [0, K], color="black", lw=2.5)
    counts = grid.sum(1).tolist() if hard else None
    labels = [f"{t} ({int(c)}/{L})" for t, c in zip(tasks, counts)] if hard else list(tasks)
    ax.set_xlim(0, L)
    ax.set_ylim(0, K)
    ax.set_yticks([K - 0.5 - k for k in range(K)], labels)
    ax.set_xticks([l + 0.5 for l in range(L)], [str(l) for l in range(L)])
    ax.set_xlabel("block (input → output)")
    ax.set_aspect("equal")
    ax.set_title(title or ("policy" if hard else "execution probabilities α"))
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    return path
