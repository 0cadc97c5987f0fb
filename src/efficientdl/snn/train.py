"""TSSL-BP training (spec §5): `train_step`, `evaluate` and the resumable, DDP-aware `fit`."""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import torch
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from efficientdl.core import (
    MetricsLogger,
    init_distributed,
    load_checkpoint,
    make_run_dir,
    rng_state,
    save_checkpoint,
    seed_everything,
    select_device,
    set_rng_state,
    to_dict,
)
from efficientdl.core.distributed import DistContext, all_reduce_sum, shutdown
from efficientdl.snn.losses import count_loss, kernel_loss, predict
from efficientdl.snn.models import TSSLBPRecipe, build
from efficientdl.snn.network import SpikingNetwork

CHECKPOINT = "checkpoint.pt"


def unwrap(model) -> SpikingNetwork:
    """The SpikingNetwork inside a (possibly DDP-wrapped) model."""
    return model.module if isinstance(model, DistributedDataParallel) else model


def make_optimizer(model: torch.nn.Module, recipe: TSSLBPRecipe) -> torch.optim.Optimizer:
    """AdamW(lr, betas (0.9, 0.999), eps 1e-8, decoupled weight decay) on all weights (§5)."""
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
    """One step: zero_grad → forward → loss → backward → clip → AdamW → clamp (§5).

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
    g = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    return indices[torch.randperm(len(indices), generator=g)]


def _batch_generator(seed: int, epoch: int, step: int) -> torch.Generator:
    return torch.Generator().manual_seed((seed * 1_000_003 + epoch) * 1_000_033 + step)


def _load_data(recipe: TSSLBPRecipe, data_root):
    from efficientdl.data import get_dataset

    opts = dict(recipe.data_options)
    if recipe.dataset == "fashion-mnist":
        opts.setdefault("normalize", recipe.normalize)
    if recipe.dataset == "nmnist":
        opts.setdefault("T", recipe.T)
    train = get_dataset(recipe.dataset, "train", root=data_root, **opts)
    test = get_dataset(recipe.dataset, "test", root=data_root, **opts)
    return train, test


def _save(path, net, optimizer, recipe, *, epoch, step, history_len, best, seed, sums=None):
    save_checkpoint(
        path,
        {
            "model": net.state_dict(),
            "optimizer": optimizer.state_dict(),
            "epoch": epoch,
            "step": step,
            "history_len": history_len,
            "best": best,
            "epoch_sums": None if sums is None else sums.cpu(),
            "seed": seed,
            "recipe": to_dict(recipe),
            "rng": rng_state(),
        },
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
) -> dict:
    """Train `recipe` (§5) with per-epoch test evaluation; resumable from `run_dir/checkpoint.pt`.

    Launched under torchrun, each process takes its share of every global batch (DDP, gloo on CPU,
    NCCL on GPU). Returns the summary written to `run_dir/summary.json`.
    """
    recipe.validate()
    seed = recipe.seed if seed is None else seed
    data_root = data_root if data_root is not None else recipe.data_root
    if recipe.threads:
        torch.set_num_threads(recipe.threads)
    device = select_device(recipe.device)
    ctx = init_distributed(device.type)
    if ctx.enabled and device.type == "cuda":
        device = torch.device("cuda", ctx.local_rank)
    run_dir = make_run_dir(recipe.out_dir, recipe.run_name or recipe.model, run_dir=run_dir)
    train_set, test_set = datasets if datasets is not None else _load_data(recipe, data_root)
    train_idx = _subset(len(train_set), recipe.train_subset, seed)
    test_idx = _subset(len(test_set), recipe.test_subset, seed + 1)

    seed_everything(seed)
    net = build(recipe.model, **recipe.model_overrides()).to(device)
    model = DistributedDataParallel(net) if ctx.enabled else net
    optimizer = make_optimizer(net, recipe)
    logger = MetricsLogger(run_dir, enabled=ctx.is_main)
    ckpt_path = Path(run_dir) / CHECKPOINT
    start_epoch, start_step, best, resumed_sums = 0, 0, 0.0, None
    if resume and ckpt_path.exists():
        state = load_checkpoint(ckpt_path, map_location=device)
        net.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        start_epoch, start_step, best = state["epoch"], state["step"], state["best"]
        resumed_sums = state["epoch_sums"]
        set_rng_state(state["rng"])
        logger.truncate(state["history_len"])
    elif ctx.is_main:
        (Path(run_dir) / "config.json").write_text(json.dumps(to_dict(recipe), indent=2))

    started = time.time()
    for epoch in range(start_epoch, recipe.epochs):
        batches = _batches(len(train_idx), recipe.batch_size, _epoch_perm(train_idx, seed, epoch))
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
                _check_finite(snapshot, epoch, step)
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
        _check_finite(sums, epoch, len(batches))
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
    summary = {
        "model": recipe.model,
        "dataset": recipe.dataset,
        "seed": seed,
        "epochs": recipe.epochs,
        "final_test_accuracy": logger.history[-1]["test_accuracy"] if logger.history else None,
        "best_test_accuracy": best,
        "run_dir": str(run_dir),
        "wall_seconds_this_session": time.time() - started,
        "train_samples": len(train_idx),
        "test_samples": len(test_idx),
        "world_size": ctx.world_size,
    }
    if ctx.is_main:
        (Path(run_dir) / "summary.json").write_text(json.dumps(summary, indent=2))
    shutdown(ctx)
    return summary


def _check_finite(sums: torch.Tensor, epoch: int, step: int) -> None:
    """Raise if the summed loss (sums[0]) or gradient norms (sums[3]) are not finite."""
    loss, grad = sums[0].item(), sums[3].item()
    if not (math.isfinite(loss) and math.isfinite(grad)):
        raise FloatingPointError(
            f"training loss became {loss} (gradient norm {grad}) in epoch {epoch + 1} before "
            f"step {step + 1}; lower lr or check the inputs for NaN/inf"
        )


def load_run(run_dir=None, *, recipe: TSSLBPRecipe | None = None, overrides=()):
    """(recipe, network, (train, test)) of a run folder's checkpoint: its saved recipe with
    `overrides`, or `recipe` (which must be for the same model); without `run_dir` the network of
    `recipe` as initialised."""
    from efficientdl.core.config import apply_overrides, from_dict

    state = None if run_dir is None else load_checkpoint(Path(run_dir) / CHECKPOINT)
    if recipe is None:
        recipe = from_dict(TSSLBPRecipe, apply_overrides(state["recipe"], overrides)).validate()
    net = build(recipe.model, **recipe.model_overrides())
    if state is not None:
        if state["recipe"]["model"] != recipe.model:
            raise ValueError(
                f"the recipe is for model {recipe.model!r} but {run_dir} holds a "
                f"{state['recipe']['model']!r} checkpoint"
            )
        net.load_state_dict(state["model"])
    return recipe, net, _load_data(recipe, recipe.data_root)
