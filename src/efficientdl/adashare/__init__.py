"""AdaShare (Sun et al., NeurIPS 2020): learned per-task select-or-skip policies over the residual
blocks of one shared Deeplab-ResNet, for multi-task dense prediction.

`model/` holds the network, `objectives/` the losses and metrics, `phases/` the training phases
and their pipeline, `reporting/` the results tables and policy pictures."""

from efficientdl.adashare.model import (
    AdaShareNet,
    Policy,
    TreeExecutor,
    curriculum_pad,
    flops,
    gumbel_softmax_gates,
    param_counts,
)

__all__ = [
    "AdaShareNet",
    "Policy",
    "TreeExecutor",
    "curriculum_pad",
    "flops",
    "gumbel_softmax_gates",
    "param_counts",
]
