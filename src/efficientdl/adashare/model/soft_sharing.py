"""Soft parameter sharing on the AdaShare backbone: Cross-Stitch, Sluice, NDDR-CNN and MTAN.

All four use the Deeplab-ResNet of `AdaShareNet` (same stem, blocks, widths, dilations, init) and
its task heads, and map `x -> {task: output}` like `AdaShareNet(x)`:

- `CrossStitchNet` (Misra et al., 2016): one column per task; after every stage a unit mixes
  the K columns' feature maps, `h̃_k = Σ_j α_kj·h_j`, with a learned α [K, K] per stage.
- `SluiceNet` (Ruder et al., 2019): one column per task whose stage outputs are split into two
  channel subspaces; after every stage α [2K, 2K] mixes all 2K subspaces, and each task's final
  feature is a learned β-mixture of the outputs of its column's last-stage blocks.
- `NDDRNet` (Gao et al., 2019): one column per task; after every stage each task concatenates
  the K columns' features and reduces them with its own 1×1 conv → BN → ReLU.
- `MTANNet` (Liu et al., 2019): one shared network; per task and stage a soft attention mask
  `sigmoid(att(cat(shared mid-stage feature, previous attended feature)))` multiplies the shared
  stage output, and a shared block carries the attended feature to the next stage.

Units start near "no sharing": α and the NDDR convs put `init_same` (0.9) on a task's own
column/subspace and spread the rest evenly over the others (rows sum to 1).
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn

from efficientdl.adashare.model.backbone import (
    BlockInfo,
    GatedBlock,
    block_layout,
    init_backbone_,
    make_stem,
)
from efficientdl.adashare.model.heads import make_head

SLUICE_SUBSPACES = 2


def mixing_init(n: int, same: float) -> torch.Tensor:
    """[n, n] matrix with `same` on the diagonal and (1 − same)/(n − 1) elsewhere (1 if n = 1)."""
    if n == 1:
        return torch.ones(1, 1)
    alpha = torch.full((n, n), (1.0 - same) / (n - 1))
    alpha.fill_diagonal_(same)
    return alpha


class Trunk(nn.Module):
    """The Deeplab-ResNet stem and residual blocks of `AdaShareNet` (state-dict compatible with
    its `stem` and `blocks`), run stage by stage."""

    def __init__(self, backbone: str, *, stem: str, in_channels: int, width: int) -> None:
        super().__init__()
        self.block_info = block_layout(backbone, width=width)
        self.stem = make_stem(stem, in_channels, width)
        self.blocks = nn.ModuleList(GatedBlock(info) for info in self.block_info)
        stages = sorted({b.stage for b in self.block_info})
        self.stages = tuple(tuple(b.index for b in self.block_info if b.stage == s) for s in stages)
        init_backbone_(self)

    @property
    def out_channels(self) -> int:
        """Channels of the last block's output (what the heads read)."""
        return self.block_info[-1].out_channels

    def stage(self, s: int, h: torch.Tensor) -> list[torch.Tensor]:
        """The outputs of every block of stage `s` (0-based) on input `h`."""
        outs = []
        for i in self.stages[s]:
            h = self.blocks[i].execute(h)
            outs.append(h)
        return outs


class SoftSharingNet(nn.Module):
    """Common part of the soft-sharing baselines: tasks, task heads and parameter groups."""

    def __init__(
        self,
        backbone: str,
        tasks: Mapping[str, int] | None,
        head: str,
        *,
        stem: str,
        in_channels: int,
        width: int,
        columns: int,
    ) -> None:
        super().__init__()
        if not tasks:
            raise ValueError("tasks must map at least one task name to its output channels")
        self.backbone_name = backbone
        self.tasks = tuple(tasks)
        self.task_channels = dict(tasks)
        self.trunks = nn.ModuleList(
            Trunk(backbone, stem=stem, in_channels=in_channels, width=width) for _ in range(columns)
        )
        feat = self.trunks[0].out_channels
        self.heads = nn.ModuleDict(
            {t: make_head(head, feat, c, width=width) for t, c in self.task_channels.items()}
        )

    def parameter_groups(self) -> dict[str, list[nn.Parameter]]:
        """{'backbone': trunks and sharing units, 'heads': all heads} (the re-training groups)."""
        heads = {id(p) for p in self.heads.parameters()}
        return {
            "backbone": [p for p in self.parameters() if id(p) not in heads],
            "heads": list(self.heads.parameters()),
        }

    def _heads(self, feats) -> dict[str, torch.Tensor]:
        return {t: self.heads[t](f) for t, f in zip(self.tasks, feats)}


class CrossStitchUnit(nn.Module):
    """h̃_k = Σ_j α_kj·h_j over the K task columns, α [K, K] learned."""

    def __init__(self, num_tasks: int, init_same: float) -> None:
        super().__init__()
        self.alpha = nn.Parameter(mixing_init(num_tasks, init_same))

    def forward(self, feats: torch.Tensor) -> torch.Tensor:
        """`feats` [K, B, C, H, W] → the mixed [K, B, C, H, W]."""
        return torch.einsum("kj,jbchw->kbchw", self.alpha.to(feats.dtype), feats)


class SluiceUnit(nn.Module):
    """Each column's channels split into `SLUICE_SUBSPACES` equal subspaces; the K·M subspaces
    are mixed by a learned α [K·M, K·M] (subspace k·M + m is subspace m of task k)."""

    def __init__(self, num_tasks: int, init_same: float) -> None:
        super().__init__()
        self.alpha = nn.Parameter(mixing_init(num_tasks * SLUICE_SUBSPACES, init_same))

    def forward(self, feats: torch.Tensor) -> torch.Tensor:
        """`feats` [K, B, C, H, W] → the mixed [K, B, C, H, W]."""
        k, b, c, h, w = feats.shape
        parts = feats.reshape(k, b, SLUICE_SUBSPACES, c // SLUICE_SUBSPACES, h, w)
        parts = parts.transpose(1, 2).reshape(k * SLUICE_SUBSPACES, b, -1, h, w)
        mixed = torch.einsum("ij,jbchw->ibchw", self.alpha.to(feats.dtype), parts)
        return mixed.reshape(k, SLUICE_SUBSPACES, b, -1, h, w).transpose(1, 2).reshape_as(feats)


class NDDRUnit(nn.Module):
    """Per task: 1×1 conv (K·C → C, no bias) → BN → ReLU on the concatenated K columns; the conv
    starts as [α_k1·I, …, α_kK·I] with α = `mixing_init(K, init_same)`."""

    def __init__(self, num_tasks: int, channels: int, init_same: float) -> None:
        super().__init__()
        self.reduce = nn.ModuleList(
            nn.Sequential(
                nn.Conv2d(num_tasks * channels, channels, 1, bias=False),
                nn.BatchNorm2d(channels),
                nn.ReLU(),
            )
            for _ in range(num_tasks)
        )
        alpha = mixing_init(num_tasks, init_same)
        eye = torch.eye(channels)
        with torch.no_grad():
            for k, seq in enumerate(self.reduce):
                weight = torch.cat([alpha[k, j] * eye for j in range(num_tasks)], dim=1)
                seq[0].weight.copy_(weight[:, :, None, None])

    def forward(self, feats: torch.Tensor) -> torch.Tensor:
        """`feats` [K, B, C, H, W] → the K reduced [K, B, C, H, W]."""
        cat = torch.cat(feats.unbind(0), dim=1)
        return torch.stack([reduce(cat) for reduce in self.reduce])


class _ColumnNet(SoftSharingNet):
    """One trunk per task, a sharing unit (`make_unit`) after every stage."""

    def __init__(
        self,
        backbone: str = "resnet18",
        tasks: Mapping[str, int] | None = None,
        head: str = "light",
        *,
        stem: str = "deeplab",
        in_channels: int = 3,
        width: int = 64,
        init_same: float = 0.9,
    ) -> None:
        n = len(tasks or ())
        super().__init__(
            backbone, tasks, head, stem=stem, in_channels=in_channels, width=width, columns=n
        )
        infos = self.trunks[0].block_info
        self.units = nn.ModuleList(
            self.make_unit(infos[stage[-1]].out_channels, init_same)
            for stage in self.trunks[0].stages
        )

    def make_unit(self, channels: int, init_same: float) -> nn.Module:
        """The sharing unit after a stage whose output has `channels` channels per column."""
        raise NotImplementedError

    def stage_output(self, k: int, outs: list[torch.Tensor], last: bool) -> torch.Tensor:
        """What column `k` passes on from its stage's block outputs `outs`: the last one."""
        return outs[-1]

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Per-task outputs, as `AdaShareNet(x)`."""
        feats = torch.stack([trunk.stem(x) for trunk in self.trunks])
        num_stages = len(self.trunks[0].stages)
        for s, unit in enumerate(self.units):
            last = s == num_stages - 1
            feats = torch.stack(
                [
                    self.stage_output(k, trunk.stage(s, h), last)
                    for k, (trunk, h) in enumerate(zip(self.trunks, feats))
                ]
            )
            feats = unit(feats)
        return self._heads(feats.unbind(0))


class CrossStitchNet(_ColumnNet):
    """Cross-Stitch network: K task columns, a cross-stitch unit after every stage."""

    def make_unit(self, channels: int, init_same: float) -> nn.Module:
        return CrossStitchUnit(len(self.tasks), init_same)


class SluiceNet(_ColumnNet):
    """Sluice network: K task columns, a subspace α unit after every stage, and per task a
    β-mixture of its last-stage block outputs as the feature its head reads."""

    def __init__(
        self,
        backbone: str = "resnet18",
        tasks: Mapping[str, int] | None = None,
        head: str = "light",
        *,
        stem: str = "deeplab",
        in_channels: int = 3,
        width: int = 64,
        init_same: float = 0.9,
    ) -> None:
        if width % SLUICE_SUBSPACES:
            raise ValueError(
                f"sluice splits every stage's channels into {SLUICE_SUBSPACES} subspaces: "
                f"model.width must be even, got {width}"
            )
        super().__init__(
            backbone,
            tasks,
            head,
            stem=stem,
            in_channels=in_channels,
            width=width,
            init_same=init_same,
        )
        n_last = len(self.trunks[0].stages[-1])
        self.beta = nn.Parameter(torch.full((len(self.tasks), n_last), 1.0 / n_last))

    def make_unit(self, channels: int, init_same: float) -> nn.Module:
        return SluiceUnit(len(self.tasks), init_same)

    def stage_output(self, k: int, outs: list[torch.Tensor], last: bool) -> torch.Tensor:
        """Σ_l β_kl·(block l output) for the last stage; the last block's output otherwise."""
        if not last:
            return outs[-1]
        return torch.einsum("l,lbchw->bchw", self.beta[k].to(outs[0].dtype), torch.stack(outs))


class NDDRNet(_ColumnNet):
    """NDDR-CNN: K task columns, an NDDR layer (concat → per-task 1×1 conv → BN → ReLU) after
    every stage."""

    def make_unit(self, channels: int, init_same: float) -> nn.Module:
        return NDDRUnit(len(self.tasks), channels, init_same)


def attention_module(in_channels: int, channels: int) -> nn.Sequential:
    """MTAN attention: 1×1 conv → BN → ReLU → 1×1 conv → BN → sigmoid (a mask in (0, 1))."""
    return nn.Sequential(
        nn.Conv2d(in_channels, channels, 1),
        nn.BatchNorm2d(channels),
        nn.ReLU(),
        nn.Conv2d(channels, channels, 1),
        nn.BatchNorm2d(channels),
        nn.Sigmoid(),
    )


class MTANNet(SoftSharingNet):
    """MTAN: one shared trunk; per task and stage s, mask = att_s(mid_s) (s = 0) or
    att_s(cat(mid_s, a_{s−1})) with mid_s the output of the stage's second-to-last block, the
    attended feature mask ⊙ (stage output); a block shared by the tasks (`bridges`, with the next
    stage's first-block geometry) carries it to the next stage. Heads read the last attended
    feature."""

    def __init__(
        self,
        backbone: str = "resnet18",
        tasks: Mapping[str, int] | None = None,
        head: str = "light",
        *,
        stem: str = "deeplab",
        in_channels: int = 3,
        width: int = 64,
    ) -> None:
        super().__init__(
            backbone, tasks, head, stem=stem, in_channels=in_channels, width=width, columns=1
        )
        trunk = self.trunks[0]
        firsts = [trunk.block_info[stage[0]] for stage in trunk.stages]
        chans = [trunk.block_info[stage[-1]].out_channels for stage in trunk.stages]
        self.attention = nn.ModuleList(
            nn.ModuleList(attention_module(c if s == 0 else 2 * c, c) for _ in self.tasks)
            for s, c in enumerate(chans)
        )
        self.bridges = nn.ModuleList(
            GatedBlock(
                BlockInfo(
                    index=-1,
                    stage=nxt.stage,
                    stride=nxt.stride,
                    dilation=nxt.dilation,
                    in_channels=c,
                    out_channels=nxt.out_channels,
                    has_projection=True,
                )
            )
            for c, nxt in zip(chans, firsts[1:])
        )
        init_backbone_(self.attention)
        init_backbone_(self.bridges)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Per-task outputs, as `AdaShareNet(x)`."""
        trunk = self.trunks[0]
        h = trunk.stem(x)
        attended: list[torch.Tensor | None] = [None] * len(self.tasks)
        for s, modules in enumerate(self.attention):
            outs = trunk.stage(s, h)
            mid, h = outs[-2], outs[-1]
            for k, att in enumerate(modules):
                a = mid if s == 0 else torch.cat([mid, attended[k]], dim=1)
                attended[k] = att(a) * h
                if s < len(self.bridges):
                    attended[k] = self.bridges[s].execute(attended[k])
        return self._heads(attended)


SOFT_SHARING = {
    "cross_stitch": CrossStitchNet,
    "sluice": SluiceNet,
    "nddr_cnn": NDDRNet,
    "mtan": MTANNet,
}
"""The soft-sharing baselines by their baseline name."""


def make_soft_sharing(name: str, *args, init_same: float = 0.9, **kwargs) -> SoftSharingNet:
    """The soft-sharing network `name` of `SOFT_SHARING` (arguments as `AdaShareNet`);
    `init_same` sets the initial units of the column networks (MTAN has none)."""
    if name not in SOFT_SHARING:
        raise ValueError(
            f"unknown soft-sharing network {name!r}; expected one of {list(SOFT_SHARING)}"
        )
    cls = SOFT_SHARING[name]
    if issubclass(cls, _ColumnNet):
        kwargs["init_same"] = init_same
    return cls(*args, **kwargs)
