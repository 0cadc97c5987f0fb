"""One divergence check for every training loop: a non-finite loss, or a loss that has grown far
above where the run (or this resumed session) started, stops the run with `DivergenceError`."""

from __future__ import annotations

import math

from efficientdl.core.errors import DivergenceError

GROWTH = 1e3
"""A loss above GROWTH × max(first loss, 1) counts as diverged: no run of ours legitimately grows
its training loss a thousandfold (an lr of 1e6 does within a few steps)."""


class LossGuard:
    """Checks each loss value of one method's run (`check`) and raises `DivergenceError` naming
    the method, where in the run it happened (phase, epoch, iteration, ...) and the value; the
    caller checks before it writes a checkpoint, so the last good checkpoint is kept."""

    def __init__(self, method: str, *, growth: float = GROWTH) -> None:
        self.method = method
        self.growth = growth
        self.first: float | None = None

    def check(self, loss: float, **where) -> float:
        """Return `loss` (a float) if the run is healthy, else raise DivergenceError."""
        loss = float(loss)
        finite = math.isfinite(loss)
        if finite and self.first is None:
            self.first = abs(loss)
        limit = self.growth * max(self.first or 0.0, 1.0)
        if finite and abs(loss) <= limit:
            return loss
        place = ", ".join(f"{k.replace('_', ' ')} {v}" for k, v in where.items() if v is not None)
        why = "is not finite" if not finite else f"exceeds {limit:.3g} ({self.growth:g}× its start)"
        raise DivergenceError(
            f"{self.method} diverged{' in ' + place if place else ''}: training loss {loss:.6g} "
            f"{why}; the last good checkpoint is kept — lower the learning rate or check the data"
        )
