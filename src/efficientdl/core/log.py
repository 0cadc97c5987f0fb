"""The `efficientdl` logger: what a run decided (backend and why, data paths, resume point,
fallbacks), on stderr; `--quiet` shows warnings only, `--verbose` adds debug lines."""

from __future__ import annotations

import logging
import sys

ROOT = "efficientdl"
LEVELS = {"quiet": logging.WARNING, "normal": logging.INFO, "verbose": logging.DEBUG}


def get_logger(name: str) -> logging.Logger:
    """The logger `efficientdl.<name>` (messages propagate to the `efficientdl` logger)."""
    return logging.getLogger(f"{ROOT}.{name}")


def configure(verbosity: str = "normal", *, is_main: bool = True) -> logging.Logger:
    """Send `efficientdl` records to stderr as `efficientdl: message` at the chosen level; ranks
    other than 0 of a torchrun job show warnings only. Called by the CLI, never at import."""
    if verbosity not in LEVELS:
        raise ValueError(f"verbosity must be one of {sorted(LEVELS)}, got {verbosity!r}")
    logger = logging.getLogger(ROOT)
    for handler in list(logger.handlers):
        if getattr(handler, "_efficientdl", False):
            logger.removeHandler(handler)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("efficientdl: %(message)s"))
    handler._efficientdl = True  # type: ignore[attr-defined]
    logger.addHandler(handler)
    logger.setLevel(LEVELS[verbosity] if is_main else logging.WARNING)
    logger.propagate = False
    return logger
