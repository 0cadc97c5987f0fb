"""Shared test helpers: run the CLI as a user would, and fingerprint a run folder."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import pytest


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
