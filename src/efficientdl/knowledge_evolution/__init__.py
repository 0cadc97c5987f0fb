"""Knowledge Evolution (Taha et al., CVPR 2021) for unmodified PyTorch CNNs.

Split every conv/linear weight into a kept fit hypothesis and a re-drawn reset hypothesis
(`split`: KELS kernel-level from the traced graph, or WELS weight-level), re-draw the reset part
between generations (`reinitialize`), drive the generations with checkpoints and resume
(`KnowledgeEvolution` / `evolve`), and cut the KELS fit hypothesis out as a thinner network
(`extract_slim`).
"""

from efficientdl.knowledge_evolution.config import KEConfig
from efficientdl.knowledge_evolution.cost import cost
from efficientdl.knowledge_evolution.driver import (
    GenerationContext,
    KnowledgeEvolution,
    evolve,
    stream_seed,
)
from efficientdl.knowledge_evolution.evaluation import accuracy_fn
from efficientdl.knowledge_evolution.experiment import run_experiment
from efficientdl.knowledge_evolution.graph import KEStructureError
from efficientdl.knowledge_evolution.losses import class_partners, cskd_loss
from efficientdl.knowledge_evolution.masks import forget_from, is_kernel_level, keep, split
from efficientdl.knowledge_evolution.reinit import init_weights, masked_copy, reinitialize
from efficientdl.knowledge_evolution.schedule import lr_at
from efficientdl.knowledge_evolution.slim import extract_slim
from efficientdl.knowledge_evolution.training import recipe_train_fn

__all__ = [
    "GenerationContext",
    "KEConfig",
    "KEStructureError",
    "KnowledgeEvolution",
    "accuracy_fn",
    "class_partners",
    "cost",
    "cskd_loss",
    "evolve",
    "extract_slim",
    "forget_from",
    "init_weights",
    "is_kernel_level",
    "keep",
    "lr_at",
    "masked_copy",
    "recipe_train_fn",
    "reinitialize",
    "run_experiment",
    "split",
    "stream_seed",
]
