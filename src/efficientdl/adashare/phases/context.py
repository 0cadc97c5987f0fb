"""The context every AdaShare phase is a function of: config, run folder, device, distributed
context, data splits and task specification, divergence guard, metrics log and TensorBoard.

The run folder follows the run protocol of `efficientdl.core.run`: `resume=False`/`True` (the CLI)
applies its rules (a folder holding a run is refused unless resumed; a resume must keep the stored
config, except `EXTENDS` and `FREE` keys); `resume=None` (library use) opens the folder as is.
`config.json` is written right before the first training step of a session (`Context.begin`).

Under torchrun every rank runs every phase on its 1/N of each global batch (`train.batch_size`)
with gradients averaged before each optimiser step, local BN batch statistics (rank 0's running
statistics are shared), identical seeded gates and policies and rank 0's evaluation results; only
rank 0 writes files (`Context.on_main`), and every rank resumes from the same checkpoints.
"""

from __future__ import annotations

import atexit
import contextlib
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch

from efficientdl.adashare.config import AdaShareConfig
from efficientdl.adashare.model import AdaShareNet
from efficientdl.adashare.objectives.tasks import CUSTOM, Task, TaskSpec, task_spec
from efficientdl.core import (
    ConfigError,
    DistContext,
    LossGuard,
    MetricsLogger,
    RunFolderError,
    default_run_dir,
    init_distributed,
    open_run,
    seed_everything,
    select_device,
    to_dict,
)
from efficientdl.core.distributed import broadcast_object, shutdown
from efficientdl.core.log import get_logger
from efficientdl.core.run import CONFIG_FILE, RunFolder
from efficientdl.core.tensorboard import Scalars, require_tensorboard
from efficientdl.data.dense_tasks import augmenter, dense_splits, run_splits
from efficientdl.data.multitask import BatchStream, TaskDataset

log = get_logger("adashare")

EXTENDS = ("train.total_iters", "baselines")
"""Config keys a resume may change because they only extend the run: more search iterations
(continued from `search/latest.pt` while no policy has been drawn from the search), and the
pipeline's list of baselines (each baseline trains in its own folder)."""
FREE = ("threads", "device", "progress", "out_dir")
"""Config keys that do not change results (`out_dir` only names the default run folder)."""


DATA_SPLITS = ("train", "val", "test")
"""The datasets a run of your own tasks takes: train and test, val optionally."""


def build_data(cfg: AdaShareConfig, tasks=None, data=None) -> tuple[dict, TaskSpec]:
    """Splits train (minus val), train1, train2, val, test and the TaskSpec: of the dataset
    `cfg.data`, or with `data.dataset: custom` of your own `tasks` (a list of `Task`) and
    datasets `data` ({'train': ..., 'test': ..., optionally 'val': ...}, each yielding
    `(image, {task: target})` or a dict, see `TaskDataset`), split by `cfg.data`."""
    if cfg.data.dataset != CUSTOM:
        splits = dense_splits(cfg)
        return splits, task_spec(cfg, splits["train"])
    if tasks is None or data is None:
        raise ConfigError(
            "config key 'data.dataset': a 'custom' run takes its tasks and datasets from the "
            "API: AdaShareRun(config, tasks=[Task(...)], data={'train': ..., 'test': ...})"
        )
    if not isinstance(data, Mapping):
        raise ConfigError(f"data=: expected {{'train': ..., 'test': ...}}, got {type(data)}")
    if set(data) - set(DATA_SPLITS) or not {"train", "test"} <= set(data):
        raise ConfigError(
            f"data=: expected the datasets {list(DATA_SPLITS)} (val optional), got {sorted(data)}"
        )
    spec = TaskSpec(tuple(tasks))
    base = {s: TaskDataset(d, spec.tasks, s) for s, d in data.items()}
    return run_splits(base, cfg.data), spec


def with_tasks(config: AdaShareConfig, tasks, data) -> AdaShareConfig:
    """`config` for a run of your own `tasks` and datasets `data` (`build_data`): its
    `data.dataset` is `custom` and `data.tasks` the task names, so the stored config says what
    ran; the loss weights are the tasks' own (`Task.weight`), not `train.lambdas`."""
    if tasks is None and data is None:
        return config
    if tasks is None or data is None:
        raise ConfigError("tasks= and data= come together: your tasks and the datasets of them")
    tasks = list(tasks)
    wrong = [t for t in tasks if not isinstance(t, Task)]
    if wrong or not tasks:
        raise ConfigError(f"tasks=: expected a non-empty list of Task, got {wrong or tasks!r}")
    if config.train.lambdas:
        raise ConfigError(
            "config key 'train.lambdas': tasks of your own carry their loss weight "
            "(Task(..., weight=...)); leave train.lambdas empty"
        )
    names = [t.name for t in tasks]
    return replace(config, data=replace(config.data, dataset=CUSTOM, tasks=names))


class Board:
    """The run's TensorBoard scalars: with `--tensorboard`, opened on rank 0 at the run's first
    training step (`open`); until then, and without it, logging does nothing."""

    def __init__(self, wanted: bool, is_main: bool) -> None:
        if wanted:
            require_tensorboard()
        self.wanted, self.is_main = wanted, is_main
        self.scalars = Scalars(None, enabled=False)

    def open(self, run_dir: Path) -> None:
        if self.wanted and not self.scalars.enabled:
            self.scalars = Scalars(run_dir, enabled=self.is_main)

    def log(self, step: int, values: dict, prefix: str) -> None:
        self.scalars.log(step, values, prefix=prefix)

    def close(self) -> None:
        self.scalars.close()


@dataclass(frozen=True)
class Context:
    """What an AdaShare phase reads: `cfg`, the run folder, device, distributed context, data,
    the divergence guard, the metrics log, TensorBoard (`board`, tags under `tb_prefix`) and the
    `callbacks` receiving one record per training iteration (phase, data half, optimiser, lr, n,
    τ)."""

    cfg: AdaShareConfig
    run: RunFolder
    device: torch.device
    dist: DistContext
    splits: dict
    spec: TaskSpec
    guard: LossGuard
    logger: MetricsLogger
    board: Board
    callbacks: list = field(default_factory=list)
    tb_prefix: str = ""

    @property
    def run_dir(self) -> Path:
        return self.run.path

    def alone(self) -> Context:
        """This context as a single process (what rank 0 runs inside `on_main`)."""
        return replace(self, dist=DistContext())

    def on_main(self, fn, *args, **kwargs):
        """`fn(*args, **kwargs)` on rank 0 alone, after every rank got here; every rank returns
        rank 0's result once it is done. All file writes go through here."""
        if not self.dist.enabled:
            return fn(*args, **kwargs)
        torch.distributed.barrier()  # a file checked before this point is not written yet
        out = fn(*args, **kwargs) if self.dist.is_main else None
        return broadcast_object(out, self.dist)

    def begin(self) -> None:
        """Record the run (`config.json`) and open TensorBoard, once per session, right before
        the first training step."""
        if self.run.started:
            return
        self.run.begin(to_dict(self.cfg))
        self.board.open(self.run_dir)

    def log_scalars(self, step: int, values: dict, prefix: str) -> None:
        """TensorBoard scalars (with `--tensorboard`, rank 0) tagged `<prefix>/<name>`."""
        self.board.log(step, values, self.tb_prefix + prefix)

    def emit(self, record: dict) -> None:
        for callback in self.callbacks:
            callback(record)

    def write_summary(self, action: str, result) -> None:
        """`summary.json`: the result of the last command run in this folder (rank 0)."""
        self.on_main(self.run.write_summary, {"action": action, "result": result})

    def close(self) -> None:
        self.board.close()

    def autocast(self):
        if self.cfg.perf.precision == "bf16":
            return torch.autocast(self.device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def stream(self, split: str, *, seed: int, stream: int) -> BatchStream:
        """Seeded, resumable batches of `split` with the training augmentation."""
        data = self.splits[split]
        return BatchStream(
            data,
            self.cfg.train.batch_size,
            seed=seed,
            stream=stream,
            augment_fn=augmenter(self.cfg, data),
        )

    def build_model(self, tasks=None, *, seed: int | None = None) -> AdaShareNet:
        """A freshly initialised model for `tasks` (default all), seeded by `seed`."""
        m = self.cfg.model
        seed_everything(self.cfg.seed if seed is None else seed)
        spec = self.spec if tasks is None else self.spec.subset(tasks)
        in_channels = int(self.splits["train"][0]["image"].shape[0])
        model = AdaShareNet(
            m.backbone,
            spec.channels,
            m.head,
            stem=m.stem,
            in_channels=in_channels,
            logits_init=m.logits_init,
            width=m.width,
            exec_mode="official" if self.cfg.parity.masked_execution else "fast",
        ).to(self.device)
        if self.cfg.perf.channels_last:
            model = model.to(memory_format=torch.channels_last)
        return model


def open_context(
    config: AdaShareConfig,
    *,
    run_dir=None,
    datasets=None,
    tasks=None,
    data=None,
    resume: bool | None = None,
    tensorboard: bool = False,
) -> Context:
    """The context of the AdaShare run of `config` in `run_dir` (default: a new folder under
    `out_dir`), created or continued.

    `tasks=[Task, ...]` with `data={'train': ..., 'test': ...}` runs tasks and datasets of your
    own (`build_data`, `with_tasks`); `datasets=(splits, spec)` injects built splits (tests,
    ablation runs); otherwise the data are built from `config.data`. `resume` (True/False)
    applies the run-folder rules (module docstring); `tensorboard=True` writes TensorBoard
    scalars to `<run-dir>/tensorboard/`.
    """
    if datasets is not None and (tasks is not None or data is not None):
        raise ConfigError("give datasets=(splits, spec) or tasks= and data=, not both")
    cfg = with_tasks(config, tasks, data).validate()
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    device = select_device(cfg.device)
    dist = init_distributed(device.type)
    if dist.enabled:
        atexit.register(shutdown, dist)
        if device.type == "cuda":
            device = torch.device("cuda", dist.local_rank)
    if cfg.train.batch_size % dist.world_size:
        raise ConfigError(
            f"config key 'train.batch_size': the global batch of {cfg.train.batch_size} "
            f"must split evenly over the {dist.world_size} ranks"
        )
    board = Board(tensorboard, dist.is_main)
    torch.backends.cudnn.benchmark = cfg.perf.cudnn_benchmark
    default = default_run_dir(cfg.out_dir, cfg.name)
    path = Path(run_dir) if run_dir is not None else broadcast_object(default, dist)
    run = _open_folder(cfg, path, resume, dist)
    try:
        splits, spec = datasets if datasets is not None else build_data(cfg, tasks, data)
    except BaseException:
        run.abandon()
        raise
    if datasets is None:
        d = cfg.data
        where = {"procedural": "generated", CUSTOM: "given through the API"}.get(
            d.dataset, d.root or "the data cache"
        )
        sizes = ", ".join(f"{len(splits[s])} {s}" for s in ("train", "val", "test"))
        log.info("data: %s (%s), tasks %s; %s", d.dataset, where, list(d.tasks), sizes)
    return Context(
        cfg=cfg,
        run=run,
        device=device,
        dist=dist,
        splits=splits,
        spec=spec,
        guard=LossGuard("adashare"),
        logger=MetricsLogger(run.path, enabled=dist.is_main),
        board=board,
    )


def _open_folder(cfg, path: Path, resume: bool | None, dist: DistContext) -> RunFolder:
    """The run folder: the run protocol's checks when `resume` is given (every rank checks the
    same files; rank 0 creates the folder), else the folder as it is."""
    main = dist.is_main
    if resume is None:
        if path.exists() and not path.is_dir():
            raise RunFolderError(f"--run-dir {path} is a file; expected a folder")
        created = not path.exists()
        if main:
            path.mkdir(parents=True, exist_ok=True)
        if dist.enabled:
            torch.distributed.barrier()  # the folder exists before any rank reads it
        began = (path / CONFIG_FILE).is_file()
        return RunFolder(path, "adashare", began, is_main=main, created=created)
    run = open_run(
        path,
        method="adashare",
        config=to_dict(cfg),
        resume=resume,
        extends=EXTENDS,
        free=FREE,
        is_main=main,
    )
    if dist.enabled:
        torch.distributed.barrier()  # every rank checked the folder before anyone writes
    return run
