"""The `efficientdl` command line: config errors are reported with the key, exit code 2."""

import json
from pathlib import Path

import pytest

from efficientdl.cli import main

CONFIG = str(Path(__file__).resolve().parents[1] / "configs" / "snn" / "demo.yaml")


@pytest.mark.parametrize(
    "override, message",
    [
        ("epochz=1", "unknown config key 'epochz'"),
        ("epochs=two", "config key 'epochs': expected int"),
        ("model=resnet", "model: unknown 'resnet'"),
    ],
)
def test_train_rejects_bad_overrides(override, message, capsys, tmp_path):
    code = main(["snn", "train", "--config", CONFIG, "--set", override, "--run-dir", str(tmp_path)])
    assert code == 2
    assert message in capsys.readouterr().err


def test_missing_config_file(capsys):
    assert main(["snn", "train", "--config", "configs/snn/nope.yaml"]) == 2
    assert "nope.yaml does not exist" in capsys.readouterr().err


def test_resume_needs_run_dir(capsys):
    assert main(["snn", "train", "--config", CONFIG, "--resume"]) == 2
    assert "--resume needs --run-dir" in capsys.readouterr().err


def test_evaluate_missing_checkpoint(capsys, tmp_path):
    assert main(["snn", "evaluate", "--run-dir", str(tmp_path)]) == 2
    assert "checkpoint.pt does not exist" in capsys.readouterr().err


def test_snn_bench_writes_a_table_and_json(tmp_path, capsys):
    out = tmp_path / "speed.json"
    args = [
        "snn",
        "bench",
        "--nets",
        "mnist_cnn",
        "--batch",
        "2",
        "--warmup",
        "0",
        "--iters",
        "1",
        "--neurons",
        "64",
        "--out",
        str(out),
    ]
    assert main(args) == 0
    result = json.loads(out.read_text())
    row = result["networks"][0]
    assert row["network"] == "mnist_cnn" and row["fused_ms"] > 0 and row["floor_ms"] > 0
    assert row["fused_over_floor"] == row["fused_ms"] / row["floor_ms"]
    assert [r["T"] for r in result["neuron"]] == [4, 8, 16, 32]
    assert "fused/floor" in capsys.readouterr().out
