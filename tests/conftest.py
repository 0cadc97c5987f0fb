"""Shared test helpers: run the CLI as a user would, fingerprint a run folder, and the small
fixtures (one-thread torch, toy data and nets) that several test files use."""

from __future__ import annotations

import gzip
import hashlib
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from efficientdl.data import ArrayDataset


def folder_md5(path: str | Path) -> dict[str, str]:
    """{relative path: md5} of every file under `path` (to show a refusal touched nothing)."""
    path = Path(path)
    return {
        str(p.relative_to(path)): hashlib.md5(p.read_bytes()).hexdigest()
        for p in sorted(path.rglob("*"))
        if p.is_file()
    }


def run_cli(*args: str, cwd: str | Path, env: dict | None = None, timeout: float = 300):
    """`python -m efficientdl.cli ARGS` in `cwd` as a subprocess → CompletedProcess (text)."""
    full_env = {k: v for k, v in os.environ.items() if k != "EFFICIENTDL_DEBUG"}
    full_env.update({"PYTHONUNBUFFERED": "1", **(env or {})})  # a test may set the debug flag
    return subprocess.run(
        [sys.executable, "-m", "efficientdl.cli", *map(str, args)],
        cwd=cwd,
        env=full_env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def error_lines(stderr: str) -> list[str]:
    """The `error: …` lines of a CLI's stderr."""
    return [line for line in stderr.splitlines() if line.startswith("error:")]


def assert_one_error(proc, *fragments: str) -> str:
    """The process exited 2 with exactly one `error:` line holding every fragment, no traceback."""
    assert proc.returncode == 2, (proc.returncode, proc.stderr[-2000:])
    assert "Traceback" not in proc.stderr, proc.stderr[-2000:]
    lines = error_lines(proc.stderr)
    assert len(lines) == 1, proc.stderr[-2000:]
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])
    return lines[0]


@pytest.fixture
def cli():
    """The `run_cli` helper as a fixture."""
    return run_cli


def interrupt_when_exists(args, *, cwd: Path, pattern: str, timeout: float = 120):
    """Start `python -m efficientdl.cli ARGS` in `cwd`, press Ctrl-C (SIGINT) as soon as a file
    matching `pattern` (a glob under `cwd`) exists, and return (returncode, stdout, stderr)."""
    import signal
    import time

    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    env.pop("EFFICIENTDL_DEBUG", None)
    # a shell's background job ignores SIGINT, and children inherit that: restore the default
    # so the CLI sees Ctrl-C however the test suite was started
    proc = subprocess.Popen(
        [sys.executable, "-m", "efficientdl.cli", *map(str, args)],
        cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )  # fmt: skip
    try:
        deadline = time.monotonic() + timeout
        while not list(Path(cwd).glob(pattern)):
            assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
            time.sleep(0.02)
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=timeout)
    finally:
        proc.kill()
    return proc.returncode, out, err


@pytest.fixture(scope="module")
def one_thread():
    """Tiny models run fastest on one thread (and the 2-core CI machine is shared); a test file
    opts in with `pytestmark = pytest.mark.usefixtures("one_thread")`."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def write_digits(root, n_per_class=12):
    """A generated file in the scikit-learn digits.csv.gz format (64 pixels 0..16, label)."""
    rng = np.random.default_rng(0)
    rows = []
    for c in range(10):
        for _ in range(n_per_class):
            img = rng.integers(0, 4, 64)
            img[c * 6 : c * 6 + 6] = 16  # a class-specific stroke
            rows.append(",".join(map(str, [*img, c])))
    folder = root / "digits"
    folder.mkdir(parents=True)
    (folder / "digits.csv.gz").write_bytes(gzip.compress(("\n".join(rows) + "\n").encode()))
    return root


def toy_data(n_per_class, seed):
    """4 classes of 8×8 images: a bright 3×3 block in a class-specific corner, plus noise."""
    gen = torch.Generator().manual_seed(seed)
    labels = torch.arange(4).repeat_interleave(n_per_class)
    x = 0.3 * torch.randn(len(labels), 1, 8, 8, generator=gen)
    for i, c in enumerate(labels.tolist()):
        r, s = divmod(c, 2)
        x[i, 0, 5 * r : 5 * r + 3, 5 * s : 5 * s + 3] += 2.0
    return ArrayDataset(x, labels, num_classes=4)


class ConcatNet(nn.Module):
    """Two convs concatenated along channels, then a 1×1 conv whose output is concatenated again
    (KE masks must keep a prefix per concatenated segment)."""

    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(3, 64, 3, padding=1, bias=False)
        self.b = nn.Conv2d(3, 32, 3, padding=1, bias=False)
        self.norm = nn.BatchNorm2d(96)
        self.c = nn.Conv2d(96, 16, 1, bias=False)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(96 + 16, 5)

    def forward(self, x):
        y = F.relu(self.norm(torch.cat([self.a(x), self.b(x)], 1)))
        z = torch.cat([y, self.c(y)], dim=1)
        return self.fc(torch.flatten(self.pool(z), 1))


KE_TINY = {
    "name": "tiny",
    "recipe": "small",
    "dataset": "digits",
    "per_class": 4,
    "model": "small_cnn",
    "width": 4,
    "generations": 2,
    "epochs": 2,
    "batch_size": 8,
    "seed": 0,
    "threads": 1,
    "progress": False,
    "checkpoint_seconds": 0,
}
"""A KE config that trains for a few seconds on `write_digits` data."""


def write_ke_config(path: Path, root, *, extra_yaml: str = "", **fields) -> Path:
    """`KE_TINY` with `data_root=root` and `fields` as a YAML file; `extra_yaml` is appended
    verbatim (to test how a value is spelled in a file)."""
    import yaml

    path.write_text(yaml.safe_dump({**KE_TINY, "data_root": str(root), **fields}) + extra_yaml)
    return path


def optional_module(name: str, load=None):
    """The optional module `name` (or what `load()` returns, e.g. a loader that copes with a
    broken install), or skip the test when it cannot be loaded for ANY reason: a missing package,
    or an installed one that fails at import (torchvision built for another torch raises
    `RuntimeError: operator torchvision::nms does not exist`)."""
    import importlib

    try:
        return load() if load is not None else importlib.import_module(name)
    except Exception as err:  # any failure means the package is not usable here
        first = (str(err).strip().splitlines() or [type(err).__name__])[0]
        pytest.skip(f"{name} cannot be loaded here: {first}")
