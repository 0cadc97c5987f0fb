"""The AdaShare phases (warm-up, search, sample, retrain, select, evaluate, baselines), each a
function of a `Context`, and the pipeline that chains them; the baselines are registered in
`efficientdl.core.registry` as kind `baseline`."""

from efficientdl.adashare.phases.baselines import run_baseline
from efficientdl.adashare.phases.context import Context, build_data, open_context
from efficientdl.adashare.phases.pipeline import PHASES, AdaShareRun, phase, pipeline

__all__ = [
    "PHASES",
    "AdaShareRun",
    "Context",
    "build_data",
    "open_context",
    "phase",
    "pipeline",
    "run_baseline",
]
