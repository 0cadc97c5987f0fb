"""Resumable training of a fixed architecture: warm-up, re-training and baselines.

Adam(β = (0.5, 0.999), coupled L2 weight decay) with heads at `lr` and the backbone at
`backbone_lr`, StepLR stepped every iteration; batches from the full training split; validation
every `val_freq` iterations; `best.pt` by the selection score; atomic checkpoints with all RNG
states so a killed run continues bit-exactly. Under DDP each rank trains on its shard of every
global batch with averaged gradients (`ddp.synchronise`); rank 0 writes the files. Every
iteration's loss goes through the run's divergence guard before any checkpoint is written.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
from tqdm import tqdm

from efficientdl.adashare.folders import BEST, CHECKPOINT, RESULT, read_result, write_json
from efficientdl.adashare.objectives.tasks import weighted_loss
from efficientdl.adashare.phases.ddp import global_mean, shard, synchronise, to_device
from efficientdl.adashare.phases.evaluation import selection_score, validate
from efficientdl.core import (
    DivergenceError,
    LossGuard,
    load_checkpoint,
    rng_state,
    save_checkpoint,
    set_rng_state,
)
from efficientdl.core.log import get_logger

log = get_logger("adashare")


class LossDiverged(DivergenceError, RuntimeError):
    """An AdaShare training loss that is not finite or exploded; a `DivergenceError` (one line
    on the CLI) that is also the RuntimeError this check raised in earlier versions."""


def adam_with_step_lr(model, train_cfg):
    """The warm-up / re-training optimiser and its per-iteration StepLR."""
    groups = model.parameter_groups()
    optimizer = torch.optim.Adam(
        [
            {"params": groups["heads"], "lr": train_cfg.lr, "name": "heads"},
            {"params": groups["backbone"], "lr": train_cfg.backbone_lr, "name": "backbone"},
        ],
        betas=(0.5, 0.999),
        weight_decay=train_cfg.weight_decay,
    )
    scheduler = torch.optim.lr_scheduler.StepLR(
        optimizer, step_size=train_cfg.decay_lr_freq, gamma=train_cfg.decay_lr_rate
    )
    return optimizer, scheduler


def check_finite(
    loss: torch.Tensor, phase: str, iteration: int, dist, guard: LossGuard | None = None
) -> float:
    """The loss averaged over the ranks, as a float, checked by `guard` (the run's
    `core.divergence.LossGuard`); `LossDiverged` naming the phase, iteration and value (on every
    rank at once) if it is NaN, inf, or grew far above the session's first loss."""
    value = global_mean(loss, dist)
    guard = guard if guard is not None else LossGuard("adashare")
    try:
        guard.check(value, phase=phase, iteration=iteration)
    except DivergenceError:
        why = (
            "not finite"
            if not math.isfinite(value)
            else f"above {guard.growth:g}× the first loss of this session"
        )
        raise LossDiverged(
            f"adashare {phase}: loss became {value:.6g} at iteration {iteration} ({why}); the "
            "last good checkpoint is kept — lower the learning rate or check the inputs"
        ) from None
    return value


def train_fixed(
    ctx,
    *,
    folder: Path,
    model,
    train_forward,
    eval_forward,
    spec,
    iters: int,
    val_freq: int,
    seed: int,
    phase: str,
    reference: dict | None = None,
    keep_best: bool = True,
) -> dict:
    """Train `model` for `iters` iterations with `train_forward(x, it)` in the run of `ctx`;
    returns the result dict
    (best or final validation metrics and score), written to `folder/result.json`."""
    folder = Path(folder)
    done = read_result(folder)
    if done is not None:
        log.info("%s: done (%s), skipped", phase, folder / RESULT)
        return done
    cfg = ctx.cfg
    optimizer, scheduler = adam_with_step_lr(model, cfg.train)
    stream = ctx.stream("train", seed=seed, stream=0)
    state = {
        "it": 0,
        "best_score": -math.inf,
        "best_val": None,
        "reference": reference,
        "last_val": None,
        "history_len": len(ctx.logger.history),
    }
    ckpt = folder / CHECKPOINT
    if ckpt.is_file():
        saved = load_checkpoint(ckpt, map_location=ctx.device)
        model.load_state_dict(saved["model"])
        optimizer.load_state_dict(saved["optimizer"])
        scheduler.load_state_dict(saved["scheduler"])
        stream.load_state(saved["stream"])
        state = saved["state"]
        set_rng_state(saved["rng"])
        ctx.logger.truncate(state["history_len"])
        log.info("%s: resuming at iteration %d of %d (%s)", phase, state["it"], iters, ckpt)
    ctx.begin()
    inside = folder.is_relative_to(ctx.run_dir)
    tb_prefix = str(folder.relative_to(ctx.run_dir)) if inside else phase

    def save():
        ctx.on_main(
            save_checkpoint,
            ckpt,
            {
                "model": model.state_dict(),
                "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(),
                "stream": stream.state(),
                "state": state,
                "rng": rng_state(),
            },
        )

    bar = tqdm(
        range(state["it"], iters),
        desc=phase,
        leave=False,
        disable=not (cfg.progress and ctx.dist.is_main),
    )
    for _ in bar:
        it = state["it"]
        model.train()
        batch = to_device(shard(next(stream), ctx.dist), ctx.device, cfg.perf.channels_last)
        optimizer.zero_grad(set_to_none=True)
        with ctx.autocast():
            outputs = train_forward(batch["image"], it)
        loss, parts = weighted_loss(outputs, batch, spec)
        value = check_finite(loss, phase, it + 1, ctx.dist, ctx.guard)
        loss.backward()
        synchronise(model, ctx.dist)
        optimizer.step()
        heads, backbone = optimizer.param_groups
        lrs = {"lr": heads["lr"], "backbone_lr": backbone["lr"]}
        ctx.emit(
            {
                "phase": phase,
                "iter": it + 1,
                "half": "train",
                "optimizer": "Adam",
                **lrs,
                "loss": value,
            }
        )
        scheduler.step()
        state["it"] = it + 1
        due = state["it"] % val_freq == 0 or state["it"] == iters
        if due:
            val = validate(ctx, eval_forward, spec, model)
            state["reference"] = state["reference"] or val
            score = selection_score(val, state["reference"], spec)
            state["last_val"] = val
            record = {"phase": phase, "iter": state["it"], "train_loss": value, "val_score": score}
            record |= {f"val_{t}_{m}": v for t, ms in val.items() for m, v in ms.items()}
            ctx.logger.log(record)
            ctx.log_scalars(
                state["it"],
                {"train_loss": value, "val_score": score, **lrs, "val": val},
                tb_prefix,
            )
            if keep_best and score > state["best_score"]:
                state["best_score"], state["best_val"] = score, val
                ctx.on_main(
                    save_checkpoint,
                    folder / BEST,
                    {"model": model.state_dict(), "iter": state["it"], "score": score},
                )
            state["history_len"] = len(ctx.logger.history)
        if due or state["it"] % cfg.train.ckpt_every == 0:
            save()
    if keep_best:
        model.load_state_dict(load_checkpoint(folder / BEST, map_location=ctx.device)["model"])
    result = {
        "phase": phase,
        "iters": iters,
        "val": state["best_val"] if keep_best else state["last_val"],
        "score": state["best_score"] if keep_best else None,
        "checkpoint": str(folder / (BEST if keep_best else CHECKPOINT)),
    }
    ctx.on_main(write_json, folder / RESULT, result)
    return result
