"""Policy search: alternating weight (train1) and policy (train2) phases, temperature decay,
curriculum from the last block, validation with hard Bernoulli policies, `latest`/`best`. Every
iteration's loss goes through the run's divergence guard before any checkpoint is written.

Under DDP every rank draws the same gates and policies (generators seeded by the iteration), trains
on its shard of each global batch with averaged gradients, and rank 0 writes the files.

`train.search_method='reinforce'` replaces the Gumbel-softmax relaxation by a score-function
(REINFORCE) estimate on hard Bernoulli policies, an ablation showing why the relaxation is used.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch
from tqdm import tqdm

from efficientdl.adashare.folders import CHECKPOINT, write_json
from efficientdl.adashare.model.policy import Policy
from efficientdl.adashare.objectives.losses import sharing_loss, sparsity_loss
from efficientdl.adashare.objectives.tasks import weighted_loss
from efficientdl.adashare.phases.ddp import shard, synchronise, to_device
from efficientdl.adashare.phases.evaluation import selection_score, validate
from efficientdl.adashare.phases.reference import reference
from efficientdl.adashare.phases.training import check_finite
from efficientdl.adashare.reporting.convergence import plot_select_histogram, select_histogram
from efficientdl.core import (
    ConfigError,
    RunFolderError,
    load_checkpoint,
    rng_state,
    save_checkpoint,
    set_rng_state,
)
from efficientdl.core.log import get_logger
from efficientdl.core.runtime import derive_seed

LATEST, BEST, LOGITS_HISTORY = "latest.pt", "best.pt", "logits_history.json"
SELECT_HISTOGRAM = "select_probs.png"
EVAL_SEED = 4242
log = get_logger("adashare")


def n_unlocked(cycle: int, num_blocks: int, train_cfg) -> int:
    """n = min(L, ⌊c/speed⌋ + 1) with the curriculum, else L."""
    if not train_cfg.curriculum:
        return num_blocks
    return min(num_blocks, cycle // train_cfg.curriculum_speed + 1)


def gate_generator(seed: int, iteration: int) -> torch.Generator:
    """The Gumbel/Bernoulli noise of one iteration (identical on resume and on every rank)."""
    return torch.Generator().manual_seed(derive_seed(seed, "gates", iteration))


def regularisers(model, n: int, train_cfg) -> torch.Tensor:
    """λ_sp·L_sp + λ_sh·L_sh; the depth-weighted sparsity when λ_sh = 0 [code]."""
    t = train_cfg
    total = model.policy_logits.new_zeros(())
    if t.sparsity_weight:
        total = total + t.sparsity_weight * sparsity_loss(
            model.policy_logits,
            n,
            variant=t.reg_variant,
            depth_weighted=t.sharing_weight == 0 and t.reg_variant == "official",
        )
    if t.sharing_weight:
        total = total + t.sharing_weight * sharing_loss(
            model.policy_logits, variant=t.reg_variant, block_weights=t.block_weights
        )
    return total


def bernoulli_policy(model, n: int, generator: torch.Generator) -> tuple[Policy, torch.Tensor]:
    """Hard policy from Bernoulli(α) with curriculum padding, and its log-probability."""
    policy = model.sample_policy(generator=generator).padded(n)
    logp = torch.log_softmax(model.policy_logits, -1)
    chosen = torch.where(policy.execute.to(logp.device), logp[..., 0], logp[..., 1])
    return policy, chosen[:, model.num_blocks - n :].sum()


class Search:
    """The search state machine of the run `ctx`; `run()` continues from `folder/latest.pt`
    when it exists."""

    def __init__(self, ctx, model, folder: Path, reference: dict) -> None:
        self.ctx, self.model, self.folder, self.reference = ctx, model, Path(folder), reference
        cfg = ctx.cfg
        t = cfg.train
        groups = model.parameter_groups()
        self.sgd = torch.optim.SGD(
            [
                {"params": groups["heads"], "lr": t.lr},
                {"params": groups["backbone"], "lr": t.backbone_lr},
            ],
            momentum=0.9,
            weight_decay=t.weight_decay,
        )
        self.adam = torch.optim.Adam(
            groups["policy"], lr=t.policy_lr, weight_decay=t.policy_weight_decay
        )
        self.half1 = ctx.stream("train1", seed=cfg.seed, stream=1)
        self.half2 = ctx.stream("train2", seed=cfg.seed, stream=2)
        self.weight_iters = t.weight_iters or self.half1.batches_per_epoch
        self.policy_iters = t.policy_iters or self.half2.batches_per_epoch
        self.state = {
            "it": t.warmup_iters,
            "cycle": 0,
            "phase": "weight",
            "phase_iter": 0,
            "tau": t.tau0,
            "best_score": -math.inf,
            "validated": False,
            "reinforce_baseline": None,
            "history_len": len(ctx.logger.history),
        }
        self.logits_history: list = []

    @property
    def n(self) -> int:
        return n_unlocked(self.state["cycle"], self.model.num_blocks, self.ctx.cfg.train)

    def _save(self, name: str) -> None:
        self.ctx.on_main(
            save_checkpoint,
            self.folder / name,
            {
                "model": self.model.state_dict(),
                "sgd": self.sgd.state_dict(),
                "adam": self.adam.state_dict(),
                "half1": self.half1.state(),
                "half2": self.half2.state(),
                "state": dict(self.state),
                "rng": rng_state(),
                "logits_history": self.logits_history,
                "reference": self.reference,
            },
        )

    def _load(self) -> None:
        saved = load_checkpoint(self.folder / LATEST, map_location=self.ctx.device)
        self.model.load_state_dict(saved["model"])
        self.sgd.load_state_dict(saved["sgd"])
        self.adam.load_state_dict(saved["adam"])
        self.half1.load_state(saved["half1"])
        self.half2.load_state(saved["half2"])
        self.state, self.logits_history = saved["state"], saved["logits_history"]
        self.reference = saved["reference"]
        set_rng_state(saved["rng"])
        self.ctx.logger.truncate(self.state["history_len"])
        log.info(
            "search: resuming at iteration %d of %d (%s)",
            self.state["it"],
            self.ctx.cfg.train.total_iters,
            self.folder / LATEST,
        )

    def _set_weights_trainable(self, flag: bool) -> None:
        groups = self.model.parameter_groups()
        for p in groups["backbone"] + groups["heads"]:
            p.requires_grad_(flag)

    def _step(self, phase: str) -> float:
        """One weight or policy iteration."""
        ctx, model, t, st = self.ctx, self.model, self.ctx.cfg.train, self.state
        weight = phase == "weight"
        stream = self.half1 if weight else self.half2
        batch = to_device(shard(next(stream), ctx.dist), ctx.device, ctx.cfg.perf.channels_last)
        model.train()
        self._set_weights_trainable(weight)
        gen = gate_generator(ctx.cfg.seed, st["it"])
        optimizer = self.sgd if weight else self.adam
        optimizer.zero_grad(set_to_none=True)
        reinforce = t.search_method == "reinforce"
        if reinforce:
            policy, logp = bernoulli_policy(model, self.n, gen)
            with ctx.autocast(), torch.set_grad_enabled(weight):
                outputs = model(batch["image"], policy, n_unlocked=self.n)
        else:
            gates = model.sample_gates(st["tau"], hard=t.gumbel_hard, generator=gen)
            with ctx.autocast():
                outputs = model(
                    batch["image"], gates.detach() if weight else gates, n_unlocked=self.n
                )
        loss, _ = weighted_loss(outputs, batch, ctx.spec)
        value = check_finite(loss, f"search ({phase})", st["it"] + 1, ctx.dist, ctx.guard)
        if not weight:
            st["last_policy_tau"] = st["tau"]
            if reinforce:
                base = st["reinforce_baseline"]
                base = value if base is None else base
                loss = (value - base) * logp
                d = t.reinforce_baseline_decay
                st["reinforce_baseline"] = d * base + (1 - d) * value
            loss = loss + regularisers(model, self.n, t)
        loss.backward()
        synchronise(model, ctx.dist)
        optimizer.step()
        self._set_weights_trainable(True)
        ctx.emit(
            {
                "phase": f"search_{phase}",
                "iter": st["it"] + 1,
                "half": "train1" if weight else "train2",
                "optimizer": type(optimizer).__name__,
                "lr": optimizer.param_groups[0]["lr"],
                "n_unlocked": self.n,
                "tau": st["tau"],
                "cycle": st["cycle"],
                "loss": value,
            }
        )
        return value

    def _validate(self, train_loss: float) -> None:
        ctx, model, st = self.ctx, self.model, self.state
        gen = torch.Generator().manual_seed(EVAL_SEED)  # common random numbers across validations
        n = self.n
        val = validate(
            ctx,
            lambda x, b: model(x, model.sample_policy(generator=gen), n_unlocked=n),
            ctx.spec,
            model,
        )
        score = selection_score(val, self.reference, ctx.spec)
        probs = model.execution_probs().cpu()
        self.logits_history.append(
            {
                "cycle": st["cycle"],
                "iter": st["it"],
                "tau": st["tau"],
                "n_unlocked": n,
                "alpha": probs.tolist(),
            }
        )
        record = {
            "phase": "search",
            "iter": st["it"],
            "cycle": st["cycle"],
            "tau": st["tau"],
            "n_unlocked": n,
            "train_loss": train_loss,
            "val_score": score,
            "mean_alpha": float(probs.mean()),
        }
        record |= {f"val_{t}_{m}": v for t, ms in val.items() for m, v in ms.items()}
        ctx.logger.log(record)
        ctx.log_scalars(
            st["it"],
            {
                "train_loss": train_loss,
                "val_score": score,
                "tau": st["tau"],
                "n_unlocked": n,
                "lr": self.sgd.param_groups[0]["lr"],
                "backbone_lr": self.sgd.param_groups[1]["lr"],
                "policy_lr": self.adam.param_groups[0]["lr"],
                "val": val,
            },
            "search",
        )
        ctx.log_scalars(
            st["it"],
            {
                task: {f"block_{b}": float(p) for b, p in enumerate(row)}
                for task, row in zip(model.tasks, probs.tolist())
            },
            "policy",
        )
        st["history_len"] = len(ctx.logger.history)
        st["validated"] = True
        if n == model.num_blocks and score > st["best_score"]:
            st["best_score"] = score
            self._save(BEST)
        ctx.on_main(write_json, ctx.run_dir / LOGITS_HISTORY, self.logits_history)

    def run(self) -> dict:
        """Run (or continue) the search until `total_iters`; returns the final state."""
        cfg = self.ctx.cfg
        if (self.folder / LATEST).is_file():
            self._load()
        self.ctx.begin()
        t, st = cfg.train, self.state
        bar = tqdm(
            total=t.total_iters,
            initial=st["it"],
            desc="search",
            leave=False,
            disable=not (cfg.progress and self.ctx.dist.is_main),
        )
        value = math.nan
        while st["it"] < t.total_iters:
            phase = st["phase"]
            value = self._step(phase)
            st["it"] += 1
            st["phase_iter"] += 1
            st["validated"] = False
            bar.update(1)
            boundary = st["phase_iter"] == (
                self.weight_iters if phase == "weight" else self.policy_iters
            )
            if boundary and phase == "weight":
                self._validate(value)
                st["phase"], st["phase_iter"] = "policy", 0
            elif boundary:
                st["tau"] = max(st["tau"] * t.cycle_decay(), t.tau_min)
                st["cycle"] += 1
                st["phase"], st["phase_iter"] = "weight", 0
            if boundary or st["it"] % t.ckpt_every == 0 or st["it"] == t.total_iters:
                if st["it"] == t.total_iters and not st["validated"]:
                    self._validate(value)
                self._save(LATEST)
        bar.close()
        return dict(st)


def search_done(ctx) -> bool:
    """The search ran its `train.total_iters` (search/done.json)."""
    path = ctx.run_dir / "search" / "done.json"
    return path.is_file() and json.loads(path.read_text())["iters"] >= ctx.cfg.train.total_iters


def search(ctx) -> dict:
    """Alternating weight/policy phases until `total_iters`, from the warm-up weights (resumes
    from search/latest.pt; a longer `total_iters` extends a finished search)."""
    folder = ctx.run_dir / "search"
    if (folder / "done.json").is_file():
        done = json.loads((folder / "done.json").read_text())
        if done["iters"] >= ctx.cfg.train.total_iters:
            log.info("search: done (%d iterations), skipped", done["iters"])
            return done
        _check_extendable(ctx, done["iters"])
        log.info(
            "search: extending from %d to %d iterations", done["iters"], ctx.cfg.train.total_iters
        )
    model = ctx.build_model()
    if not (folder / LATEST).is_file() and ctx.cfg.train.warmup_iters > 0:
        warm = load_checkpoint(ctx.run_dir / "warmup" / CHECKPOINT, map_location=ctx.device)
        model.load_state_dict(warm["model"])
    ref = reference(ctx)
    if ref is None:
        raise ConfigError(
            "search needs a selection reference: run warm-up (train.warmup_iters > 0), "
            "the single_task baseline, or set selection_reference"
        )
    folder.mkdir(parents=True, exist_ok=True)
    state = Search(ctx, model, folder, ref).run()
    histogram = select_histogram(model.execution_probs())
    done = {
        "iters": state["it"],
        "cycles": state["cycle"],
        "tau": state["tau"],
        "last_policy_tau": state.get("last_policy_tau"),
        "best_score": state["best_score"],
        "has_best": (folder / BEST).is_file(),
        "select_histogram": histogram,
    }
    log.info(
        "search: %d cycles, last policy phase at tau %s; %.0f%% of the select probabilities "
        "within 0.1 of 0 or 1 (histogram %s, %s)",
        state["cycle"], state.get("last_policy_tau"), 100 * histogram["decided_fraction"],
        histogram["counts"], folder / SELECT_HISTOGRAM,
    )  # fmt: skip
    ctx.on_main(plot_select_histogram, histogram, folder / SELECT_HISTOGRAM)
    ctx.on_main(write_json, folder / "done.json", done)
    return done


def _check_extendable(ctx, searched: int) -> None:
    """A longer `train.total_iters` continues a finished search only while nothing was drawn
    from it (policies, ablations); otherwise the extension cannot be honoured."""
    drawn = sorted((ctx.run_dir / "policies").glob("policy_*.json"))
    if drawn:
        raise RunFolderError(
            f"train.total_iters={ctx.cfg.train.total_iters}: the search in {ctx.run_dir} "
            f"finished at {searched} iterations and policies were already drawn from it "
            f"({ctx.run_dir / 'policies'}); keep total_iters={searched} or start a new run"
        )


def searched_model(ctx):
    """The search model from `best.pt` (or `latest.pt` when n never reached L), and its path."""
    folder = ctx.run_dir / "search"
    path = folder / BEST if (folder / BEST).is_file() else folder / LATEST
    model = ctx.build_model()
    model.load_state_dict(load_checkpoint(path, map_location=ctx.device)["model"])
    return model, str(path)
