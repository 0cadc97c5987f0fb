"""The AdaShare pipeline: its phases in order with their done markers, `pipeline` (everything),
and `AdaShareRun`, the library handle on one run (a context and one method per phase)."""

from __future__ import annotations

from efficientdl.adashare.config import AdaShareConfig
from efficientdl.adashare.model import Policy
from efficientdl.adashare.phases.baselines import baselines_done, run_baseline, run_baselines
from efficientdl.adashare.phases.context import Context, open_context
from efficientdl.adashare.phases.phase import RETRAIN, SAMPLE, SEARCH, SELECT, WARMUP, Phase
from efficientdl.adashare.phases.reference import reference
from efficientdl.adashare.phases.retrain import retrain
from efficientdl.adashare.phases.search import searched_model
from efficientdl.adashare.phases.select import evaluate
from efficientdl.adashare.reporting.results import write_results

EVALUATE = Phase("evaluate", evaluate, lambda ctx: False)  # reads the run; never "done"
BASELINES = Phase("baselines", run_baselines, baselines_done)
PHASES = (WARMUP, SEARCH, SAMPLE, RETRAIN, SELECT, EVALUATE, BASELINES)
"""warm-up → search → sample → retrain → select, then evaluate and the baselines."""


def phase(name: str) -> Phase:
    """The phase called `name`."""
    return next(p for p in PHASES if p.name == name)


def pipeline(ctx: Context) -> dict:
    """Everything: the single-task reference first, then search, sampling, re-training,
    selection, the other baselines and the results table (results.json, summary.json)."""
    if "single_task" in ctx.cfg.baselines:
        run_baseline(ctx, "single_task")
    SELECT.run(ctx)
    BASELINES.run(ctx)
    out = ctx.on_main(write_results, ctx)
    ctx.write_summary("pipeline", out)
    return out


class AdaShareRun:
    """One AdaShare run for library use: `open_context(config, **options)` and each phase as a
    method (a phase runs the phases it needs first). The context's fields read through, e.g.
    `run.splits`, `run.callbacks`, `run.logger`, `run.build_model()`."""

    def __init__(self, config: AdaShareConfig, **options) -> None:
        self.context = open_context(config, **options)

    def __getattr__(self, name: str):
        if name == "context":
            raise AttributeError(name)
        return getattr(self.context, name)

    @property
    def cfg(self) -> AdaShareConfig:
        return self.context.cfg

    def warmup(self) -> dict:
        return WARMUP.run(self.context)

    def search(self) -> dict:
        return SEARCH.run(self.context)

    def sample(self) -> list[Policy]:
        return SAMPLE.run(self.context)

    def retrain(self, policy: Policy, index: int = 0) -> dict:
        return retrain(self.context, policy, index)

    def retrain_all(self) -> list[dict]:
        return RETRAIN.run(self.context)

    def select(self) -> dict:
        return SELECT.run(self.context)

    def evaluate(self, split: str = "test") -> dict:
        return evaluate(self.context, split)

    def run_baseline(self, name: str) -> dict:
        return run_baseline(self.context, name)

    def pipeline(self) -> dict:
        return pipeline(self.context)

    def reference(self) -> dict | None:
        return reference(self.context)

    def searched_model(self):
        return searched_model(self.context)
