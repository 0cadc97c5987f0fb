"""The package as a user gets it: a wheel built from the repo (`pip wheel`, build isolation),
installed with its dependencies into a fresh venv, runs a packaged recipe end to end from a
folder outside the repo.

Slow (about a minute: most of it is installing torch, which comes pinned from pip's local
wheels or cache), but it runs in CI like every other test."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import pytest

from efficientdl.core.recipes import list_recipes

REPO = Path(__file__).resolve().parents[1]
# always pinned: the torch that `make setup`/`make setup-dev` install
TORCH = re.search(r"^TORCH \?= (\S+)$", (REPO / "Makefile").read_text(), re.M).group(1)
# the packaged procedural demo, shrunk to seconds (no download: the scenes are generated)
TINY = {
    "data.size": 16, "data.num_train": 16, "data.num_val": 4, "data.num_test": 4,
    "model.width": 4, "train.batch_size": 4, "train.eval_batch_size": 4,
    "train.total_iters": 14, "train.warmup_iters": 2, "train.weight_iters": 2,
    "train.policy_iters": 2, "train.ckpt_every": 5, "sample.num": 1, "retrain.iters": 2,
    "retrain.val_freq": 2, "baselines": "[]", "progress": "false",
}  # fmt: skip

pytestmark = pytest.mark.slow


def run(cmd, *, cwd, env=None, timeout=600):
    proc = subprocess.run(
        [str(c) for c in cmd], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout
    )
    assert proc.returncode == 0, (cmd, proc.stdout[-3000:], proc.stderr[-3000:])
    return proc


def user_env(tmp: Path) -> dict[str, str]:
    """A user's environment: nothing that points into the repo or its venv."""
    drop = ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME", "EFFICIENTDL_DEBUG")
    env = {k: v for k, v in os.environ.items() if k not in drop}
    env["EFFICIENTDL_DATA"] = str(tmp / "data-cache")
    env["MPLBACKEND"] = "Agg"
    return env


def test_wheel_installs_into_a_fresh_venv_and_runs_a_packaged_recipe(tmp_path):
    times = {}
    start = time.perf_counter()

    # 1. build from a copy of the sources, so no build/ or egg-info lands in the repo
    src = tmp_path / "source"
    src.mkdir()
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        shutil.copy2(REPO / name, src / name)
    shutil.copytree(
        REPO / "src", src / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info")
    )
    dist = tmp_path / "dist"
    run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", dist, src], cwd=tmp_path)
    (wheel,) = dist.glob("efficientdl-*.whl")
    times["build"] = time.perf_counter() - start

    # 2. what the wheel holds
    names = set(zipfile.ZipFile(wheel).namelist())
    assert "efficientdl/py.typed" in names
    assert "efficientdl/configs/snn/mnist_cnn.yaml" in names
    packaged = {f"efficientdl/configs/{name}.yaml" for name in list_recipes()}
    assert packaged <= names, sorted(packaged - names)
    assert not [n for n in names if n.startswith(("tests/", "benchmarks/"))]
    (info,) = {n.split("/")[0] for n in names if n.split("/")[0].endswith(".dist-info")}
    assert f"{info}/licenses/LICENSE" in names
    metadata = zipfile.ZipFile(wheel).read(f"{info}/METADATA").decode()
    assert "License-Expression: MIT" in metadata
    assert "Provides-Extra: tensorboard" in metadata

    # 3. a fresh venv; pip (this venv's, via --python) installs pinned torch and the wheel
    venv = tmp_path / "venv"
    run([sys.executable, "-m", "venv", "--without-pip", venv], cwd=tmp_path)
    python = venv / "bin" / "python"
    mark = time.perf_counter()
    run(
        [sys.executable, "-m", "pip", "--python", python, "install", "-q", "--no-compile",
         TORCH, wheel],
        cwd=tmp_path, env=user_env(tmp_path),
    )  # fmt: skip
    times["install"] = time.perf_counter() - mark

    # 4. from a folder outside the repo, the installed package (not the repo's) answers
    work = tmp_path / "work"
    work.mkdir()
    env = user_env(tmp_path)
    where = run([python, "-c", "import efficientdl; print(efficientdl.__file__)"], cwd=work,
                env=env)  # fmt: skip
    assert Path(where.stdout.strip()).is_relative_to(venv), where.stdout
    cli = venv / "bin" / "efficientdl"
    mark = time.perf_counter()
    listed = run([cli, "configs"], cwd=work, env=env)
    assert listed.stdout.split() == list_recipes()

    # 5. a packaged recipe end to end, by name, into a run folder
    overrides = [word for key, value in TINY.items() for word in ("--set", f"{key}={value}")]
    command = [cli, "adashare", "pipeline", "--config", "adashare/procedural_demo",
               "--run-dir", "run", "--quiet", *overrides]  # fmt: skip
    done = run(command, cwd=work, env=env)
    assert "Traceback" not in done.stderr
    record = json.loads((work / "run" / "config.json").read_text())
    assert record["method"] == "adashare" and record["config"]["name"] == "procedural_demo"
    assert record["config"]["data"]["num_train"] == 16 and record["config"]["model"]["width"] == 4
    assert (work / "run" / "summary.json").is_file()
    assert (work / "run" / "report.md").is_file()
    assert not (tmp_path / "data-cache").exists()  # nothing was downloaded

    # 6. the installed CLI refuses to overwrite the finished run: one error line, exit 2
    before = {p: p.read_bytes() for p in (work / "run").rglob("*") if p.is_file()}
    again = subprocess.run(
        [str(c) for c in command], cwd=work, env=env, capture_output=True, text=True, timeout=120
    )
    assert again.returncode == 2, again.stderr[-2000:]
    errors = [line for line in again.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "--resume" in errors[0], again.stderr[-2000:]
    assert "Traceback" not in again.stderr
    assert {p: p.read_bytes() for p in (work / "run").rglob("*") if p.is_file()} == before
    times["run"] = time.perf_counter() - mark
    print("wheel test times (s):", {k: round(v, 1) for k, v in times.items()})
