"""`Phase`: one step of an AdaShare run, the file that marks it done and the phase it needs; the
chain warm-up → search → sample → retrain → select that every training command walks."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from efficientdl.adashare.phases.context import Context
from efficientdl.adashare.phases.retrain import retrain_all, retrain_done
from efficientdl.adashare.phases.sample import sample, sample_done
from efficientdl.adashare.phases.search import search, search_done
from efficientdl.adashare.phases.select import select, select_done
from efficientdl.adashare.phases.warmup import warmup, warmup_done


@dataclass(frozen=True)
class Phase:
    """`step(ctx)` does the phase (and returns its stored result when it is done already);
    `done(ctx)` tells from the run folder whether it finished; `needs` runs first, if not done."""

    name: str
    step: Callable[[Context], Any]
    done: Callable[[Context], bool]
    needs: Phase | None = None

    def run(self, ctx: Context) -> Any:
        """The phase, after the chain of phases it needs that are not done yet."""
        if self.needs is not None and not self.done(ctx):
            self.needs.ensure(ctx)
        return self.step(ctx)

    def ensure(self, ctx: Context) -> None:
        """Run the phase unless it is done."""
        if not self.done(ctx):
            self.run(ctx)


WARMUP = Phase("warmup", warmup, warmup_done)
SEARCH = Phase("search", search, search_done, needs=WARMUP)
SAMPLE = Phase("sample", sample, sample_done, needs=SEARCH)
RETRAIN = Phase("retrain", retrain_all, retrain_done, needs=SAMPLE)
SELECT = Phase("select", select, select_done, needs=RETRAIN)
