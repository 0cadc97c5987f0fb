"""The benchmark's activation-memory measure against a closed form, its device check, and the
GPU check script (parsed, and run where there is no GPU)."""

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from efficientdl.core.benchmark import saved_mib
from efficientdl.core.errors import ConfigError
from efficientdl.snn import bench


def test_saved_mib_counts_each_saved_storage_once():
    x = torch.randn(256, 256, requires_grad=True)
    w = torch.randn(256, 256, requires_grad=True)
    # a matmul saves both operands: 2 × 256·256·4 bytes = 0.5 MiB
    assert saved_mib(lambda: (x @ w).sum()) == 0.5
    # the same storage saved twice (x·x) counts once; a view of x shares its storage
    assert saved_mib(lambda: (x * x).sum()) == 0.25
    assert saved_mib(lambda: (x[:128] * w[:128]).sum()) == 0.5


@pytest.mark.skipif(
    torch.cuda.is_available(), reason="checks the refusal on a machine without CUDA"
)
def test_bench_refuses_an_absent_device_in_one_line(tmp_path):
    parser = argparse.ArgumentParser()
    bench.add_arguments(parser)
    args = parser.parse_args(["--device", "cuda", "--out", str(tmp_path / "x.json")])
    with pytest.raises(ConfigError, match="CUDA is not available"):
        bench.run(args)
    args.device = "gpu"
    with pytest.raises(ConfigError, match="'gpu' is no device"):
        bench.run(args)
    assert not (tmp_path / "x.json").exists()


SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_check.sh"


def _script(*args, env=None, timeout=120):
    return subprocess.run(
        ["bash", str(SCRIPT), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
    )


def test_gpu_check_parses_and_lists_every_step(tmp_path):
    assert subprocess.run(["bash", "-n", str(SCRIPT)]).returncode == 0
    done = _script("--dry-run", "--out", str(tmp_path))
    assert done.returncode == 0, done.stderr
    steps = [line.split()[0] for line in done.stdout.splitlines()[1:]]
    assert steps == ["cuda_tests", "snn_bench", "adashare_bench", "ke_bench"]
    assert "-k 'cuda or compile'" in done.stdout and done.stdout.count("--device cuda") == 2
    only = _script("--dry-run", "--only", "ke_bench", "--out", str(tmp_path))
    assert [line.split()[0] for line in only.stdout.splitlines()[1:]] == ["ke_bench"]
    assert _script("--only", "nothing", "--dry-run").returncode == 2
    assert _script("--bogus").returncode == 2


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the script on a machine without CUDA")
def test_gpu_check_without_cuda_stops_with_a_message(tmp_path):
    done = _script("--out", str(tmp_path), env={"PYTHON": sys.executable})
    assert done.returncode == 3
    assert "no CUDA device" in done.stderr
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["cuda"] is False and summary["steps"] == []


@pytest.mark.slow  # two Python processes importing torch, and one CLI run
@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the script on a machine without CUDA")
def test_gpu_check_records_a_failing_step_and_goes_on(tmp_path):
    """--without-gpu runs the steps anyway: the CUDA benchmark fails, is recorded, and the
    script still writes its summary (exit 1)."""
    done = _script(
        "--out", str(tmp_path), "--only", "adashare_bench", "--without-gpu",
        env={"PYTHON": sys.executable},
    )  # fmt: skip
    assert done.returncode == 1, done.stdout + done.stderr
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert [(s["step"], s["rc"]) for s in summary["steps"]] == [("adashare_bench", 2)]
    assert "CUDA is not available" in (tmp_path / "adashare_bench.log").read_text()
    assert "python" in (tmp_path / "env.txt").read_text()
