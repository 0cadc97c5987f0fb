"""Metrics written to the run folder as JSON lines, JSON and CSV."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any


class MetricsLogger:
    """Append-only per-epoch metrics; `history` survives resume (re-read from disk)."""

    def __init__(self, run_dir: str | Path, *, enabled: bool = True):
        self.run_dir = Path(run_dir)
        self.enabled = enabled
        self.path = self.run_dir / "metrics.jsonl"
        self.history: list[dict[str, Any]] = []
        if self.path.exists():
            self.history = [json.loads(line) for line in self.path.read_text().splitlines() if line]

    def truncate(self, keep: int) -> None:
        """Keep the first `keep` records (used on resume to drop records after the checkpoint)."""
        self.history = self.history[:keep]
        self._rewrite()

    def log(self, record: dict[str, Any]) -> None:
        """Add one record and refresh metrics.jsonl / metrics.json / metrics.csv."""
        self.history.append(record)
        self._rewrite()

    def _rewrite(self) -> None:
        if not self.enabled:
            return
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.path.write_text("".join(json.dumps(r) + "\n" for r in self.history))
        (self.run_dir / "metrics.json").write_text(json.dumps(self.history, indent=2))
        keys: list[str] = []
        for record in self.history:
            keys += [k for k in record if k not in keys]
        with open(self.run_dir / "metrics.csv", "w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=keys)
            writer.writeheader()
            writer.writerows(self.history)
