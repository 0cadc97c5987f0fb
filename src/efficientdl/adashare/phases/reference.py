"""The selection reference: the single-task validation metrics Δ_T is measured against."""

from __future__ import annotations

import json
from pathlib import Path

from efficientdl.adashare.folders import RESULT, read_result
from efficientdl.core import ConfigError


def reference(ctx) -> dict | None:
    """`selection_reference` file (`read_reference`), else the single-task baseline's validation
    results in this run, else the end-of-warm-up ones."""
    if ctx.cfg.selection_reference:
        return read_reference(Path(ctx.cfg.selection_reference))
    for folder in (ctx.run_dir / "baselines" / "single_task", ctx.run_dir / "warmup"):
        done = read_result(folder)
        if done is not None and done.get("val"):
            return done["val"]
    return None


def read_reference(path: Path) -> dict:
    """Single-task validation metrics {task: {metric: value}} from `selection_reference`: a file
    with a "val" entry (a baseline's result.json, an ablation's reference.json) or the
    results.json of a pipeline run, whose folder holds baselines/single_task/result.json."""
    if not path.is_file():
        raise ConfigError(f"config key 'selection_reference': {path} does not exist")
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ConfigError(f"selection_reference {path} is not valid JSON ({err})") from None
    if isinstance(data, dict) and "val" in data:
        return data["val"]
    if not isinstance(data, dict) or "runs" not in data:
        raise ConfigError(
            f"selection_reference {path}: expected a result.json with 'val' or a pipeline's "
            "results.json with 'runs'"
        )
    single = path.parent / "baselines" / "single_task"
    done = read_result(single)
    if done is None or not done.get("val"):
        raise ConfigError(
            f"selection_reference {path}: results.json holds test metrics only, and the "
            f"single-task validation metrics ('val' in {single / RESULT}) are missing; "
            "run the single_task baseline in that run folder or point at a file with 'val'"
        )
    return done["val"]
