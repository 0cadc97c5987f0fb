"""TensorBoard event files for `--tensorboard`: scalars under `<run-dir>/tensorboard/`."""

from __future__ import annotations

import numbers
from pathlib import Path
from typing import Any

from efficientdl.core.errors import UserError

EXTRA = "pip install 'efficientdl[tensorboard]'"


def require_tensorboard() -> None:
    """Raise a one-line UserError naming the extra when the tensorboard package is missing."""
    try:
        import tensorboard  # noqa: F401
        from torch.utils.tensorboard import SummaryWriter  # noqa: F401
    except ImportError as err:
        raise UserError(f"--tensorboard needs the tensorboard package ({err}); {EXTRA}") from None


class Scalars:
    """Writes numeric fields of records as TensorBoard scalars (`tag` = prefix/field); a
    disabled instance (no `--tensorboard`, or a rank other than 0) does nothing."""

    def __init__(self, run_dir: str | Path | None, *, enabled: bool = True) -> None:
        self.writer = None
        if enabled and run_dir is not None:
            require_tensorboard()
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(log_dir=str(Path(run_dir) / "tensorboard"))

    @property
    def enabled(self) -> bool:
        return self.writer is not None

    def log(self, step: int, values: dict[str, Any], *, prefix: str = "") -> None:
        """One scalar per numeric (non-bool) value; nested mappings become `a/b` tags."""
        if self.writer is None:
            return
        for tag, value in _numeric(values, prefix.rstrip("/")):
            self.writer.add_scalar(tag, value, global_step=int(step))
        self.writer.flush()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None


def _numeric(values: dict[str, Any], prefix: str):
    for key, value in values.items():
        tag = f"{prefix}/{key}" if prefix else str(key)
        if isinstance(value, dict):
            yield from _numeric(value, tag)
        elif isinstance(value, numbers.Real) and not isinstance(value, bool):
            yield tag, float(value)
