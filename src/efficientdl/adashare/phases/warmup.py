"""The warm-up phase: hard-sharing training of the whole network before the policy search."""

from __future__ import annotations

from efficientdl.adashare.folders import RESULT
from efficientdl.adashare.phases.reference import reference
from efficientdl.adashare.phases.training import train_fixed


def warmup_done(ctx) -> bool:
    """No warm-up is configured, or warmup/result.json exists."""
    return ctx.cfg.train.warmup_iters == 0 or (ctx.run_dir / "warmup" / RESULT).is_file()


def warmup(ctx) -> dict:
    """Hard-sharing warm-up: `warmup_iters` Adam + StepLR updates on the full train split."""
    model = ctx.build_model()
    return train_fixed(
        ctx,
        folder=ctx.run_dir / "warmup",
        model=model,
        train_forward=lambda x, it: model(x),
        eval_forward=lambda x, b: model(x),
        spec=ctx.spec,
        iters=ctx.cfg.train.warmup_iters,
        val_freq=max(ctx.cfg.train.warmup_iters, 1),
        seed=ctx.cfg.seed,
        phase="warmup",
        reference=reference(ctx),
        keep_best=False,
    )
