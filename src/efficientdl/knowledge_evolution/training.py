"""The resumable training loop of the KE recipe: E epochs of SGD per generation with the
warm-up + cosine schedule, label-smoothed cross-entropy or CS-KD, random-shift crops, per-epoch
metrics and atomic checkpoints (also under torchrun: see `knowledge_evolution.distributed`)."""

from __future__ import annotations

import time

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from efficientdl.core import (
    LossGuard,
    MetricsLogger,
    derive_seed,
    load_checkpoint,
    rng_state,
    save_checkpoint,
)
from efficientdl.core import set_rng_state as restore_rng
from efficientdl.core.distributed import DistContext, all_reduce_gradients, current_context
from efficientdl.core.log import get_logger
from efficientdl.data.subsets import random_shift
from efficientdl.knowledge_evolution.config import KEConfig
from efficientdl.knowledge_evolution.distributed import shard_loss, synced_batchnorm
from efficientdl.knowledge_evolution.evaluation import accuracy_fn
from efficientdl.knowledge_evolution.losses import class_partners, cskd_loss
from efficientdl.knowledge_evolution.schedule import lr_at

TRAIN_CHECKPOINT = "train.pt"

log = get_logger("ke")


def make_optimizer(model: nn.Module, config: KEConfig) -> torch.optim.SGD:
    """SGD, momentum 0.9, no Nesterov, weight decay on all parameters (BN and biases too)."""
    return torch.optim.SGD(
        model.parameters(), lr=config.lr, momentum=config.momentum,
        weight_decay=config.weight_decay, nesterov=False,
    )  # fmt: skip


def epoch_generator(seed: int, epoch: int) -> torch.Generator:
    """The generator for one epoch's order, crops and CS-KD partners (`derive_seed`)."""
    return torch.Generator().manual_seed(derive_seed(seed, "epoch", epoch))


def _batches(n: int, batch_size: int, perm: torch.Tensor) -> list[torch.Tensor]:
    """Shuffled batches; the last partial one is kept unless it holds a single sample."""
    batches = list(perm.split(batch_size))
    return batches[:-1] if n > 1 and len(batches[-1]) == 1 else batches


class RecipeTrainer:
    """`train_fn(model, ctx)` for the driver: E epochs of the recipe with a fresh SGD and a
    warm-up + cosine LR schedule from epoch 0, atomic checkpoints in `ctx.dir` (every
    `checkpoint_seconds`, and after the last epoch) and per-epoch metrics (metrics.csv); with a
    `val_set`, its accuracy every `val_every` epochs and after the last.

    Every batch's training loss (the global batch's under torchrun) goes through one
    `LossGuard('ke')` (per trainer, i.e. per run session) before the update is applied, so a
    diverging run stops with `DivergenceError` naming the generation, epoch and step, and the
    last good checkpoint (of an earlier epoch) is kept.
    `on_epoch(ctx, record)`, if given, sees every epoch's record (TensorBoard scalars).

    Under torchrun (an initialised process group) each rank trains on its shard of every global
    batch, with global-batch BatchNorm statistics and summed gradients, so that the update is the
    one a single process makes on the global batch (`knowledge_evolution.distributed`); only rank
    0 writes checkpoints and metrics."""

    def __init__(
        self, config: KEConfig, train_set, *, epochs: int, device, val_set=None, on_epoch=None
    ) -> None:
        self.config, self.train_set, self.epochs = config, train_set, epochs
        self.val_fn = accuracy_fn(val_set, device=device) if val_set is not None else None
        self.device = torch.device(device)
        self.fill = float(train_set.images.min())
        self.guard = LossGuard("ke")
        self.on_epoch = on_epoch

    def __call__(self, model: nn.Module, ctx) -> dict:
        dist_ctx = current_context()
        with synced_batchnorm(model, dist_ctx):
            return self._train(model, ctx, dist_ctx)

    def _train(self, model: nn.Module, ctx, dist_ctx: DistContext) -> dict:
        """Epochs from the last checkpoint (or 0) to E; the last epoch's record."""
        cfg = self.config
        optimizer = make_optimizer(model, cfg)
        logger = MetricsLogger(ctx.dir, enabled=dist_ctx.is_main) if ctx.dir else None
        start = self._resume(model, optimizer, ctx, logger)
        last_save = time.monotonic()
        record: dict = {}
        bar = tqdm(range(start, self.epochs), desc=f"generation {ctx.index}/{ctx.generations}",
                   leave=False, disable=not (cfg.progress and dist_ctx.is_main))  # fmt: skip
        for epoch in bar:
            record = self._epoch(model, optimizer, ctx, epoch, dist_ctx)
            if self.on_epoch is not None:
                self.on_epoch(ctx, record)
            if logger is not None:
                logger.log(record)
                due = time.monotonic() - last_save >= cfg.checkpoint_seconds
                if dist_ctx.is_main and (due or epoch + 1 == self.epochs):
                    save_checkpoint(ctx.dir / TRAIN_CHECKPOINT,
                                    {"model": model.state_dict(), "epoch": epoch + 1,
                                     "optimizer": optimizer.state_dict(),
                                     "rng": rng_state()})  # fmt: skip
                    last_save = time.monotonic()
        if not record and logger is not None and logger.history:
            record = logger.history[-1]
        return {**record, "epochs": self.epochs}

    def _resume(self, model: nn.Module, optimizer, ctx, logger: MetricsLogger | None) -> int:
        """The number of epochs already done: model, optimizer and RNG state restored from the
        generation's checkpoint and the metrics cut back to it, or 0 when there is none."""
        path = ctx.dir / TRAIN_CHECKPOINT if ctx.dir is not None else None
        if path is None or not path.exists():
            return 0
        state = load_checkpoint(path, map_location=self.device)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        restore_rng(state["rng"])
        start = state["epoch"]
        logger.truncate(start)
        log.info("generation %d resumes after epoch %d of %d", ctx.index, start, self.epochs)
        return start

    def _epoch(self, model: nn.Module, optimizer, ctx, epoch: int, dist_ctx: DistContext) -> dict:
        """One epoch at the schedule's LR; its record (LR, train loss and accuracy, and the
        validation accuracy when due)."""
        cfg = self.config
        lr = lr_at(epoch, epochs=self.epochs, lr=cfg.lr, warmup=cfg.warmup_epochs)
        for group in optimizer.param_groups:
            group["lr"] = lr
        gen = epoch_generator(ctx.seed, epoch)
        model.train()
        sums = torch.zeros(3, dtype=torch.float64)
        n = len(self.train_set)
        for step, idx in enumerate(_batches(n, cfg.batch_size, torch.randperm(n, generator=gen))):
            batch = self._gradients(model, optimizer, idx, gen, dist_ctx)
            self.guard.check((batch[0] / batch[2]).item(), generation=ctx.index,
                             epoch=epoch + 1, step=step + 1)  # fmt: skip
            optimizer.step()
            sums += batch
        record = {"epoch": epoch + 1, "lr": lr, "train_loss": (sums[0] / sums[2]).item(),
                  "train_accuracy": (sums[1] / sums[2]).item()}  # fmt: skip
        if self.val_fn is not None and ((epoch + 1) % cfg.val_every == 0
                                          or epoch + 1 == self.epochs):  # fmt: skip
            model.eval()
            with torch.no_grad():
                record["val_accuracy"] = self.val_fn(model)["accuracy"]
        return record

    def _gradients(self, model: nn.Module, optimizer, idx, gen, dist_ctx: DistContext):
        """This rank's gradients of the global batch `idx` (summed over the ranks), and the
        global batch's [loss sum, correct, count] as float64 (the same on every rank, so every
        rank stops alike)."""
        mine = slice(dist_ctx.rank, None, dist_ctx.world_size)
        x = self._inputs(idx, gen)[mine]
        y = self.train_set.labels[idx][mine].to(self.device)
        loss, logits = self._loss(model, x, y, idx, gen, mine)
        optimizer.zero_grad(set_to_none=True)
        shard_loss(loss, logits, len(y), len(idx)).backward()
        all_reduce_gradients(list(model.parameters()), dist_ctx, average=False)
        batch = torch.tensor([loss.item() * len(y), (logits.argmax(1) == y).sum().item(), len(y)],
                             dtype=torch.float64)  # fmt: skip
        if dist_ctx.enabled:
            batch = batch.to(self.device)  # NCCL reduces device tensors only
            dist.all_reduce(batch)
            batch = batch.cpu()
        return batch

    def _loss(self, model, x, y, idx, gen, mine) -> tuple[torch.Tensor, torch.Tensor]:
        """(this shard's mean loss, its logits); `mine` selects the shard of the global batch
        (everything random is drawn for the whole batch first)."""
        cfg = self.config
        if cfg.cskd:
            partner_x = self._inputs(class_partners(self.train_set.labels, idx, gen), gen)[mine]
        logits = model(x)
        partner_logits = None
        if cfg.cskd:
            with torch.no_grad():
                partner_logits = model(partner_x)
        if len(y) == 0:
            return logits.sum() * 0.0, logits
        if partner_logits is None:
            return F.cross_entropy(logits, y, label_smoothing=cfg.label_smoothing), logits
        loss = cskd_loss(logits, partner_logits, y, temperature=cfg.cskd_temperature,
                         weight=cfg.cskd_weight, label_smoothing=cfg.label_smoothing)  # fmt: skip
        return loss, logits

    def _inputs(self, idx, gen) -> torch.Tensor:
        """The images of `idx`, randomly shifted (padding `crop_padding`), on the device."""
        x, _ = self.train_set.get_batch(idx)
        x = random_shift(x, gen, padding=self.config.crop_padding, fill=self.fill)
        return x.to(self.device)


def recipe_train_fn(
    recipe: KEConfig, train_set, *, device, val_set=None, epochs: int | None = None, on_epoch=None
) -> RecipeTrainer:
    """The driver's `train_fn` for the recipe `recipe` on `train_set` (see `RecipeTrainer`);
    `epochs` overrides the recipe's E (the compute-matched arm trains G·E)."""
    recipe.validate()
    epochs = epochs or recipe.resolved_epochs(len(train_set))
    return RecipeTrainer(
        recipe, train_set, epochs=epochs, device=device, val_set=val_set, on_epoch=on_epoch
    )
