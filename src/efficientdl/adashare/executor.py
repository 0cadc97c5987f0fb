"""`TreeExecutor` (§5.4): inference for a fixed hard policy, computing each distinct prefix once."""

from __future__ import annotations

import torch

from efficientdl.adashare.counting import costs
from efficientdl.adashare.policy import Policy


class TreeExecutor:
    """Evaluate all tasks of `model` under `policy` through the prefix tree of decisions.

    Root = stem output; the node for blocks 0…l is the tuple of decisions, shared by all tasks with
    that tuple. Depth-first: an identity skip reuses its parent tensor, a projection skip runs the
    projection only, an execute node runs the whole block; a head runs as soon as its leaf exists
    and a node is dropped once all its children exist. Outputs equal (`torch.equal`) the per-task
    true-skip `model(x, policy)` in eval mode.
    """

    def __init__(self, model, policy: Policy) -> None:
        model._check_policy(policy)
        self.model = model
        self.policy = policy
        self._stats: dict[str, int] = {}

    @torch.no_grad()
    def __call__(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        model, L = self.model, self.model.num_blocks
        was_training = model.training
        model.eval()
        c = costs(model, x.shape[-2], x.shape[-1])
        stats = {"blocks": 0, "projections": 0, "macs": c.stem}
        rows = self.policy.execute.tolist()
        out: dict[str, torch.Tensor] = {}
        try:
            stack = [(model.stem(x), 0, list(range(len(model.tasks))))]
            while stack:
                h, depth, members = stack.pop()
                if depth == L:
                    for k in members:
                        task = model.tasks[k]
                        out[task] = model.heads[task](h)
                        stats["macs"] += c.heads[task]
                    continue
                block = model.blocks[depth]
                children = []
                for decision in (True, False):
                    group = [k for k in members if rows[k][depth] == decision]
                    if not group:
                        continue
                    if decision:
                        child = block.execute(h)
                        stats["blocks"] += 1
                    else:
                        child = block.shortcut(h)
                        stats["projections"] += block.projection is not None
                    stats["macs"] += c.block(depth, decision)
                    children.append((child, depth + 1, group))
                del h
                stack.extend(reversed(children))
        finally:
            model.train(was_training)
        self._stats = stats
        return {t: out[t] for t in model.tasks}

    def stats(self) -> dict[str, int]:
        """Blocks executed, projections computed and MACs (per image) of the last call."""
        return dict(self._stats)
