"""The generation driver: re-draw the reset hypothesis, train, evaluate, checkpoint, resume."""

from __future__ import annotations

import hashlib
import json
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from efficientdl.core import (
    ConfigError,
    RunFolderError,
    derive_seed,
    load_checkpoint,
    rng_state,
    save_checkpoint,
    set_rng_state,
)
from efficientdl.core.distributed import barrier, current_context
from efficientdl.core.log import get_logger
from efficientdl.core.run import write_json_atomic
from efficientdl.knowledge_evolution.masks import Masks, check_masks, is_kernel_level
from efficientdl.knowledge_evolution.reinit import INITS, masked_copy, reinitialize
from efficientdl.knowledge_evolution.report import plot_generations, write_history
from efficientdl.knowledge_evolution.slim import extract_slim

STREAMS = ("reinit", "train", "mask")
_RESUME_FREE = ("generations", "keep", "version", "model_class")

log = get_logger("ke")


def stream_seed(seed: int, generation: int, stream: str) -> int:
    """63-bit seed from SHA-256 of f"{seed}:{generation}:{stream}" (streams reinit/train/mask):
    `core.derive_seed(seed, generation, stream)`."""
    if stream not in STREAMS:
        raise ValueError(f"unknown stream {stream!r}; expected one of {STREAMS}")
    return derive_seed(seed, generation, stream)


def masks_digest(masks: Masks) -> str:
    """SHA-256 over the mask names, shapes and values (stored in ke.json to guard resumes)."""
    h = hashlib.sha256()
    for key, mask in masks.items():
        h.update(f"{key}:{tuple(mask.shape)};".encode())
        h.update(mask.cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


@dataclass
class GenerationContext:
    """What `train_fn(model, ctx)` gets: the 1-based generation `index`, the total
    `generations`, the train-stream `seed` and a `generator` seeded with it, the `masks`, and
    `dir`, this generation's folder for the train function's own checkpoints (None in memory)."""

    index: int
    generations: int
    seed: int
    generator: torch.Generator
    masks: Masks
    dir: Path | None


def _is_main() -> bool:
    return not (dist.is_available() and dist.is_initialized()) or dist.get_rank() == 0


def _count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


class KnowledgeEvolution:
    """Train `model` for `generations` generations with fixed fit/reset `masks`.

    Generation 1 trains the model as given. Generation g ≥ 2 re-draws the reset hypothesis
    (`reinitialize` with the derived 'reinit' stream; fit weights bit-exact), clears gradients and
    trains the whole dense net again from the previous last-epoch weights. After each generation
    `eval_fn` runs on the dense net, the fit net (KELS: the slim net of `extract_slim`; otherwise
    `masked_copy(part='fit')`) and the reset net (`masked_copy(part='reset')`). With `run_dir`
    every step is checkpointed atomically and `run()` resumes a killed run bit-exactly.
    `on_generation(record)`, if given, sees each generation's history record as it is made.
    Under torchrun every rank runs the driver (identical evaluations) and only rank 0 writes.
    """

    def __init__(
        self,
        model: nn.Module,
        masks: Masks,
        *,
        train_fn: Callable[[nn.Module, GenerationContext], dict | None],
        eval_fn: Callable[[nn.Module], dict[str, float]],
        generations: int = 10,
        run_dir: str | Path | None = None,
        init: str = "default",
        seed: int = 0,
        reset_bn: bool = False,
        reset_hypothesis: bool = False,
        probe: torch.Tensor | None = None,
        eval_fit: bool = True,
        eval_reset: bool = True,
        keep: str | int = "all",
        on_generation: Callable[[dict[str, Any]], None] | None = None,
    ) -> None:
        check_masks(model, masks)
        if not isinstance(generations, int) or generations < 1:
            raise ConfigError(f"generations must be a positive int, got {generations!r}")
        if init not in INITS:
            raise ConfigError(f"unknown init {init!r}; expected one of {INITS}")
        if keep != "all" and (not isinstance(keep, int) or keep < 1):
            raise ConfigError(f"keep must be 'all' or a positive int, got {keep!r}")
        self.kels = is_kernel_level(masks)
        all_true = all(bool(m.all()) for m in masks.values())
        if reset_hypothesis and self.kels and not all_true:
            raise ConfigError(
                "reset_hypothesis=True re-draws WELS masks; KELS prefix masks would not change "
                "(random channel subsets are not supported)"
            )
        if reset_bn and not self.kels:
            raise ConfigError("reset_bn=True needs kernel-level (KELS) masks")
        self.model, self.masks = model, dict(masks)
        self.train_fn, self.eval_fn = train_fn, eval_fn
        self.generations, self.seed, self.keep = generations, seed, keep
        self.init, self.reset_bn, self.reset_hypothesis = init, reset_bn, reset_hypothesis
        self.probe, self.eval_fit, self.eval_reset = probe, eval_fit, eval_reset
        self.run_dir = Path(run_dir) if run_dir is not None else None
        self.on_generation = on_generation
        self.history: list[dict[str, Any]] = []

    def config(self) -> dict[str, Any]:
        """What ke.json records (and a resume must match, except generations and keep)."""
        from efficientdl import __version__

        return {
            "generations": self.generations,
            "init": self.init,
            "seed": self.seed,
            "reset_bn": self.reset_bn,
            "reset_hypothesis": self.reset_hypothesis,
            "eval_fit": self.eval_fit,
            "eval_reset": self.eval_reset,
            "keep": self.keep,
            "scheme": "kels" if self.kels else "masked",
            "masks_sha256": masks_digest(self.masks),
            "model_class": type(self.model).__name__,
            "version": __version__,
        }

    def _gen_dir(self, g: int) -> Path | None:
        return self.run_dir / f"gen_{g:02d}" if self.run_dir is not None else None

    def _save(self, path: Path, **extra) -> None:
        if not _is_main():
            return
        state = {"model": self.model.state_dict(), "history": self.history, "rng": rng_state()}
        if self.reset_hypothesis:
            state["masks"] = self.masks
        save_checkpoint(path, {**state, **extra})

    def _load(self, path: Path) -> dict[str, Any]:
        device = next(self.model.parameters()).device
        state = load_checkpoint(path, map_location=device)
        self.model.load_state_dict(state["model"])
        self.history = state["history"]
        set_rng_state(state["rng"])
        if "masks" in state:
            self.masks = {k: v.cpu() for k, v in state["masks"].items()}
        return state

    def _start(self) -> tuple[int, dict[str, Any] | None]:
        """(first generation to run, its loaded start.pt state or None); checks, then (rank 0)
        writes ke.json and masks.pt. Every rank reads the folder before rank 0 writes to it."""
        if self.run_dir is None:
            return 1, None
        config = self.config()
        meta = self.run_dir / "ke.json"
        if meta.exists():
            saved = json.loads(meta.read_text())
            for key in sorted(set(saved) | set(config)):
                if key not in _RESUME_FREE and saved.get(key) != config.get(key):
                    raise RunFolderError(
                        f"cannot resume {self.run_dir}: '{key}' was {saved.get(key)!r}, now "
                        f"{config.get(key)!r}"
                    )
        done = [int(p.parent.name[4:]) for p in self.run_dir.glob("gen_*/final.pt")]
        first = 1
        if done:
            self._load(self._gen_dir(max(done)) / "final.pt")
            first = max(done) + 1
        start = self._gen_dir(first) / "start.pt"
        started = self._load(start) if start.exists() else None
        if done or started is not None:
            log.info("resuming %s at generation %d", self.run_dir, first)
        barrier(current_context())
        if _is_main():
            self.run_dir.mkdir(parents=True, exist_ok=True)
            write_json_atomic(meta, config)
            if not (self.run_dir / "masks.pt").exists():
                save_checkpoint(self.run_dir / "masks.pt", self.masks)
        return first, started

    def run(self) -> list[dict[str, Any]]:
        """Run (or resume) every generation; returns the per-generation history."""
        first, started = self._start()
        for g in range(first, self.generations + 1):
            gen_dir = self._gen_dir(g)
            if started is None:
                reinit_seconds = self._reinit(g)
                if gen_dir is not None:
                    self._save(gen_dir / "start.pt", reinit_seconds=reinit_seconds)
            else:
                reinit_seconds = started["reinit_seconds"]
            started = None
            generator = torch.Generator().manual_seed(stream_seed(self.seed, g, "train"))
            ctx = GenerationContext(
                g, self.generations, stream_seed(self.seed, g, "train"), generator, self.masks,
                gen_dir,
            )  # fmt: skip
            if gen_dir is not None and _is_main():
                gen_dir.mkdir(parents=True, exist_ok=True)
            t0 = time.perf_counter()
            out = self.train_fn(self.model, ctx)
            train_seconds = time.perf_counter() - t0
            record = {"generation": g, "seed": ctx.seed, **self._evaluate()}
            record.update(reinit_seconds=reinit_seconds, train_seconds=train_seconds)
            record["train"] = dict(out or {})
            self.history.append(record)
            if self.on_generation is not None:
                self.on_generation(record)
            if gen_dir is not None and _is_main():
                self._save(gen_dir / "final.pt")
                write_history(self.run_dir, self.history)
                plot_generations(self.history, self.run_dir / "generations.png")
                self._prune(g)
        return self.history

    def _reinit(self, g: int) -> float:
        t0 = time.perf_counter()
        if g >= 2:
            if self.reset_hypothesis:
                gen = torch.Generator().manual_seed(stream_seed(self.seed, g, "mask"))
                self.masks = {
                    k: m.flatten()[torch.randperm(m.numel(), generator=gen)].view(m.shape)
                    for k, m in self.masks.items()
                }
            gen = torch.Generator().manual_seed(stream_seed(self.seed, g, "reinit"))
            reinitialize(self.model, self.masks, init=self.init, generator=gen,
                         reset_bn=self.reset_bn)  # fmt: skip
        self.model.zero_grad(set_to_none=True)
        return time.perf_counter() - t0

    def _eval(self, net: nn.Module) -> dict[str, float]:
        mode = net.training
        net.eval()
        try:
            with torch.no_grad():
                return {k: float(v) for k, v in self.eval_fn(net).items()}
        finally:
            net.train(mode)

    def _evaluate(self) -> dict[str, Any]:
        model, masks = self.model, self.masks
        fit = extract_slim(model, masks) if self.kels else masked_copy(model, masks, part="fit")
        reset_entries = sum(int((~m).sum()) for m in masks.values())
        record: dict[str, Any] = {"dense": self._eval(model)}
        if self.eval_fit:
            record["fit"] = self._eval(fit)
        if self.eval_reset:
            record["reset"] = self._eval(masked_copy(model, masks, part="reset"))
        record["params"] = {
            "dense": _count(model),
            "fit": _count(fit) if self.kels else _count(model) - reset_entries,
        }
        params = dict(model.named_parameters())
        sums = {"fit": [0.0, 0], "reset": [0.0, 0]}
        for key, mask in masks.items():
            w = params[key].detach().abs().cpu().double()
            for part, sel in (("fit", mask), ("reset", ~mask)):
                sums[part][0] += float(w[sel].sum())
                sums[part][1] += int(sel.sum())
        record["weight_abs_mean"] = {k: s / n if n else 0.0 for k, (s, n) in sums.items()}
        if self.probe is not None:
            record.update(self._probe(fit))
        return record

    def _probe(self, fit: nn.Module) -> dict[str, float]:
        device = next(self.model.parameters()).device
        x = self.probe.to(device)
        modes = (self.model.training, fit.training)
        self.model.eval()
        fit.eval()
        try:
            with torch.no_grad():
                dense_out, fit_out = self.model(x).float(), fit(x).float()
        finally:
            self.model.train(modes[0])
            fit.train(modes[1])
        effect = (dense_out - fit_out).norm() / dense_out.norm().clamp_min(1e-12)
        agree = (dense_out.argmax(1) == fit_out.argmax(1)).float().mean()
        return {"reset_effect": float(effect), "fit_agreement": float(agree)}

    def _prune(self, g: int) -> None:
        if self.keep == "all":
            return
        old = g - self.keep
        if old >= 2 and self._gen_dir(old).exists():
            shutil.rmtree(self._gen_dir(old))


def evolve(model: nn.Module, masks: Masks, **options) -> list[dict[str, Any]]:
    """`KnowledgeEvolution(model, masks, **options).run()`."""
    return KnowledgeEvolution(model, masks, **options).run()
