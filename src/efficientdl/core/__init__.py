"""Shared infrastructure: configs, the run protocol, errors, seeding, devices, checkpoints, DDP,
metrics, logging and TensorBoard scalars."""

from efficientdl.core.checkpoint import load_checkpoint, rng_state, save_checkpoint, set_rng_state
from efficientdl.core.config import (
    apply_overrides,
    config_from_args,
    from_dict,
    load_config,
    to_dict,
)
from efficientdl.core.distributed import DistContext, init_distributed
from efficientdl.core.divergence import LossGuard
from efficientdl.core.errors import (
    ConfigError,
    DataError,
    DivergenceError,
    RunFolderError,
    UnsafeFileError,
    UserError,
)
from efficientdl.core.metrics import MetricsLogger
from efficientdl.core.run import RunFolder, open_run
from efficientdl.core.runtime import default_run_dir, derive_seed, seed_everything, select_device

__all__ = [
    "ConfigError",
    "DataError",
    "DistContext",
    "DivergenceError",
    "LossGuard",
    "MetricsLogger",
    "RunFolder",
    "RunFolderError",
    "UnsafeFileError",
    "UserError",
    "apply_overrides",
    "config_from_args",
    "default_run_dir",
    "derive_seed",
    "from_dict",
    "init_distributed",
    "load_checkpoint",
    "load_config",
    "open_run",
    "rng_state",
    "save_checkpoint",
    "seed_everything",
    "select_device",
    "set_rng_state",
    "to_dict",
]
