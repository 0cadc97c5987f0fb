"""TSSL-BP training: `train_step`, `evaluate` and the resumable, DDP-aware `fit`, which follows
the core run protocol (`efficientdl.core.run`)."""

from __future__ import annotations

import dataclasses
import math
import time
from pathlib import Path

import torch
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from efficientdl.core import (
    ConfigError,
    DivergenceError,
    LossGuard,
    MetricsLogger,
    RunFolderError,
    UserError,
    default_run_dir,
    derive_seed,
    init_distributed,
    load_checkpoint,
    open_run,
    rng_state,
    save_checkpoint,
    seed_everything,
    select_device,
    set_rng_state,
    to_dict,
)
from efficientdl.core.distributed import (
    DistContext,
    all_reduce_sum,
    barrier,
    broadcast_object,
    shutdown,
)
from efficientdl.core.log import get_logger
from efficientdl.core.tensorboard import Scalars, require_tensorboard
from efficientdl.snn.config import TSSLBPRecipe
from efficientdl.snn.losses import count_loss, kernel_loss, predict
from efficientdl.snn.network import SpikingNetwork
from efficientdl.snn.networks import build

CHECKPOINT = "checkpoint.pt"

log = get_logger("snn")


def unwrap(model) -> SpikingNetwork:
    """The SpikingNetwork inside a (possibly DDP-wrapped) model."""
    return model.module if isinstance(model, DistributedDataParallel) else model


def make_optimizer(model: torch.nn.Module, recipe: TSSLBPRecipe) -> torch.optim.Optimizer:
    """AdamW(lr, betas (0.9, 0.999), eps 1e-8, decoupled weight decay) on all weights, as the
    official code."""
    return torch.optim.AdamW(
        model.parameters(),
        lr=recipe.lr,
        betas=(0.9, 0.999),
        eps=1e-8,
        weight_decay=recipe.weight_decay,
    )


def compute_loss(output: torch.Tensor, labels: torch.Tensor, recipe: TSSLBPRecipe) -> torch.Tensor:
    """The recipe's sum-reduced kernel or count loss."""
    if recipe.loss == "kernel":
        return kernel_loss(
            output,
            labels,
            tau_s=recipe.tau_s,
            pattern=recipe.pattern,
            target_filter_passes=recipe.target_filter_passes,
        )
    return count_loss(output, labels, desired=recipe.desired, undesired=recipe.undesired)


def train_step(model, optimizer, x, y, recipe: TSSLBPRecipe, *, loss_scale: float = 1.0) -> dict:
    """One step: zero_grad → forward → loss → backward → clip → AdamW → clamp.

    Returns the loss, the number of correct predictions and the gradient norm before clipping as
    device tensors (no host sync).
    `loss_scale` multiplies the loss before backward (DDP uses the world size, so that averaged
    gradients equal the gradient of the sum over the global batch).
    """
    model.train()
    optimizer.zero_grad(set_to_none=True)
    output = model(x)
    loss = compute_loss(output, y, recipe)
    (loss * loss_scale).backward() if loss_scale != 1.0 else loss.backward()
    grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), recipe.grad_clip, foreach=True)
    optimizer.step()
    unwrap(model).clamp_weights_(recipe.weight_clamp)
    return {
        "loss": loss.detach(),
        "correct": (predict(output) == y).sum(),
        "grad_norm": grad_norm.detach(),
    }


def _batches(n: int, batch_size: int, perm: torch.Tensor | None = None):
    order = torch.arange(n) if perm is None else perm
    return [order[i : i + batch_size] for i in range(0, n, batch_size)]


@torch.inference_mode()
def evaluate(
    model,
    dataset,
    recipe: TSSLBPRecipe,
    *,
    device,
    indices=None,
    ctx: DistContext | None = None,
    progress: bool = False,
) -> dict:
    """Test accuracy and mean loss per sample over `dataset` (sharded across DDP ranks)."""
    ctx = ctx or DistContext()
    net = unwrap(model)
    net.eval()
    indices = torch.arange(len(dataset)) if indices is None else indices
    totals = torch.zeros(3, dtype=torch.float64, device=device)  # correct, loss, count
    batches = _batches(len(indices), recipe.batch_size * 4, indices)[ctx.rank :: ctx.world_size]
    for idx in tqdm(batches, desc="eval", leave=False, disable=not progress):
        x, y = dataset.get_batch(idx)
        x, y = x.to(device), y.to(device)
        out = net(x)
        totals[0] += (predict(out) == y).sum()
        totals[1] += compute_loss(out, y, recipe).double()
        totals[2] += y.numel()
    all_reduce_sum(totals, ctx)
    correct, loss, count = totals.tolist()
    return {"accuracy": correct / count, "loss": loss / count, "samples": int(count)}


def _subset(n: int, size: int | None, seed: int) -> torch.Tensor:
    """A fixed, seeded subset of range(n) (all of it when size is None)."""
    if size is None or size >= n:
        return torch.arange(n)
    return torch.randperm(n, generator=torch.Generator().manual_seed(seed))[:size].sort().values


def _epoch_perm(indices: torch.Tensor, seed: int, epoch: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(derive_seed(seed, "epoch", epoch))
    return indices[torch.randperm(len(indices), generator=g)]


def _batch_generator(seed: int, epoch: int, step: int) -> torch.Generator:
    return torch.Generator().manual_seed(derive_seed(seed, "batch", epoch, step))


def _load_data(recipe: TSSLBPRecipe, data_root):
    from efficientdl.data import data_home, get_dataset

    opts = dict(recipe.data_options)
    if recipe.dataset == "fashion-mnist":
        opts.setdefault("normalize", recipe.normalize)
    if recipe.dataset == "nmnist":
        opts.setdefault("T", recipe.T)
    log.info(
        "data: %s from %s", recipe.dataset, data_root if data_root is not None else data_home()
    )
    try:
        train = get_dataset(recipe.dataset, "train", root=data_root, **opts)
        test = get_dataset(recipe.dataset, "test", root=data_root, **opts)
    except UserError:  # missing or malformed data files: DataError
        raise
    except ValueError as err:  # an unknown dataset or option
        raise ConfigError(f"dataset {recipe.dataset!r}: {err}") from None
    return train, test


def _save(path, net, optimizer, recipe, *, epoch, step, history_len, best, seed, sums=None):
    """The checkpoint: tensors and plain Python values only (it loads with weights_only=True)."""
    save_checkpoint(
        path,
        {
            "model": net.state_dict(),
            "optimizer": optimizer.state_dict(),
            "epoch": int(epoch),
            "step": int(step),
            "history_len": int(history_len),
            "best": float(best),
            "epoch_sums": None if sums is None else sums.cpu(),
            "seed": int(seed),
            "recipe": to_dict(recipe),
            "rng": rng_state(),
        },
    )


EXTENDS = ("epochs",)
"""Recipe keys a `--resume` may raise: they continue a run, they do not change what was done."""

FREE = (
    "threads",
    "device",
    "backend",
    "data_root",
    "out_dir",
    "run_name",
    "checkpoint_every",
)
"""Recipe keys a `--resume` may change: where and how fast the run computes, not its results
(the backends implement the same arithmetic; a mid-epoch checkpoint stores the exact position)."""


def _log_backend(recipe: TSSLBPRecipe, device: torch.device) -> str:
    """Log which TSSL-BP implementation the neurons will run ('torch' or 'fused', returned); a
    choice that cannot run is a ConfigError now, not a traceback at the first step. Why 'auto'
    fell back to the reference is logged by `resolve_backend`, once per process."""
    from efficientdl.snn.functional import resolve_backend

    try:
        path = resolve_backend(
            recipe.backend, torch.empty(0, device=device), algorithm=recipe.algorithm
        )
    except (ValueError, RuntimeError) as err:
        raise ConfigError(f"config key 'backend': {err}") from None
    if path == "fused":
        what = "fused C/OpenMP kernels" if device.type == "cpu" else "fused CUDA kernels"
    else:
        what = "torch reference"
    log.info(
        "backend: %s on %s (backend=%s, algorithm=%s)",
        what,
        device,
        recipe.backend,
        recipe.algorithm,
    )
    return path


def backend_ran(net: SpikingNetwork, planned: str) -> str:
    """The path(s) the neurons of `net` last ran on ('torch', 'fused' or both, comma-joined);
    `planned` if none has run yet."""
    ran = sorted({n.ran for n in net.neurons() if n.ran is not None})
    return ",".join(ran) if ran else planned


def build_network(recipe: TSSLBPRecipe) -> SpikingNetwork:
    """The recipe's network; a value the layers refuse is a ConfigError naming the model."""
    try:
        return build(recipe.model, **recipe.model_overrides())
    except UserError:
        raise
    except ValueError as err:
        raise ConfigError(f"model {recipe.model}: {err}") from None


def _check_diverged(guard: LossGuard, sums: torch.Tensor, epoch: int, step: int) -> None:
    """Stop (DivergenceError) if the mean training loss so far in this epoch (sums[0]/sums[2],
    per sample, so it does not grow with the number of steps) is not finite or has exploded, or
    if a gradient norm (sums[3]) is not finite. Called before each checkpoint write."""
    loss, count, grad = sums[0].item(), sums[2].item(), sums[3].item()
    mean = loss / max(count, 1.0)
    guard.check(mean, epoch=epoch + 1, step=step)
    if not math.isfinite(grad):
        raise DivergenceError(
            f"snn diverged in epoch {epoch + 1}, step {step}: gradient norm {grad} is not finite "
            f"(training loss {mean:.6g}); the last good checkpoint is kept — lower the learning "
            "rate or check the data"
        )


def fit(
    recipe: TSSLBPRecipe,
    data_root: str | None = None,
    run_dir: str | Path | None = None,
    seed: int | None = None,
    *,
    resume: bool = False,
    progress: bool = True,
    datasets=None,
    tensorboard: bool = False,
    on_begin=None,
) -> dict:
    """Train `recipe` with per-epoch test evaluation, following the core run protocol.

    `run_dir` (default `<out_dir>/<run_name or model>-<time>`) must hold no run unless `resume`,
    which continues it from `run_dir/checkpoint.pt` with the same recipe (`epochs` may grow; the
    keys in FREE may change). `config.json` is written right before the first step, so a start that
    fails earlier (missing data) leaves nothing that blocks the retry; `on_begin(path)` is called
    then. A diverging loss stops the run (DivergenceError) before the next checkpoint write.
    `tensorboard` writes per-epoch scalars into `run_dir/tensorboard/`.

    Launched under torchrun, each process takes its share of every global batch (DDP, gloo on CPU,
    NCCL on GPU); only rank 0 writes. Returns the summary written to `run_dir/summary.json`.
    """
    if seed is not None and seed != recipe.seed:
        recipe = dataclasses.replace(recipe, seed=seed)
    recipe.validate()
    seed = recipe.seed
    data_root = data_root if data_root is not None else recipe.data_root
    if tensorboard:
        require_tensorboard()
    if recipe.threads:
        torch.set_num_threads(recipe.threads)
    device = select_device(recipe.device)
    ctx = init_distributed(device.type)
    if ctx.enabled and device.type == "cuda":
        device = torch.device("cuda", ctx.local_rank)
    default = default_run_dir(recipe.out_dir, recipe.run_name or recipe.model)
    run_dir = broadcast_object(Path(run_dir) if run_dir else default, ctx)
    config = to_dict(recipe)
    run = open_run(
        run_dir,
        method="snn",
        config=config,
        resume=resume,
        extends=EXTENDS,
        free=FREE,
        is_main=ctx.is_main,
    )
    barrier(ctx)  # every rank has checked the folder before rank 0 records the run in it
    try:
        train_set, test_set = datasets if datasets is not None else _load_data(recipe, data_root)
        train_idx = _subset(len(train_set), recipe.train_subset, seed)
        test_idx = eval_indices(recipe, test_set)
        log.info(
            "%d training / %d test samples (of %d / %d)",
            len(train_idx),
            len(test_idx),
            len(train_set),
            len(test_set),
        )
        seed_everything(seed)
        net = build_network(recipe).to(device)
        # after seeding, where the first step used to probe the fused kernels (on CUDA the probe
        # draws random numbers), so the random streams of a run are those of the first step
        planned_backend = _log_backend(recipe, device)
        model = DistributedDataParallel(net) if ctx.enabled else net
        optimizer = make_optimizer(net, recipe)
        ckpt_path = run.path / CHECKPOINT
        state = None
        if resume and ckpt_path.exists():
            state = load_checkpoint(ckpt_path, map_location=device)
            if state["recipe"]["model"] != recipe.model:
                raise RunFolderError(
                    f"{ckpt_path} holds a {state['recipe']['model']!r} network, not "
                    f"{recipe.model!r}"
                )
        elif resume:
            log.info("resume: %s has no checkpoint yet; starting from the first step", run.path)
    except BaseException:
        run.abandon()
        raise
    barrier(ctx)
    run.begin(config)
    if on_begin is not None:
        on_begin(run.path)
    logger = MetricsLogger(run.path, enabled=ctx.is_main)
    start_epoch, start_step, best, resumed_sums = 0, 0, 0.0, None
    if state is not None:
        net.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        start_epoch, start_step, best = state["epoch"], state["step"], state["best"]
        resumed_sums = state["epoch_sums"]
        set_rng_state(state["rng"])
        logger.truncate(state["history_len"])
        log.info(
            "resume: epoch %d, step %d of %s (best test accuracy so far %.4f)",
            start_epoch + 1,
            start_step,
            ckpt_path,
            best,
        )
    elif resume:
        logger.truncate(0)
    guard = LossGuard("snn")
    scalars = Scalars(run.path, enabled=tensorboard and ctx.is_main)
    try:
        started = time.time()
        for epoch in range(start_epoch, recipe.epochs):
            batches = _batches(
                len(train_idx), recipe.batch_size, _epoch_perm(train_idx, seed, epoch)
            )
            batches = [b for b in batches if len(b) >= ctx.world_size]
            sums = torch.zeros(4, dtype=torch.float64, device=device)  # loss, correct, n, |g|
            if resumed_sums is not None and ctx.is_main:  # saved already summed over ranks
                sums += resumed_sums.to(device)
                resumed_sums = None
            epoch_start = time.time()
            bar = tqdm(
                range(start_step, len(batches)),
                desc=f"epoch {epoch + 1}/{recipe.epochs}",
                disable=not (progress and ctx.is_main),
                leave=False,
            )
            for step in bar:
                idx = batches[step][ctx.rank :: ctx.world_size]
                x, y = train_set.get_batch(idx, _batch_generator(seed, epoch, step))
                x, y = x.to(device), y.to(device)
                out = train_step(model, optimizer, x, y, recipe, loss_scale=float(ctx.world_size))
                sums += torch.stack(
                    [
                        out["loss"].double(),
                        out["correct"].double(),
                        torch.tensor(float(len(y)), dtype=torch.float64, device=device),
                        out["grad_norm"].double(),
                    ]
                )
                if (step + 1) % recipe.checkpoint_every == 0:
                    snapshot = all_reduce_sum(sums.clone(), ctx)
                    _check_diverged(guard, snapshot, epoch, step + 1)
                    if ctx.is_main:
                        _save(
                            ckpt_path,
                            net,
                            optimizer,
                            recipe,
                            epoch=epoch,
                            step=step + 1,
                            history_len=len(logger.history),
                            best=best,
                            seed=seed,
                            sums=snapshot,
                        )
            start_step = 0
            all_reduce_sum(sums, ctx)
            _check_diverged(guard, sums, epoch, len(batches))
            train_time = time.time() - epoch_start
            test = evaluate(model, test_set, recipe, device=device, indices=test_idx, ctx=ctx)
            best = max(best, test["accuracy"])
            record = {
                "epoch": epoch + 1,
                "train_loss": sums[0].item() / max(sums[2].item(), 1),
                "train_accuracy": sums[1].item() / max(sums[2].item(), 1),
                "train_samples": int(sums[2].item()),
                "test_loss": test["loss"],
                "test_accuracy": test["accuracy"],
                "best_test_accuracy": best,
                "epoch_seconds": time.time() - epoch_start,
                "train_seconds": train_time,
            }
            if ctx.is_main:
                logger.log(record)
                scalars.log(
                    epoch + 1,
                    {
                        "loss": record["train_loss"],
                        "accuracy": record["train_accuracy"],
                        "lr": optimizer.param_groups[0]["lr"],
                    },
                    prefix="train",
                )
                scalars.log(
                    epoch + 1, {"loss": test["loss"], "accuracy": test["accuracy"]}, prefix="test"
                )
                _save(
                    ckpt_path,
                    net,
                    optimizer,
                    recipe,
                    epoch=epoch + 1,
                    step=0,
                    history_len=len(logger.history),
                    best=best,
                    seed=seed,
                )
                if progress:
                    tqdm.write(
                        f"epoch {epoch + 1}: train loss {record['train_loss']:.4f} "
                        f"acc {record['train_accuracy']:.4f} | test acc {test['accuracy']:.4f}"
                    )
    finally:
        scalars.close()
    summary = {
        "model": recipe.model,
        "dataset": recipe.dataset,
        "seed": seed,
        "epochs": recipe.epochs,
        "final_test_accuracy": logger.history[-1]["test_accuracy"] if logger.history else None,
        "best_test_accuracy": best,
        "run_dir": str(run.path),
        "wall_seconds_this_session": time.time() - started,
        "train_samples": len(train_idx),
        "test_samples": len(test_idx),
        "world_size": ctx.world_size,
        "algorithm": recipe.algorithm,
        "backend_requested": recipe.backend,
        "backend": backend_ran(net, planned_backend),
    }
    run.write_summary(summary)
    shutdown(ctx)
    return summary


def load_run(run_dir=None, *, recipe: TSSLBPRecipe | None = None, overrides=(), state=None):
    """(recipe, network, (train, test)) of a run folder's checkpoint: `load_network` and the
    recipe's datasets."""
    recipe, net = load_network(run_dir, recipe=recipe, overrides=overrides, state=state)
    return recipe, net, _load_data(recipe, recipe.data_root)


def load_network(run_dir=None, *, recipe: TSSLBPRecipe | None = None, overrides=(), state=None):
    """(recipe, network) of a run folder's checkpoint: its saved recipe with `overrides`, or
    `recipe` (which must be for the same model); without `run_dir` the network of `recipe` as
    initialised. With `run_dir`, the recipe's seed is the run's (it picks the seeded test subset
    the run evaluated on). `state`: the checkpoint, if the caller has read it. A checkpoint that
    does not fit the network is a ConfigError naming the folder."""
    from efficientdl.core.config import apply_overrides, from_dict

    if state is None and run_dir is not None:
        state = load_checkpoint(Path(run_dir) / CHECKPOINT)
    if recipe is None:
        recipe = from_dict(TSSLBPRecipe, apply_overrides(state["recipe"], overrides))
    recipe.validate()
    if state is not None:
        if state["recipe"]["model"] != recipe.model:
            raise ConfigError(
                f"the recipe is for model {recipe.model!r} but {run_dir} holds a "
                f"{state['recipe']['model']!r} checkpoint"
            )
        recipe = dataclasses.replace(recipe, seed=int(state["seed"]))
    net = build_network(recipe)
    if state is not None:
        try:
            net.load_state_dict(state["model"])
        except RuntimeError as err:
            why = " ".join(str(err).split())
            why = why if len(why) <= 240 else why[:237] + "..."
            raise ConfigError(
                f"the {recipe.model} network of this recipe does not match the checkpoint in "
                f"{run_dir}: {why}"
            ) from None
        log.info("loaded %s (epoch %d)", Path(run_dir) / CHECKPOINT, state["epoch"])
    return recipe, net


def eval_indices(recipe: TSSLBPRecipe, test_set) -> torch.Tensor:
    """The seeded test subset a run of `recipe` evaluates on (all of `test_set` without one)."""
    return _subset(len(test_set), recipe.test_subset, recipe.seed + 1)
