"""Shared infrastructure: configs, run folders, seeding, devices, checkpoints, DDP, metrics."""

from efficientdl.core.checkpoint import load_checkpoint, rng_state, save_checkpoint, set_rng_state
from efficientdl.core.config import ConfigError, apply_overrides, from_dict, load_config, to_dict
from efficientdl.core.distributed import DistContext, init_distributed
from efficientdl.core.metrics import MetricsLogger
from efficientdl.core.runtime import make_run_dir, seed_everything, select_device

__all__ = [
    "ConfigError",
    "DistContext",
    "MetricsLogger",
    "apply_overrides",
    "from_dict",
    "init_distributed",
    "load_checkpoint",
    "load_config",
    "make_run_dir",
    "rng_state",
    "save_checkpoint",
    "seed_everything",
    "select_device",
    "set_rng_state",
    "to_dict",
]
