"""The files of an AdaShare run folder that mark a finished step, and their JSON read/write."""

from __future__ import annotations

import json
from pathlib import Path

from efficientdl.core.run import write_json_atomic

CHECKPOINT, BEST, RESULT = "checkpoint.pt", "best.pt", "result.json"
"""Per training folder: the resumable checkpoint, the best one by the selection score, and the
finished result (what marks a warm-up, re-training or baseline done)."""
ADASHARE_RESULT = "adashare_result.json"
"""The selected AdaShare sample (what marks the select phase done)."""


def read_result(folder: Path) -> dict | None:
    """The finished result of a training folder, or None."""
    path = Path(folder) / RESULT
    return json.loads(path.read_text()) if path.is_file() else None


def write_json(path: Path, data) -> None:
    """Write `data` as JSON through a temporary file and a rename (call it on rank 0 only)."""
    write_json_atomic(path, data)
