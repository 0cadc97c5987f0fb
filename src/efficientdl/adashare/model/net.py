"""`AdaShareNet`: a gated Deeplab-ResNet, per-task policy logits and task heads."""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn

from efficientdl.adashare.model.backbone import (
    GatedBlock,
    block_layout,
    init_backbone_,
    make_stem,
    shared_bn_momentum,
)
from efficientdl.adashare.model.heads import make_head
from efficientdl.adashare.model.policy import (
    Policy,
    check_gates,
    check_logits,
    curriculum_pad,
    gumbel_softmax_gates,
)

LOGITS_INITS = ("equal", "random", "all_chosen")
EXEC_MODES = ("fast", "official")


def init_logits(num_tasks: int, num_blocks: int, kind: str) -> torch.Tensor:
    """Initial policy logits [K, L, 2]: 'equal' (all 0.5) [code], 'random' (1e-3·N(0,1)),
    'all_chosen' (select 0, skip −10)."""
    if kind == "equal":
        return torch.full((num_tasks, num_blocks, 2), 0.5)
    if kind == "random":
        return 1e-3 * torch.randn(num_tasks, num_blocks, 2)
    if kind == "all_chosen":
        logits = torch.zeros(num_tasks, num_blocks, 2)
        logits[..., 1] = -10.0
        return logits
    raise ValueError(f"unknown logits_init {kind!r}; expected one of {LOGITS_INITS}")


class AdaShareNet(nn.Module):
    """Multi-task network whose tasks each execute or skip every residual block.

    `forward(x, policy)` with `policy` = None (hard sharing), float gates [K, L, 2] (soft/search),
    or a `Policy` (true skipping). `exec_mode='official'` computes every block and masks, as the
    official code does (the parity reference); `width` (ours) scales all channels (64 = paper).
    """

    def __init__(
        self,
        backbone: str = "resnet18",
        tasks: Mapping[str, int] | None = None,
        head: str = "light",
        *,
        stem: str = "deeplab",
        in_channels: int = 3,
        logits_init: str = "equal",
        exec_mode: str = "fast",
        width: int = 64,
    ) -> None:
        super().__init__()
        if not tasks:
            raise ValueError("tasks must map at least one task name to its output channels")
        if exec_mode not in EXEC_MODES:
            raise ValueError(f"unknown exec_mode {exec_mode!r}; expected one of {EXEC_MODES}")
        self.backbone_name = backbone
        self.block_info = block_layout(backbone, width=width)
        self.tasks = tuple(tasks)
        self.task_channels = dict(tasks)
        self.head_kind = head
        self.exec_mode = exec_mode
        self.stem = make_stem(stem, in_channels, width)
        self.blocks = nn.ModuleList(GatedBlock(info) for info in self.block_info)
        feat = self.block_info[-1].out_channels
        self.heads = nn.ModuleDict(
            {t: make_head(head, feat, c, width=width) for t, c in self.task_channels.items()}
        )
        init_backbone_(self.stem)
        init_backbone_(self.blocks)
        self.policy_logits = nn.Parameter(
            init_logits(len(self.tasks), len(self.block_info), logits_init)
        )

    @property
    def num_blocks(self) -> int:
        return len(self.block_info)

    def parameter_groups(self) -> dict[str, list[nn.Parameter]]:
        """{'backbone': stem + blocks, 'heads': all heads, 'policy': [policy_logits]}."""
        return {
            "backbone": [*self.stem.parameters(), *self.blocks.parameters()],
            "heads": list(self.heads.parameters()),
            "policy": [self.policy_logits],
        }

    def execution_probs(self) -> torch.Tensor:
        """α = softmax(a)[..., 0], [K, L] (detached)."""
        return torch.softmax(self.policy_logits.detach().float(), dim=-1)[..., 0]

    def sample_gates(
        self, tau: float, *, hard: bool = False, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """One Gumbel-softmax sample per task and block, [K, L, 2] (differentiable in a)."""
        check_logits(self.policy_logits, len(self.tasks))
        return gumbel_softmax_gates(self.policy_logits, tau, hard=hard, generator=generator)

    def sample_policy(
        self, *, generator: torch.Generator | None = None, mode: str = "bernoulli"
    ) -> Policy:
        """Hard policy: independent Bernoulli(α) draws [code], or `mode='argmax'`."""
        probs = self.execution_probs().cpu()
        if mode == "bernoulli":
            execute = torch.rand(probs.shape, generator=generator) < probs
        elif mode == "argmax":
            execute = probs >= 0.5
        else:
            raise ValueError(f"unknown sampling mode {mode!r}; expected 'bernoulli' or 'argmax'")
        return Policy(self.tasks, execute, backbone=self.backbone_name)

    def _check_policy(self, policy: Policy) -> None:
        if policy.tasks != self.tasks:
            raise ValueError(f"policy tasks {policy.tasks} do not match model tasks {self.tasks}")
        if policy.num_blocks != self.num_blocks:
            raise ValueError(
                f"policy has {policy.num_blocks} blocks, the {self.backbone_name} backbone has "
                f"{self.num_blocks}"
            )

    def _check_n_unlocked(self, n_unlocked: int | None) -> None:
        if n_unlocked is not None and not 1 <= n_unlocked <= self.num_blocks:
            raise ValueError(
                f"n_unlocked must be in 1..{self.num_blocks} (the gated blocks of "
                f"{self.backbone_name}) or None, got {n_unlocked!r}"
            )

    def _heads(self, feats: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {t: self.heads[t](feats[t]) for t in self.tasks}

    def _shared(self, x: torch.Tensor, prefix: int) -> torch.Tensor:
        """Stem and blocks 0…prefix−1 (all executed), computed once for the K tasks."""
        modules = [self.stem, *self.blocks[:prefix]]
        with shared_bn_momentum(modules if self.training else [], len(self.tasks)):
            h = self.stem(x)
            for block in self.blocks[:prefix]:
                h = block.execute(h)
        return h

    def forward(
        self,
        x: torch.Tensor,
        policy: torch.Tensor | Policy | None = None,
        *,
        n_unlocked: int | None = None,
    ) -> dict[str, torch.Tensor]:
        """Per-task outputs [B, C, h, w] (dense heads, 1/8 resolution) or [B, C] (linear head).

        `n_unlocked` (1…L; None = L) forces blocks 0…L−n−1 to execute for every task and
        computes them once.
        """
        self._check_n_unlocked(n_unlocked)
        if policy is None:
            h = self.stem(x)
            for block in self.blocks:
                h = block.execute(h)
            return {t: self.heads[t](h) for t in self.tasks}
        if isinstance(policy, Policy):
            self._check_policy(policy)
            policy = policy.padded(n_unlocked)
            if self.exec_mode == "official":
                return self._masked(x, policy.gates(x.dtype, x.device))
            return self._true_skip(x, policy, self.num_blocks - (n_unlocked or self.num_blocks))
        if not isinstance(policy, torch.Tensor):
            raise ValueError(f"policy must be None, a gate tensor or a Policy, got {type(policy)}")
        check_gates(policy, len(self.tasks), self.num_blocks)
        gates = curriculum_pad(policy, n_unlocked)
        if self.exec_mode == "official":
            return self._masked(x, gates)
        return self._soft(x, gates, self.num_blocks - (n_unlocked or self.num_blocks))

    def _true_skip(self, x: torch.Tensor, policy: Policy, prefix: int) -> dict[str, torch.Tensor]:
        shared = self._shared(x, prefix)
        feats = {}
        for k, task in enumerate(self.tasks):
            h = shared
            for block, run in zip(self.blocks[prefix:], policy.execute[k, prefix:].tolist()):
                h = block(h, run)
            feats[task] = h
        return self._heads(feats)

    def _soft(self, x: torch.Tensor, gates: torch.Tensor, prefix: int) -> dict[str, torch.Tensor]:
        shared = self._shared(x, prefix)
        gates = gates.to(shared.dtype)
        feats = {}
        for k, task in enumerate(self.tasks):
            h = shared
            for l in range(prefix, self.num_blocks):
                h = self.blocks[l].mix(h, gates[k, l, 0], gates[k, l, 1])
            feats[task] = h
        return self._heads(feats)

    def _masked(self, x: torch.Tensor, gates: torch.Tensor) -> dict[str, torch.Tensor]:
        """Official mode: K full passes, every block computed and mixed with its gate."""
        gates = gates.to(x.dtype)
        feats = {}
        for k, task in enumerate(self.tasks):
            h = self.stem(x)
            for l, block in enumerate(self.blocks):
                h = block.mix(h, gates[k, l, 0], gates[k, l, 1])
            feats[task] = h
        return self._heads(feats)
