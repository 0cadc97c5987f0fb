"""The `efficientdl` command line: config errors are reported with the key, exit code 2."""

import json

import pytest
import torch

from efficientdl.cli import main
from efficientdl.core.recipes import resolve_recipe

CONFIG = str(resolve_recipe("demo", "snn"))


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
    assert "nope.yaml: no such file" in capsys.readouterr().err


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


def test_evaluate_and_stats_take_run_dir_and_or_config(tmp_path, capsys, monkeypatch):
    from efficientdl.data import ArrayDataset
    from efficientdl.snn import train as train_module

    g = torch.Generator().manual_seed(0)
    data = tuple(
        ArrayDataset(torch.randn(n, 1, 28, 28, generator=g), torch.arange(n) % 10) for n in (20, 12)
    )
    monkeypatch.setattr(train_module, "_load_data", lambda recipe, root: data)
    run = str(tmp_path / "run")
    small = ["--set", "epochs=1", "--set", "batch_size=10", "--set", "train_subset=null"]
    assert main(["snn", "train", "--config", CONFIG, "--run-dir", run, *small]) == 0
    assert "| 1 |" in (tmp_path / "run" / "report.md").read_text()  # report from the checkpoint
    out = capsys.readouterr().out
    trained = json.loads(out[out.index("{") :])["final_test_accuracy"]
    assert main(["snn", "evaluate", "--run-dir", run]) == 0  # the checkpoint's saved recipe
    assert json.loads(capsys.readouterr().out)["accuracy"] == trained
    assert main(["snn", "evaluate", "--run-dir", run, "--config", CONFIG, *small]) == 0
    assert json.loads(capsys.readouterr().out)["accuracy"] == trained
    fmnist = str(resolve_recipe("fmnist_cnn", "snn"))
    assert main(["snn", "evaluate", "--run-dir", run, "--config", fmnist]) == 2
    assert "the recipe is for model 'fmnist_cnn' but" in capsys.readouterr().err
    assert main(["snn", "stats", "--config", CONFIG, "--batches", "1"]) == 0  # as initialised
    assert "layers" in capsys.readouterr().out
    assert main(["snn", "stats"]) == 2
    assert "give --run-dir (a trained run) or --config" in capsys.readouterr().err


def test_snn_bench_times_the_network_of_a_config(tmp_path, capsys):
    out = tmp_path / "speed.json"
    fmnist_mlp = str(resolve_recipe("fmnist_mlp", "snn"))
    args = ["snn", "bench", "--config", fmnist_mlp, "--set", "batch_size=3", "--set", "T=2"]
    assert main([*args, "--warmup", "0", "--iters", "1", "--neurons", "8", "--out", str(out)]) == 0
    (row,) = json.loads(out.read_text())["networks"]
    assert (row["network"], row["batch"], row["T"]) == ("fmnist_mlp", 3, 2)
    assert main(["snn", "bench", "--set", "T=2"]) == 2
    assert "--set needs --config" in capsys.readouterr().err
