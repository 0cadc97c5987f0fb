"""AdaShare (Sun et al., NeurIPS 2020): learned per-task select-or-skip policies over the residual
blocks of one shared Deeplab-ResNet, for multi-task dense prediction."""

from efficientdl.adashare.counting import flops, param_counts
from efficientdl.adashare.executor import TreeExecutor
from efficientdl.adashare.model import AdaShareNet
from efficientdl.adashare.policy import Policy, curriculum_pad, gumbel_softmax_gates

__all__ = [
    "AdaShareNet",
    "Policy",
    "TreeExecutor",
    "curriculum_pad",
    "flops",
    "gumbel_softmax_gates",
    "param_counts",
]
