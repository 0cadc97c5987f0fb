"""AdaShare (Sun et al., NeurIPS 2020): learned per-task select-or-skip policies over the residual
blocks of one shared Deeplab-ResNet, for multi-task dense prediction.

`model/` holds the network, `objectives/` the tasks, losses and metrics, `phases/` the training
phases and their pipeline, `reporting/` the results tables and policy pictures. `AdaShareRun`
runs the pipeline, also on tasks (`Task`, `Metric`) and datasets of your own."""

from efficientdl.adashare.model import (
    AdaShareNet,
    Policy,
    TreeExecutor,
    curriculum_pad,
    flops,
    gumbel_softmax_gates,
    param_counts,
)
from efficientdl.adashare.objectives.tasks import Metric, Task
from efficientdl.adashare.phases import AdaShareRun

__all__ = [
    "AdaShareNet",
    "AdaShareRun",
    "Metric",
    "Policy",
    "Task",
    "TreeExecutor",
    "curriculum_pad",
    "flops",
    "gumbel_softmax_gates",
    "param_counts",
]
