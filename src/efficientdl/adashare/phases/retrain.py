"""The retrain phase: every sampled policy trained from scratch with true skipping."""

from __future__ import annotations

from efficientdl.adashare.folders import RESULT
from efficientdl.adashare.model import Policy, TreeExecutor
from efficientdl.adashare.phases.reference import reference
from efficientdl.adashare.phases.sample import sample_done, sampled_policies
from efficientdl.adashare.phases.search import searched_model
from efficientdl.adashare.phases.training import train_fixed


def retrain_folder(ctx, index: int):
    return ctx.run_dir / "retrain" / f"sample_{index:02d}"


def first_copies(policies: list[Policy]) -> list[int | None]:
    """For each policy, the index of an earlier identical one (trained once), else None."""
    return [next((j for j in range(i) if policies[j] == p), None) for i, p in enumerate(policies)]


def retrain_done(ctx) -> bool:
    """The policies are drawn and every distinct one has its retrain/sample_NN/result.json."""
    if not sample_done(ctx):
        return False
    policies = sampled_policies(ctx)
    return all(
        first is not None or (retrain_folder(ctx, i) / RESULT).is_file()
        for i, first in enumerate(first_copies(policies))
    )


def retrain(ctx, policy: Policy, index: int = 0) -> dict:
    """Re-train from scratch (seed + index) with the fixed `policy` and true skipping."""
    model = ctx.build_model(seed=ctx.cfg.seed + index)
    if ctx.cfg.retrain.from_search:
        searched, _ = searched_model(ctx)
        model.load_state_dict(searched.state_dict())
    executor = TreeExecutor(model, policy)
    result = train_fixed(
        ctx,
        folder=retrain_folder(ctx, index),
        model=model,
        train_forward=lambda x, it: model(x, policy),
        eval_forward=lambda x, b: executor(x),
        spec=ctx.spec,
        iters=ctx.cfg.retrain.iters,
        val_freq=ctx.cfg.retrain.val_freq,
        seed=ctx.cfg.seed + index,
        phase=f"retrain_{index:02d}",
        reference=reference(ctx),
    )
    return result | {"policy": policy.to_dict()}


def retrain_all(ctx) -> list[dict]:
    """Re-train every sampled policy (identical policies are trained once, `same_as` the first)."""
    policies = sampled_policies(ctx)
    results: list[dict] = []
    for i, (p, first) in enumerate(zip(policies, first_copies(policies))):
        results.append(
            results[first] | {"same_as": first} if first is not None else retrain(ctx, p, i)
        )
    return results
