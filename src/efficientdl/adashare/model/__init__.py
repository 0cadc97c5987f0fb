"""The AdaShare network: gated Deeplab-ResNet backbones and task heads (both registered in
`efficientdl.core.registry`), per-task select-or-skip policies, the prefix-tree executor that
computes shared blocks once, and parameter/FLOP counting."""

from efficientdl.adashare.model.backbone import BlockInfo, GatedBlock, block_layout
from efficientdl.adashare.model.counting import costs, flops, param_counts
from efficientdl.adashare.model.executor import TaskNetwork, TreeExecutor, export_task
from efficientdl.adashare.model.heads import make_head
from efficientdl.adashare.model.net import AdaShareNet
from efficientdl.adashare.model.policy import Policy, curriculum_pad, gumbel_softmax_gates

__all__ = [
    "AdaShareNet",
    "BlockInfo",
    "GatedBlock",
    "Policy",
    "TaskNetwork",
    "TreeExecutor",
    "block_layout",
    "costs",
    "curriculum_pad",
    "export_task",
    "flops",
    "gumbel_softmax_gates",
    "make_head",
    "param_counts",
]
