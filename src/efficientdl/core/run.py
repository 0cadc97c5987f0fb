"""The run protocol every training command follows (snn train, ke train, each AdaShare phase).

A run folder holds one run of one method. Its `config.json` records the method and the full
config; it is written by `RunFolder.begin`, right before the first training step, so a start that
fails earlier (missing data, a bad model name) leaves nothing that blocks the retry.

Rules (`open_run`):
- a folder that already holds a run is refused unless `resume=True`; nothing in it is touched;
- `resume=True` on a folder without a run is refused;
- a resume whose config differs from the stored one is refused, naming the key, the stored and the
  new value, except for keys the method declares as extending the run (epochs, generations, total
  iterations: they may only grow) or as not affecting results (threads, device, progress);
- stale temporary checkpoint files of an interrupted write are removed;
- `--run-dir` naming a file is refused.
Only rank 0 of a torchrun job writes (`is_main`).
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from efficientdl.core.errors import RunFolderError
from efficientdl.core.log import get_logger

CONFIG_FILE = "config.json"
SUMMARY_FILE = "summary.json"
_LEGACY_MARKERS = ("config.yaml", "checkpoint.pt", "ke.json")

log = get_logger("run")


def write_json_atomic(path: str | Path, data: Any) -> Path:
    """Write `data` as indented JSON through a temporary file and a rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as handle:
            json.dump(data, handle, indent=2, default=str)
            handle.write("\n")
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def flatten(data: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested mappings as one mapping of dotted keys (`train.lr`)."""
    out: dict[str, Any] = {}
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            out.update(flatten(value, prefix=f"{name}."))
        else:
            out[name] = list(value) if isinstance(value, tuple) else value
    return out


def stored_run(path: str | Path) -> dict[str, Any] | None:
    """The `{"method", "version", "config"}` record of the run in `path`, or None."""
    file = Path(path) / CONFIG_FILE
    if not file.is_file():
        return None
    try:
        record = json.loads(file.read_text())
    except json.JSONDecodeError as err:
        raise RunFolderError(f"{file} is not valid JSON ({err}); the folder is damaged") from None
    if not isinstance(record, dict) or "method" not in record or "config" not in record:
        raise RunFolderError(
            f"{file} was written by an older efficientdl (no 'method'/'config' record); start a "
            "new run in another --run-dir"
        )
    return record


def stored_config(path: str | Path | None, method: str) -> dict[str, Any] | None:
    """The stored config of the `method` run in `path`; None when there is none (or the run is
    another method's: `open_run` then says what is wrong)."""
    if path is None or not Path(path).is_dir():
        return None
    record = stored_run(path)
    return record["config"] if record is not None and record["method"] == method else None


def holds_run(path: str | Path) -> bool:
    """Whether `path` holds a started run (ours, or an older efficientdl's)."""
    path = Path(path)
    return path.is_dir() and any((path / m).exists() for m in (CONFIG_FILE, *_LEGACY_MARKERS))


def remove_stale_temporaries(path: Path) -> list[Path]:
    """Delete `.NAME.*.tmp` files that an interrupted atomic write left under `path`."""
    removed = [p for p in path.rglob(".*.tmp") if p.is_file()]
    for p in removed:
        p.unlink()
    if removed:
        log.info("removed %d stale temporary file(s) in %s", len(removed), path)
    return removed


def config_differences(
    stored: dict[str, Any],
    current: dict[str, Any],
    *,
    extends: Iterable[str] = (),
    free: Iterable[str] = (),
) -> list[str]:
    """Why a resume with `current` cannot continue a run stored with `stored` (empty: it can)."""
    old, new = flatten(stored), flatten(current)
    extends, free = set(extends), set(free)
    problems = []
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key), new.get(key)
        if a == b or key in free:
            continue
        if key in extends:
            if isinstance(a, int | float) and isinstance(b, int | float) and b < a:
                problems.append(f"'{key}' can only grow on --resume: stored {a!r}, new {b!r}")
            continue
        problems.append(f"config key '{key}' differs: stored {a!r}, new {b!r}")
    return problems


@dataclass
class RunFolder:
    """A run folder opened by `open_run`: where a run writes, and whether it continues one."""

    path: Path
    method: str
    resume: bool
    is_main: bool = True
    created: bool = False
    started: bool = field(default=False, init=False)

    def begin(self, config: dict[str, Any]) -> None:
        """Record the run (`config.json`); call right before the first training step."""
        from efficientdl import __version__

        if self.is_main:
            record = {"method": self.method, "version": __version__, "config": config}
            write_json_atomic(self.path / CONFIG_FILE, record)
        self.started = True

    def write_summary(self, summary: dict[str, Any]) -> Path | None:
        """The run's one summary file, `summary.json` (rank 0 only)."""
        return write_json_atomic(self.path / SUMMARY_FILE, summary) if self.is_main else None

    def abandon(self) -> None:
        """Undo the folder of a start that failed before `begin` (only if we made it, empty)."""
        if self.started or not self.is_main or not self.created:
            return
        try:
            self.path.rmdir()
        except OSError:
            pass


def open_run(
    path: str | Path,
    *,
    method: str,
    config: dict[str, Any],
    resume: bool = False,
    extends: Iterable[str] = (),
    free: Iterable[str] = (),
    is_main: bool = True,
) -> RunFolder:
    """Check `path` against the run-folder rules (module docstring) and return the RunFolder.

    Raises RunFolderError naming the folder and what to do. Nothing is written here except the
    folder itself and the removal of stale temporary files."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise RunFolderError(f"--run-dir {path} is a file; expected a folder (new or a run's)")
    if holds_run(path) and not resume:
        raise RunFolderError(
            f"{path} already holds a run; continue it with --resume, or choose another --run-dir"
        )
    if resume:
        if not holds_run(path):
            raise RunFolderError(f"--resume: {path} holds no run to continue (no {CONFIG_FILE})")
        record = stored_run(path)
        if record is None:
            raise RunFolderError(
                f"--resume: {path} holds a run that never reached its first step, or an older "
                f"efficientdl's (no {CONFIG_FILE}); start it again without --resume elsewhere"
            )
        if record["method"] != method:
            raise RunFolderError(
                f"--resume: {path} holds a {record['method']} run, not a {method} run"
            )
        problems = config_differences(record["config"], config, extends=extends, free=free)
        if problems:
            raise RunFolderError(f"cannot resume {path}: {problems[0]}")
        log.info("resuming the %s run in %s", method, path)
    created = not path.exists()
    if is_main:
        try:
            path.mkdir(parents=True, exist_ok=True)
        except OSError as err:  # a parent that is a file, no permission, ...
            raise RunFolderError(f"--run-dir {path} cannot be created ({err.strerror})") from None
        remove_stale_temporaries(path)
    return RunFolder(path, method, resume, is_main=is_main, created=created)


def train_config(cls, args, *, method: str, default: dict[str, Any] | None = None):
    """The config of a training command: `--config` (+ `--set`); without it, on `--resume`, the
    config stored in `--run-dir` (+ `--set`), else `default`. Without either a ConfigError says
    what to pass; `--resume` without `--run-dir` is a RunFolderError."""
    from efficientdl.core.config import config_from_args
    from efficientdl.core.errors import ConfigError

    if args.resume and args.run_dir is None:
        raise RunFolderError("--resume needs --run-dir (the folder of the run to continue)")
    stored = default
    if args.config is None:
        if args.resume:
            stored = stored_config(args.run_dir, method) or default  # None: open_run says why
        elif default is None:
            raise ConfigError(
                f"{method} train needs --config NAME|FILE (`efficientdl configs {method}` lists "
                "them), or --resume --run-dir DIR to continue a run with its stored config"
            )
    return config_from_args(cls, args, stored=stored)


def add_train_command(actions, name: str, *, method: str, example: str, example_dir: str, func,
                      **parser_options):  # fmt: skip
    """A training sub-command `name` of `method`: `--config NAME|FILE` (optional: a resumed run
    has its own), `--set`, `--run-dir`, `--resume`, `--tensorboard`, handled by `func(args)`."""
    from efficientdl.core.config import add_config_args

    parser = actions.add_parser(name, **parser_options)
    add_config_args(parser, method=method, example=example, required=False)
    add_run_args(parser, example_dir=example_dir)
    parser.set_defaults(func=func)
    return parser


def add_run_args(parser, *, example_dir: str = "runs/NAME") -> None:
    """The options every training sub-command shares: `--run-dir`, `--resume`, `--tensorboard`."""
    parser.add_argument("--run-dir", default=None, help=f"run folder (default {example_dir})")
    parser.add_argument(
        "--resume", action="store_true", help="continue the run in --run-dir where it stopped"
    )
    parser.add_argument(
        "--tensorboard",
        action="store_true",
        help="also write TensorBoard scalars to <run-dir>/tensorboard/ (needs [tensorboard])",
    )
    parser.set_defaults(resumable=True)
