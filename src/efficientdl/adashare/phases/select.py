"""The select phase (the re-trained sample with the best validation Δ_T, every sample tested)
and the evaluate phase (the selected model on a split)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from efficientdl.adashare.folders import ADASHARE_RESULT, BEST, write_json
from efficientdl.adashare.model import Policy, TreeExecutor
from efficientdl.adashare.phases.evaluation import selection_score, test, validate
from efficientdl.adashare.phases.reference import reference
from efficientdl.adashare.phases.retrain import retrain_all
from efficientdl.adashare.reporting.results import (
    cost_summary,
    image_size,
    metrics_mean_std,
)
from efficientdl.adashare.reporting.viz import plot_policy
from efficientdl.core import RunFolderError, load_checkpoint
from efficientdl.core.log import get_logger

log = get_logger("adashare")


def select_done(ctx) -> bool:
    """adashare_result.json exists."""
    return (ctx.run_dir / ADASHARE_RESULT).is_file()


def select(ctx) -> dict:
    """Pick the sample with the best validation score; test every sample's best checkpoint and
    report the selected one and mean ± std over all samples (adashare_result.json)."""
    results = retrain_all(ctx)
    return ctx.on_main(_select, ctx.alone(), results)


def _select(ctx, results: list[dict]) -> dict:
    out = ctx.run_dir / ADASHARE_RESULT
    if out.is_file():
        log.info("select: done (%s), skipped", out)
        return json.loads(out.read_text())
    ref = reference(ctx) or results[0]["val"]
    scores = [selection_score(r["val"], ref, ctx.spec) for r in results]
    best = int(np.argmax(scores))
    tests = []
    for r in results:
        folder = Path(r["checkpoint"]).parent
        tests.append(test_checkpoint(ctx, folder, Policy.from_dict(r["policy"])))
    policy = Policy.from_dict(results[best]["policy"])
    model = ctx.build_model()
    mean, std = metrics_mean_std(tests)
    summary = {
        "name": "adashare",
        "selected": best,
        "val_scores": scores,
        "val": results[best]["val"],
        "test": tests[best],
        "test_mean": mean,
        "test_std": std,
        "policy": policy.to_dict(),
        "num_executed": policy.num_executed(),
        "checkpoint": results[best]["checkpoint"],
        **cost_summary(model, image_size(ctx.splits), policy),
    }
    plot_policy(
        policy,
        ctx.run_dir / "policy.png",
        title=f"AdaShare policy (sample {best}, selected on val)",
    )
    write_json(out, summary)
    return summary


def test_checkpoint(ctx, folder: Path, policy: Policy) -> dict:
    """Test metrics of the best checkpoint in a re-training folder (cached in test.json)."""
    path = folder / "test.json"
    if path.is_file():
        return json.loads(path.read_text())
    model = ctx.build_model()
    model.load_state_dict(load_checkpoint(folder / BEST, map_location=ctx.device)["model"])
    metrics = test(ctx, lambda x, b: model(x, policy), ctx.spec, model)
    write_json(path, metrics)
    return metrics


def evaluate(ctx, split: str = "test") -> dict:
    """Metrics of the selected re-trained model on `split` ('val' or 'test')."""
    path = ctx.run_dir / ADASHARE_RESULT
    if not path.is_file():
        raise RunFolderError(
            f"{path} does not exist: the run has no selected AdaShare model yet; "
            "run `efficientdl adashare select --run-dir DIR --resume` first"
        )
    selected = json.loads(path.read_text())
    policy = Policy.from_dict(selected["policy"])
    model = ctx.build_model()
    model.load_state_dict(load_checkpoint(selected["checkpoint"], map_location=ctx.device)["model"])
    executor = TreeExecutor(model, policy)
    measure = test if split == "test" else validate
    return measure(ctx, lambda x, b: executor(x), ctx.spec, model)
