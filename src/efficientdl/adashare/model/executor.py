"""`TreeExecutor`: inference for a fixed hard policy, computing each distinct prefix once,
and per-task networks holding only the blocks a task executes (for TorchScript / `torch.export`)."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from efficientdl.adashare.model.counting import costs
from efficientdl.adashare.model.policy import Policy

EXPORT_METHODS = ("export", "trace")


@dataclass
class Node:
    """One node of the prefix tree: the decisions of blocks 0…depth−1 shared by `tasks`."""

    depth: int
    execute: bool | None  # decision of block depth−1 (None at the root = stem output)
    tasks: tuple[int, ...]
    children: list[Node] = field(default_factory=list)


def prefix_tree(rows: list[tuple[bool, ...]]) -> Node:
    """The prefix tree of per-task decision rows; children ordered (execute, skip)."""

    def grow(node: Node) -> Node:
        if node.depth < len(rows[0]):
            for decision in (True, False):
                group = tuple(k for k in node.tasks if rows[k][node.depth] == decision)
                if group:
                    node.children.append(grow(Node(node.depth + 1, decision, group)))
        return node

    return grow(Node(0, None, tuple(range(len(rows)))))


class TreeExecutor:
    """Evaluate all tasks of `model` under `policy` through the prefix tree of decisions.

    Root = stem output; the node for blocks 0…l is the tuple of decisions, shared by all tasks with
    that tuple. Depth-first: an identity skip reuses its parent tensor, a projection skip runs the
    projection only, an execute node runs the whole block; a head runs as soon as its leaf exists
    and a node is dropped once all its children exist. Outputs equal (`torch.equal`) the per-task
    true-skip `model(x, policy)` in eval mode. The tree is built once here; `autocast` (e.g.
    `torch.bfloat16`) runs the call under autocast; a channels_last model and input stay so.
    """

    def __init__(self, model, policy: Policy, *, autocast: torch.dtype | None = None) -> None:
        model._check_policy(policy)
        if autocast is not None and not isinstance(autocast, torch.dtype):
            raise ValueError(f"autocast must be a torch.dtype or None, got {autocast!r}")
        self.model = model
        self.policy = policy
        self.autocast = autocast
        self.root = prefix_tree([tuple(r) for r in policy.execute.tolist()])
        self._stats: dict[str, int] = {}
        self._stats_at: dict[tuple[int, int], dict[str, int]] = {}

    def num_nodes(self) -> int:
        """Distinct prefix-tree nodes below the root (= block evaluations incl. identity skips)."""
        count, stack = 0, [self.root]
        while stack:
            node = stack.pop()
            count += len(node.children)
            stack.extend(node.children)
        return count

    @torch.no_grad()
    def __call__(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        model = self.model
        was_training = model.training
        model.eval()
        try:
            if self.autocast is None:
                out = self._run(x)
            else:
                with torch.autocast(x.device.type, dtype=self.autocast):
                    out = self._run(x)
        finally:
            model.train(was_training)
        return {t: out[t] for t in model.tasks}

    def _run(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        model = self.model
        out: dict[str, torch.Tensor] = {}
        stack = [(model.stem(x), self.root)]
        while stack:
            h, node = stack.pop()
            if not node.children:  # a leaf: every task in it reads the same features
                for k in node.tasks:
                    task = model.tasks[k]
                    out[task] = model.heads[task](h)
                continue
            block = model.blocks[node.depth]
            pending = [
                (block.execute(h) if child.execute else block.shortcut(h), child)
                for child in node.children
            ]
            del h  # the parent is freed once all its children exist
            stack.extend(reversed(pending))
        self._stats = self._stats_for(x.shape[-2], x.shape[-1])
        return out

    def _stats_for(self, height: int, width: int) -> dict[str, int]:
        """The tree's counts and conv/linear MACs per image at height × width, computed once per
        image size: they depend on the tree and the size only, never on the pixels."""
        key = (height, width)
        if key not in self._stats_at:
            model = self.model
            c = costs(model, height, width)
            stats = {"blocks": 0, "projections": 0, "nodes": 0, "macs": c.stem}
            stack = [self.root]
            while stack:
                node = stack.pop()
                if not node.children:
                    stats["macs"] += sum(c.heads[model.tasks[k]] for k in node.tasks)
                for child in node.children:
                    projection = model.blocks[node.depth].projection is not None
                    stats["blocks"] += child.execute
                    stats["projections"] += projection and not child.execute
                    stats["nodes"] += 1
                    stats["macs"] += c.block(node.depth, child.execute)
                    stack.append(child)
            self._stats_at[key] = stats
        return self._stats_at[key]

    def stats(self) -> dict[str, int]:
        """Of the last call: blocks executed, projections computed, tree nodes evaluated and
        conv/linear MACs per image."""
        return dict(self._stats)


class ExecutedBlock(nn.Module):
    """A gated block that always executes: ReLU(r(x) + F(x)), sharing the block's modules."""

    def __init__(self, block) -> None:
        super().__init__()
        self.shortcut = block.projection if block.projection is not None else nn.Identity()
        self.conv1, self.bn1, self.relu = block.conv1, block.bn1, block.relu
        self.conv2, self.bn2 = block.conv2, block.bn2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        r = self.shortcut(x)
        return self.relu(r + self.bn2(self.conv2(self.relu(self.bn1(self.conv1(x))))))


class TaskNetwork(nn.Module):
    """One task's network under a hard policy: stem, its executed blocks, the projections of its
    skipped stage-first blocks, and its head; skipped identity blocks are absent."""

    def __init__(self, model, policy: Policy, task: str) -> None:
        super().__init__()
        model._check_policy(policy)
        if task not in model.tasks:
            raise ValueError(f"unknown task {task!r}; expected one of {model.tasks}")
        row = policy.execute[model.tasks.index(task)].tolist()
        steps = []
        for block, run in zip(model.blocks, row):
            if run:
                steps.append(ExecutedBlock(block))
            elif block.projection is not None:
                steps.append(block.projection)
        self.stem = model.stem
        self.body = nn.Sequential(*steps)
        self.head = model.heads[task]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(self.stem(x)))


def export_task(model, policy: Policy, task: str, example: torch.Tensor, *, method: str = "export"):
    """The eval-mode `TaskNetwork` of `task` as a `torch.export.ExportedProgram` (`'export'`; call
    `.module()` to run it) or as traced TorchScript (`'trace'`, deprecated by PyTorch)."""
    if method not in EXPORT_METHODS:
        raise ValueError(f"unknown export method {method!r}; expected one of {EXPORT_METHODS}")
    net = TaskNetwork(model, policy, task)
    was_training = model.training
    net.eval()  # the modules are shared with `model`: restore its mode afterwards
    try:
        with torch.no_grad():
            if method == "trace":
                return torch.jit.trace(net, example, check_trace=False)
            return torch.export.export(net, (example,))
    finally:
        model.train(was_training)
