"""`AdaShareTrainer`: warm-up → search → sample → retrain → select → evaluate, plus baselines;
every phase resumes from its own atomic checkpoint in the run folder.

The run folder follows the run protocol of `efficientdl.core.run`: `resume=False`/`True` (the CLI)
applies its rules (a folder holding a run is refused unless resumed; a resume must keep the stored
config, except `EXTENDS` and `FREE` keys); `resume=None` (library use) opens the folder as is.
`config.json` is written right before the first training step of a session.

Under torchrun (`torchrun --nproc_per_node=N -m efficientdl.cli adashare pipeline ...`) every rank
runs every phase on its 1/N of each global batch (`train.batch_size`) with gradients averaged
before each optimiser step, local BN batch statistics (rank 0's running statistics are shared),
identical seeded gates and policies and rank 0's evaluation results; only rank 0 writes files
(`on_main`), and every rank resumes from the same checkpoints.
"""

from __future__ import annotations

import atexit
import contextlib
import json
from pathlib import Path

import torch

from efficientdl.adashare import loops
from efficientdl.adashare.config import AdaShareConfig
from efficientdl.adashare.datasets import augmenter, build_data
from efficientdl.adashare.engine import evaluate as evaluate_split
from efficientdl.adashare.executor import TreeExecutor
from efficientdl.adashare.model import AdaShareNet
from efficientdl.adashare.policy import Policy
from efficientdl.adashare.search import BEST, LATEST, Search
from efficientdl.adashare.viz import plot_policy
from efficientdl.core import (
    ConfigError,
    DistContext,
    LossGuard,
    MetricsLogger,
    RunFolderError,
    default_run_dir,
    init_distributed,
    load_checkpoint,
    open_run,
    seed_everything,
    select_device,
    to_dict,
)
from efficientdl.core.distributed import broadcast_object, shutdown
from efficientdl.core.log import get_logger
from efficientdl.core.run import CONFIG_FILE, RunFolder
from efficientdl.core.tensorboard import Scalars, require_tensorboard
from efficientdl.data.multitask import BatchStream

log = get_logger("adashare")

EXTENDS = ("train.total_iters", "baselines")
"""Config keys a resume may change because they only extend the run: more search iterations
(continued from `search/latest.pt` while no policy has been drawn from the search), and the
pipeline's list of baselines (each baseline trains in its own folder)."""
FREE = ("threads", "device", "progress", "out_dir")
"""Config keys that do not change results (`out_dir` only names the default run folder)."""


class AdaShareTrainer:
    """Runs the AdaShare phases of `config` in a run folder (created or continued).

    `datasets=(splits, spec)` injects data (tests); otherwise they are built from `config.data`.
    `callbacks` receive one record per training iteration (phase, data half, optimiser, lr, n, τ).
    `resume` (True/False) applies the run-folder rules (module docstring); `tensorboard=True`
    writes TensorBoard scalars to `<run-dir>/tensorboard/` at every validation.
    """

    def __init__(
        self,
        config: AdaShareConfig,
        *,
        run_dir=None,
        datasets=None,
        resume: bool | None = None,
        tensorboard: bool = False,
    ) -> None:
        self.cfg = config.validate()
        if self.cfg.threads:
            torch.set_num_threads(self.cfg.threads)
        self.device = select_device(self.cfg.device)
        self.ctx = init_distributed(self.device.type)
        if self.ctx.enabled:
            atexit.register(shutdown, self.ctx)
            if self.device.type == "cuda":
                self.device = torch.device("cuda", self.ctx.local_rank)
        if self.cfg.train.batch_size % self.ctx.world_size:
            raise ConfigError(
                f"config key 'train.batch_size': the global batch of {self.cfg.train.batch_size} "
                f"must split evenly over the {self.ctx.world_size} ranks"
            )
        if tensorboard:
            require_tensorboard()
        torch.backends.cudnn.benchmark = self.cfg.perf.cudnn_benchmark
        default = default_run_dir(self.cfg.out_dir, self.cfg.name)
        path = Path(run_dir) if run_dir is not None else broadcast_object(default, self.ctx)
        self.run = self._open(path, resume)
        self.run_dir = self.run.path
        try:
            self.splits, self.spec = datasets if datasets is not None else build_data(self.cfg)
        except BaseException:
            self.run.abandon()
            raise
        if datasets is None:
            d = self.cfg.data
            where = "generated" if d.dataset == "procedural" else d.root or "the data cache"
            sizes = ", ".join(f"{len(self.splits[s])} {s}" for s in ("train", "val", "test"))
            log.info("data: %s (%s), tasks %s; %s", d.dataset, where, list(d.tasks), sizes)
        self.logger = MetricsLogger(self.run_dir, enabled=self.ctx.is_main)
        self.callbacks: list = []
        self.guard = LossGuard("adashare")
        self.tensorboard = tensorboard
        self.scalars = Scalars(None, enabled=False)
        self.tb_prefix = ""

    def _open(self, path: Path, resume: bool | None) -> RunFolder:
        """The run folder: the run protocol's checks when `resume` is given (every rank checks
        the same files; rank 0 creates the folder), else the folder as it is."""
        main = self.ctx.is_main
        if resume is None:
            if path.exists() and not path.is_dir():
                raise RunFolderError(f"--run-dir {path} is a file; expected a folder")
            created = not path.exists()
            self.on_main(path.mkdir, parents=True, exist_ok=True)
            began = (path / CONFIG_FILE).is_file()
            return RunFolder(path, "adashare", began, is_main=main, created=created)
        run = open_run(
            path,
            method="adashare",
            config=to_dict(self.cfg),
            resume=resume,
            extends=EXTENDS,
            free=FREE,
            is_main=main,
        )
        if self.ctx.enabled:
            torch.distributed.barrier()  # every rank checked the folder before anyone writes
        return run

    def begin(self) -> None:
        """Record the run (`config.json`) and open the TensorBoard writer, once per session,
        right before the first training step."""
        if self.run.started:
            return
        self.run.begin(to_dict(self.cfg))
        if self.tensorboard and not self.scalars.enabled:
            self.scalars = Scalars(self.run_dir, enabled=self.ctx.is_main)

    def log_scalars(self, step: int, values: dict, prefix: str) -> None:
        """TensorBoard scalars (with `--tensorboard`, rank 0) tagged `<prefix>/<name>`."""
        self.scalars.log(step, values, prefix=self.tb_prefix + prefix)

    def close(self) -> None:
        self.scalars.close()

    def write_summary(self, action: str, result) -> None:
        """`summary.json`: the result of the last command run in this folder (rank 0)."""
        self.on_main(self.run.write_summary, {"action": action, "result": result})

    # ---- helpers -------------------------------------------------------------------------
    def on_main(self, fn, *args, **kwargs):
        """`fn(*args, **kwargs)` on rank 0 alone, as a single process, after every rank got here;
        every rank returns rank 0's result once it is done. All file writes go through here."""
        ctx = self.ctx
        if not ctx.enabled:
            return fn(*args, **kwargs)
        torch.distributed.barrier()  # a file checked before this point is not written yet
        out = None
        if ctx.is_main:
            self.ctx = DistContext()
            try:
                out = fn(*args, **kwargs)
            finally:
                self.ctx = ctx
        return broadcast_object(out, ctx)

    def emit(self, record: dict) -> None:
        for callback in self.callbacks:
            callback(record)

    def autocast(self):
        if self.cfg.perf.precision == "bf16":
            return torch.autocast(self.device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def stream(self, split: str, *, seed: int, stream: int) -> BatchStream:
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

    def validate(self, forward, spec, model, split: str = "val") -> dict:
        """Metrics of `forward` on a split with the model in eval mode (rank 0's on every rank)."""
        if split == "test" and not getattr(self, "_testing", False):
            raise RuntimeError("the test split is only read by the final evaluation")
        model.eval()
        metrics = evaluate_split(
            forward,
            self.splits[split],
            spec,
            batch_size=self.cfg.train.eval_batch_size,
            device=self.device,
            upsample=self.cfg.parity.eval_upsample,
            channels_last=self.cfg.perf.channels_last,
            progress=self.cfg.progress and self.ctx.is_main,
            desc=split,
        )
        return broadcast_object(metrics, self.ctx)

    def test(self, forward, spec, model) -> dict:
        """Final evaluation on the test split (the only place it is read)."""
        self._testing = True
        try:
            with self.autocast():
                return self.validate(forward, spec, model, "test")
        finally:
            self._testing = False

    def reference(self) -> dict | None:
        """Selection reference: `selection_reference` file (`read_reference`), else the
        single-task baseline's validation results in this run, else the end-of-warm-up ones."""
        if self.cfg.selection_reference:
            return read_reference(Path(self.cfg.selection_reference))
        for folder in (self.run_dir / "baselines" / "single_task", self.run_dir / "warmup"):
            done = loops.read_result(folder)
            if done is not None and done.get("val"):
                return done["val"]
        return None

    # ---- phases --------------------------------------------------------------------------
    def warmup(self) -> dict:
        """Hard-sharing warm-up: `warmup_iters` Adam + StepLR updates on the full train split."""
        model = self.build_model()
        result = loops.train_fixed(
            self,
            folder=self.run_dir / "warmup",
            model=model,
            train_forward=lambda x, it: model(x),
            eval_forward=lambda x, b: model(x),
            spec=self.spec,
            iters=self.cfg.train.warmup_iters,
            val_freq=max(self.cfg.train.warmup_iters, 1),
            seed=self.cfg.seed,
            phase="warmup",
            reference=self.reference(),
            keep_best=False,
        )
        return result

    def search(self) -> dict:
        """Alternating weight/policy phases until `total_iters` (resumes from search/latest.pt)."""
        folder = self.run_dir / "search"
        if (folder / "done.json").is_file():
            done = json.loads((folder / "done.json").read_text())
            if done["iters"] >= self.cfg.train.total_iters:
                log.info("search: done (%d iterations), skipped", done["iters"])
                return done
            self._check_extendable(done["iters"])
            log.info(
                "search: extending from %d to %d iterations",
                done["iters"],
                self.cfg.train.total_iters,
            )
        model = self.build_model()
        if not (folder / LATEST).is_file():
            if self.cfg.train.warmup_iters > 0:
                self.warmup()
                warm = load_checkpoint(
                    self.run_dir / "warmup" / loops.CHECKPOINT, map_location=self.device
                )
                model.load_state_dict(warm["model"])
        reference = self.reference()
        if reference is None:
            raise ConfigError(
                "search needs a selection reference: run warm-up (train.warmup_iters > 0), "
                "the single_task baseline, or set selection_reference"
            )
        folder.mkdir(parents=True, exist_ok=True)
        state = Search(self, model, folder, reference).run()
        done = {
            "iters": state["it"],
            "cycles": state["cycle"],
            "tau": state["tau"],
            "best_score": state["best_score"],
            "has_best": (folder / BEST).is_file(),
        }
        self.on_main(loops.write_json, folder / "done.json", done)
        return done

    def _check_extendable(self, searched: int) -> None:
        """A longer `train.total_iters` continues a finished search only while nothing was drawn
        from it (policies, ablations); otherwise the extension cannot be honoured."""
        drawn = sorted((self.run_dir / "policies").glob("policy_*.json"))
        if drawn:
            raise RunFolderError(
                f"train.total_iters={self.cfg.train.total_iters}: the search in {self.run_dir} "
                f"finished at {searched} iterations and policies were already drawn from it "
                f"({self.run_dir / 'policies'}); keep total_iters={searched} or start a new run"
            )

    def searched_model(self) -> tuple[AdaShareNet, str]:
        """The search model from `best.pt` (or `latest.pt` when n never reached L)."""
        folder = self.run_dir / "search"
        path = folder / BEST if (folder / BEST).is_file() else folder / LATEST
        model = self.build_model()
        model.load_state_dict(load_checkpoint(path, map_location=self.device)["model"])
        return model, str(path)

    def sample(self) -> list[Policy]:
        """Draw `sample.num` hard policies from the searched logits (one seed each)."""
        folder = self.run_dir / "policies"
        s = self.cfg.sample
        seeds = list(s.seeds) + [self.cfg.seed + i for i in range(len(s.seeds), s.num)]
        paths = [folder / f"policy_{i:02d}.json" for i in range(s.num)]
        if all(p.is_file() for p in paths):
            log.info("sample: %d policies already drawn in %s, skipped", s.num, folder)
            return [Policy.from_json(p) for p in paths]
        self.search()
        model, source = self.searched_model()
        policies = []
        for seed in seeds[: s.num]:
            p = model.sample_policy(generator=torch.Generator().manual_seed(seed), mode=s.mode)
            policies.append(Policy(p.tasks, p.execute, model.backbone_name, seed, source))
        self.on_main(self.save_policies, policies, paths, model.execution_probs())
        return policies

    def save_policies(self, policies: list[Policy], paths: list[Path], probs) -> None:
        """Write the sampled policies (JSON) and the pictures of α and of policy 0."""
        for policy, path in zip(policies, paths):
            policy.to_json(path)
        plot_policy(
            probs,
            self.run_dir / "policy_probs.png",
            tasks=policies[0].tasks,
            title="learned execution probabilities α",
        )
        plot_policy(policies[0], self.run_dir / "policy.png", title="sampled policy 0")

    def retrain(self, policy: Policy, index: int = 0) -> dict:
        """Re-train from scratch (seed + index) with the fixed `policy` and true skipping."""
        folder = self.run_dir / "retrain" / f"sample_{index:02d}"
        model = self.build_model(seed=self.cfg.seed + index)
        if self.cfg.retrain.from_search:
            searched, _ = self.searched_model()
            model.load_state_dict(searched.state_dict())
        executor = TreeExecutor(model, policy)
        result = loops.train_fixed(
            self,
            folder=folder,
            model=model,
            train_forward=lambda x, it: model(x, policy),
            eval_forward=lambda x, b: executor(x),
            spec=self.spec,
            iters=self.cfg.retrain.iters,
            val_freq=self.cfg.retrain.val_freq,
            seed=self.cfg.seed + index,
            phase=f"retrain_{index:02d}",
            reference=self.reference(),
        )
        return result | {"policy": policy.to_dict()}

    def retrain_all(self) -> list[dict]:
        """Re-train every sampled policy (identical policies are trained once)."""
        policies = self.sample()
        results: list[dict] = []
        for i, p in enumerate(policies):
            first = next((j for j in range(i) if policies[j] == p), None)
            results.append(
                results[first] | {"same_as": first} if first is not None else self.retrain(p, i)
            )
        return results

    def select(self) -> dict:
        """Pick the sample with the best validation score; test every sample's best checkpoint
        and report the selected one and mean ± std over all samples."""
        from efficientdl.adashare.results import finish_adashare

        return self.on_main(finish_adashare, self, self.retrain_all())

    def evaluate(self, split: str = "test") -> dict:
        """Metrics of the selected re-trained model on `split` ('val' or 'test')."""
        path = self.run_dir / "adashare_result.json"
        if not path.is_file():
            raise RunFolderError(
                f"{path} does not exist: the run has no selected AdaShare model yet; "
                "run `efficientdl adashare select --run-dir DIR --resume` first"
            )
        selected = json.loads(path.read_text())
        policy = Policy.from_dict(selected["policy"])
        model = self.build_model()
        model.load_state_dict(
            load_checkpoint(selected["checkpoint"], map_location=self.device)["model"]
        )
        executor = TreeExecutor(model, policy)
        forward = lambda x, b: executor(x)  # noqa: E731
        return (
            self.test(forward, self.spec, model)
            if split == "test"
            else self.validate(forward, self.spec, model, split)
        )

    def run_baseline(self, name: str) -> dict:
        """Train, validate and test baseline or ablation `name`."""
        from efficientdl.adashare.baselines import run_baseline

        return run_baseline(self, name)

    def pipeline(self) -> dict:
        """Everything: single-task reference first, then search, sampling, re-training,
        selection, the other baselines and the results table."""
        from efficientdl.adashare.results import write_results

        baselines = list(self.cfg.baselines)
        if "single_task" in baselines:
            self.run_baseline("single_task")
        self.select()
        for name in baselines:
            self.run_baseline(name)
        out = self.on_main(write_results, self)
        self.write_summary("pipeline", out)
        return out


def read_reference(path: Path) -> dict:
    """Single-task validation metrics {task: {metric: value}} from `selection_reference`: a file
    with a "val" entry (a baseline's result.json, an ablation's reference.json) or the
    results.json of a pipeline run, whose folder holds baselines/single_task/result.json."""
    if not path.is_file():
        raise ConfigError(f"config key 'selection_reference': {path} does not exist")
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ConfigError(f"selection_reference {path} is not valid JSON ({err})") from None
    if isinstance(data, dict) and "val" in data:
        return data["val"]
    if not isinstance(data, dict) or "runs" not in data:
        raise ConfigError(
            f"selection_reference {path}: expected a result.json with 'val' or a pipeline's "
            "results.json with 'runs'"
        )
    single = path.parent / "baselines" / "single_task"
    done = loops.read_result(single)
    if done is None or not done.get("val"):
        raise ConfigError(
            f"selection_reference {path}: results.json holds test metrics only, and the "
            f"single-task validation metrics ('val' in {single / loops.RESULT}) are missing; "
            "run the single_task baseline in that run folder or point at a file with 'val'"
        )
    return done["val"]
