"""The AdaShare network: gated Deeplab-ResNet backbones and task heads (both registered in
`efficientdl.core.registry`), per-task select-or-skip policies, the prefix-tree executor that
computes shared blocks once, the soft-sharing baselines on the same backbone (Cross-Stitch,
Sluice, NDDR-CNN, MTAN), and parameter/FLOP counting."""

from efficientdl.adashare.model.backbone import BlockInfo, GatedBlock, block_layout
from efficientdl.adashare.model.counting import costs, flops, param_counts
from efficientdl.adashare.model.executor import TaskNetwork, TreeExecutor, export_task
from efficientdl.adashare.model.heads import make_head
from efficientdl.adashare.model.net import AdaShareNet
from efficientdl.adashare.model.policy import Policy, curriculum_pad, gumbel_softmax_gates
from efficientdl.adashare.model.soft_sharing import (
    SOFT_SHARING,
    CrossStitchNet,
    MTANNet,
    NDDRNet,
    SluiceNet,
    SoftSharingNet,
    make_soft_sharing,
)

__all__ = [
    "SOFT_SHARING",
    "AdaShareNet",
    "BlockInfo",
    "CrossStitchNet",
    "GatedBlock",
    "MTANNet",
    "NDDRNet",
    "Policy",
    "SluiceNet",
    "SoftSharingNet",
    "TaskNetwork",
    "TreeExecutor",
    "block_layout",
    "costs",
    "curriculum_pad",
    "export_task",
    "flops",
    "gumbel_softmax_gates",
    "make_soft_sharing",
    "make_head",
    "param_counts",
]
