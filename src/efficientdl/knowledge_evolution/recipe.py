"""The KE training recipe of the paper: config, schedule, losses, and a resumable train function
(also under torchrun: see `knowledge_evolution.distributed`)."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Literal

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from efficientdl.core import (
    ConfigError,
    LossGuard,
    MetricsLogger,
    derive_seed,
    load_checkpoint,
    rng_state,
    save_checkpoint,
)
from efficientdl.core import set_rng_state as restore_rng
from efficientdl.core.distributed import all_reduce_gradients, current_context
from efficientdl.core.log import get_logger
from efficientdl.data.subsets import random_shift
from efficientdl.knowledge_evolution.distributed import shard_loss, synced_batchnorm

TRAIN_CHECKPOINT = "train.pt"

log = get_logger("ke")


@dataclass
class KEConfig:
    """One KE experiment (YAML + `--set key=value`). `recipe='paper'` is the official recipe
    (E=200 epochs per generation, G=10 generations); `recipe='small'` the small-data preset
    (G=5, E so that a generation is ≈`steps_per_generation` SGD steps). `arm`: 'ke' (G
    generations with re-init), 'long' (the compute-matched baseline: one run of G·E epochs),
    'restarts' (G × E with LR restarts and a fresh optimizer but no re-init: split rate 1)."""

    name: str = "ke"
    recipe: Literal["paper", "small"] = "paper"
    arm: Literal["ke", "long", "restarts"] = "ke"
    dataset: str = "digits"
    data_root: str | None = None
    per_class: int | None = None
    model: str = "small_cnn"
    stem: Literal["imagenet", "cifar"] = "cifar"
    in_channels: int | None = None
    width: int | None = None
    split_rate: float = 0.5
    scheme: Literal["kels", "wels"] = "kels"
    wels_sampling: Literal["exact", "bernoulli"] = "exact"
    channel_multiple: int = 1
    reset_init: Literal["default", "kaiming_normal", "zero"] = "default"
    reset_bn: bool = False
    reset_hypothesis: bool = False
    generations: int | None = None
    epochs: int | None = None
    steps_per_generation: int = 1000
    batch_size: int = 32
    lr: float = 0.256
    momentum: float = 0.9
    weight_decay: float = 1e-4
    warmup_epochs: int = 5
    label_smoothing: float = 0.1
    cskd: bool = False
    cskd_temperature: float = 4.0
    cskd_weight: float = 3.0
    crop_padding: int = 2
    seed: int = 0
    device: str = "auto"
    threads: int | None = None
    eval_batch_size: int = 1000
    probe_size: int = 256
    checkpoint_seconds: float = 30.0
    val_every: int = 10
    keep: int | None = None
    out_dir: str = "runs/ke"
    progress: bool = True

    def validate(self) -> KEConfig:
        """Range checks; errors name the key and the bad value."""
        positive = ("batch_size", "steps_per_generation", "eval_batch_size", "channel_multiple",
                    "val_every")  # fmt: skip
        for key in positive + ("generations", "epochs", "per_class", "keep", "threads", "width"):
            value = getattr(self, key)
            if value is not None and value < 1:
                raise ConfigError(f"config key '{key}' must be ≥ 1, got {value!r}")
        if not 0 < self.split_rate <= 1:
            raise ConfigError(f"config key 'split_rate' must be in (0, 1], got {self.split_rate}")
        for key in ("lr", "weight_decay", "momentum", "label_smoothing", "warmup_epochs",
                    "crop_padding", "probe_size", "checkpoint_seconds"):  # fmt: skip
            if getattr(self, key) < 0:
                raise ConfigError(f"config key '{key}' must be ≥ 0, got {getattr(self, key)!r}")
        return self

    def resolved_generations(self) -> int:
        """G: the configured value, else 10 (paper) or 5 (small)."""
        if self.generations is not None:
            return self.generations
        return 10 if self.recipe == "paper" else 5

    def resolved_epochs(self, n_train: int) -> int:
        """E: the configured value, else 200 (paper) or ceil(steps / ceil(n_train/batch))."""
        if self.epochs is not None:
            return self.epochs
        if self.recipe == "paper":
            return 200
        return math.ceil(self.steps_per_generation / math.ceil(n_train / self.batch_size))


def lr_at(epoch: int, *, epochs: int, lr: float, warmup: int = 5) -> float:
    """Per-epoch LR of the official recipe, restarted every generation: η·(e+1)/W for e < W, then
    ½(1 + cos(π(e − W)/(E − W)))·η."""
    if epoch < warmup:
        return lr * (epoch + 1) / warmup
    return 0.5 * (1.0 + math.cos(math.pi * (epoch - warmup) / max(1, epochs - warmup))) * lr


def cskd_loss(
    logits: torch.Tensor,
    partner_logits: torch.Tensor,
    labels: torch.Tensor,
    *,
    temperature: float = 4.0,
    weight: float = 3.0,
    label_smoothing: float = 0.0,
) -> torch.Tensor:
    """Class-wise self-knowledge distillation (Yun et al. 2020, the paper's CS-KD variant):
    CE(z, y) + λ·T²·Σ_k q_k(log q_k − log p_k)/B with p = softmax(z/T), q = softmax(z'/T) and the
    partner logits z' treated as constants."""
    ce = F.cross_entropy(logits, labels, label_smoothing=label_smoothing)
    log_p = F.log_softmax(logits / temperature, dim=1)
    log_q = F.log_softmax(partner_logits.detach() / temperature, dim=1)
    kl = (log_q.exp() * (log_q - log_p)).sum() / logits.shape[0]
    return ce + weight * temperature**2 * kl


def class_partners(
    labels: torch.Tensor, indices: torch.Tensor, generator: torch.Generator | None = None
) -> torch.Tensor:
    """For each dataset index in `indices`, another index of the same class drawn uniformly
    (itself only if its class has a single sample)."""
    labels = torch.as_tensor(labels)
    out = torch.empty_like(indices)
    for k, i in enumerate(indices.tolist()):
        pool = (labels == labels[i]).nonzero().flatten()
        if len(pool) == 1:
            out[k] = i
            continue
        r = int(torch.randint(0, len(pool) - 1, (1,), generator=generator))
        own = int((pool == i).nonzero()[0])
        out[k] = pool[r + 1 if r >= own else r]
    return out


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

    def _loss(self, model, x, y, idx, gen, mine) -> tuple[torch.Tensor, torch.Tensor]:
        """(this shard's mean loss, its logits); `mine` selects the shard of the global batch
        (everything random is drawn for the whole batch first)."""
        cfg = self.config
        partner_x = None
        if cfg.cskd:
            partners = class_partners(self.train_set.labels, idx, gen)
            partner_x = self._inputs(partners, gen)[mine]
        logits = model(x)
        if partner_x is None:
            if len(y) == 0:
                return logits.sum() * 0.0, logits
            return F.cross_entropy(logits, y, label_smoothing=cfg.label_smoothing), logits
        with torch.no_grad():
            partner_logits = model(partner_x)
        if len(y) == 0:
            return logits.sum() * 0.0, logits
        loss = cskd_loss(logits, partner_logits, y, temperature=cfg.cskd_temperature,
                         weight=cfg.cskd_weight, label_smoothing=cfg.label_smoothing)  # fmt: skip
        return loss, logits

    def _inputs(self, idx, gen) -> torch.Tensor:
        x, _ = self.train_set.get_batch(idx)
        x = random_shift(x, gen, padding=self.config.crop_padding, fill=self.fill)
        return x.to(self.device)

    def __call__(self, model: nn.Module, ctx) -> dict:
        dist_ctx = current_context()
        with synced_batchnorm(model, dist_ctx):
            return self._train(model, ctx, dist_ctx)

    def _train(self, model: nn.Module, ctx, dist_ctx) -> dict:
        cfg = self.config
        main = dist_ctx.is_main
        optimizer = make_optimizer(model, cfg)
        path = ctx.dir / TRAIN_CHECKPOINT if ctx.dir is not None else None
        logger = MetricsLogger(ctx.dir, enabled=main) if ctx.dir else None
        start = 0
        if path is not None and path.exists():
            state = load_checkpoint(path, map_location=self.device)
            model.load_state_dict(state["model"])
            optimizer.load_state_dict(state["optimizer"])
            restore_rng(state["rng"])
            start = state["epoch"]
            logger.truncate(start)
            log.info("generation %d resumes after epoch %d of %d", ctx.index, start, self.epochs)
        last_save = time.monotonic()
        n = len(self.train_set)
        mine = slice(dist_ctx.rank, None, dist_ctx.world_size)
        record: dict = {}
        bar = tqdm(range(start, self.epochs), desc=f"generation {ctx.index}/{ctx.generations}",
                   leave=False, disable=not (cfg.progress and main))  # fmt: skip
        for epoch in bar:
            lr = lr_at(epoch, epochs=self.epochs, lr=cfg.lr, warmup=cfg.warmup_epochs)
            for group in optimizer.param_groups:
                group["lr"] = lr
            gen = epoch_generator(ctx.seed, epoch)
            model.train()
            sums = torch.zeros(3, dtype=torch.float64)
            batches = _batches(n, cfg.batch_size, torch.randperm(n, generator=gen))
            for step, idx in enumerate(batches):
                x = self._inputs(idx, gen)[mine]
                y = self.train_set.labels[idx][mine].to(self.device)
                loss, logits = self._loss(model, x, y, idx, gen, mine)
                optimizer.zero_grad(set_to_none=True)
                shard_loss(loss, logits, len(y), len(idx)).backward()
                all_reduce_gradients(list(model.parameters()), dist_ctx, average=False)
                batch = torch.tensor([loss.item() * len(y), (logits.argmax(1) == y).sum().item(),
                                      len(y)], dtype=torch.float64)  # fmt: skip
                if dist_ctx.enabled:  # the global batch's loss: every rank stops alike
                    batch = batch.to(self.device)  # NCCL reduces device tensors only
                    dist.all_reduce(batch)
                    batch = batch.cpu()
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
            if self.on_epoch is not None:
                self.on_epoch(ctx, record)
            if logger is not None:
                logger.log(record)
                due = time.monotonic() - last_save >= cfg.checkpoint_seconds
                if main and (due or epoch + 1 == self.epochs):
                    save_checkpoint(path, {"model": model.state_dict(), "epoch": epoch + 1,
                                           "optimizer": optimizer.state_dict(),
                                           "rng": rng_state()})  # fmt: skip
                    last_save = time.monotonic()
        if not record and logger is not None and logger.history:
            record = logger.history[-1]
        return {**record, "epochs": self.epochs}


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


def accuracy_fn(test_set, *, device, batch_size: int = 1000):
    """The driver's `eval_fn`: top-1 accuracy and mean cross-entropy on `test_set`."""
    device = torch.device(device)

    def evaluate(model: nn.Module) -> dict[str, float]:
        correct, loss = 0, 0.0
        for idx in torch.arange(len(test_set)).split(batch_size):
            x, y = test_set.get_batch(idx)
            x, y = x.to(device), y.to(device)
            logits = model(x)
            correct += int((logits.argmax(1) == y).sum())
            loss += float(F.cross_entropy(logits, y, reduction="sum"))
        return {"accuracy": correct / len(test_set), "loss": loss / len(test_set)}

    return evaluate
