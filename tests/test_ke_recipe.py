"""KE recipe: schedule, losses, CS-KD sampler, config, digits data, CLI."""

import gzip
import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from conftest import write_digits
from efficientdl.cli import main
from efficientdl.core import ConfigError, load_config
from efficientdl.data import get_dataset, per_class_indices, random_shift
from efficientdl.data.digits import stratified_split
from efficientdl.knowledge_evolution import KEConfig, class_partners, cskd_loss, lr_at

pytestmark = pytest.mark.usefixtures("one_thread")


def test_schedule_matches_official_values():
    got = [lr_at(e, epochs=200, lr=0.256) for e in range(200)]
    assert got[:6] == pytest.approx([0.0512, 0.1024, 0.1536, 0.2048, 0.256, 0.256])
    assert got[199] == pytest.approx(1.66e-5, rel=0.01)
    assert got[102] == pytest.approx(0.5 * (1 + math.cos(math.pi * 97 / 195)) * 0.256)
    assert lr_at(0, epochs=2, lr=0.1) == pytest.approx(0.02)  # each generation restarts here


def test_label_smoothing_and_cskd_hand_example():
    z, zp, y = torch.tensor([[2.0, 0.0]]), torch.tensor([[0.0, 1.0]]), torch.tensor([0])
    # label smoothing 0.1 over 2 classes: targets (0.95, 0.05)
    logp = [2 - math.log(math.exp(2) + 1), -math.log(math.exp(2) + 1)]
    smooth = -(0.95 * logp[0] + 0.05 * logp[1])
    assert cskd_loss(z, zp, y, weight=0.0, label_smoothing=0.1).item() == pytest.approx(smooth)
    assert F.cross_entropy(z, y, label_smoothing=0.1).item() == pytest.approx(smooth)
    # CS-KD, T = 4, λ = 3: p = softmax(z/4) = softmax(0.5, 0), q = softmax(0, 0.25)
    p0 = math.exp(0.5) / (math.exp(0.5) + 1)
    q1 = math.exp(0.25) / (math.exp(0.25) + 1)
    p, q = [p0, 1 - p0], [1 - q1, q1]
    kl = sum(qk * (math.log(qk) - math.log(pk)) for pk, qk in zip(p, q))
    expected = -logp[0] + 3 * 16 * kl
    zg = z.clone().requires_grad_(True)
    zpg = zp.clone().requires_grad_(True)
    loss = cskd_loss(zg, zpg, y, temperature=4.0, weight=3.0)
    assert loss.item() == pytest.approx(expected, rel=1e-6)
    loss.backward()
    assert zpg.grad is None and zg.grad is not None  # partner logits are constants


def test_class_partners_pair_same_class():
    labels = torch.tensor([0, 0, 0, 1, 1, 2, 0, 1])
    idx = torch.arange(8).repeat(200)
    partners = class_partners(labels, idx, torch.Generator().manual_seed(0))
    assert torch.equal(labels[partners], labels[idx])
    assert (partners[idx != 5] != idx[idx != 5]).all() and (partners[idx == 5] == 5).all()
    counts = torch.bincount(partners[idx == 0], minlength=8)[[1, 2, 6]].float()
    assert (counts / counts.sum() - 1 / 3).abs().max() < 0.1  # uniform over the others


def test_per_class_subset_and_shift():
    labels = torch.arange(10).repeat(30)
    a = per_class_indices(labels, 5, seed=0)
    assert torch.equal(torch.bincount(labels[a]), torch.full((10,), 5))
    assert torch.equal(a, per_class_indices(labels, 5, seed=0))
    assert not torch.equal(a, per_class_indices(labels, 5, seed=1))
    with pytest.raises(ValueError, match="class 0 has 30 samples, fewer than per_class=31"):
        per_class_indices(labels, 31, seed=0)
    x = torch.arange(2 * 16.0).view(2, 1, 4, 4)
    out = random_shift(x, torch.Generator().manual_seed(0), padding=1, fill=-1.0)
    for i in range(2):  # every output is a 4×4 window of the padded image
        padded = F.pad(x[i], (1, 1, 1, 1), value=-1.0)
        windows = [padded[:, t : t + 4, s : s + 4] for t in range(3) for s in range(3)]
        assert any(torch.equal(out[i], w) for w in windows)


def test_every_ke_config_loads():
    from efficientdl.core.recipes import list_recipes, resolve_recipe

    paths = [resolve_recipe(name, "ke") for name in list_recipes("ke")]
    assert len(paths) >= 5
    for path in paths:
        load_config(KEConfig, path).validate()


def test_config_resolution_and_errors(tmp_path):
    small = KEConfig(recipe="small")
    assert [small.resolved_epochs(n) for n in (100, 250, 1000)] == [250, 125, 32]
    assert small.resolved_generations() == 5 and KEConfig().resolved_generations() == 10
    assert KEConfig().resolved_epochs(100) == 200
    path = tmp_path / "c.yaml"
    path.write_text("split_rate: 0.5\nsplit_ratee: 0.3\n")
    with pytest.raises(ConfigError, match="unknown config key 'split_ratee'"):
        load_config(KEConfig, path)
    with pytest.raises(ConfigError, match="config key 'scheme': expected one of"):
        load_config(KEConfig, None, ["scheme=channel"])
    with pytest.raises(ValueError, match="config key 'split_rate' must be in \\(0, 1\\], got 1.5"):
        KEConfig(split_rate=1.5).validate()


def test_digits_loader_on_generated_file(tmp_path):
    root = write_digits(tmp_path)
    train = get_dataset("digits", "train", root=root)
    test = get_dataset("digits", "test", root=root)
    assert len(train) == 80 and len(test) == 40 and train.images.shape[1:] == (1, 8, 8)
    assert torch.equal(torch.bincount(test.labels), torch.full((10,), 4))
    assert train.images.max() == 1.0 and train.images.min() == -1.0 and train.num_classes == 10
    split = stratified_split(np.repeat(np.arange(10), 12))
    assert len(np.intersect1d(split["train"], split["test"])) == 0
    bad = tmp_path / "bad"
    (bad / "digits").mkdir(parents=True)
    (bad / "digits" / "digits.csv.gz").write_bytes(gzip.compress(b"1,2,3\n"))
    with pytest.raises(ValueError, match="expected rows of 64 pixels \\+ label"):
        get_dataset("digits", "train", root=bad)
    with pytest.raises(FileNotFoundError, match="efficientdl data fetch digits"):
        get_dataset("digits", "train", root=tmp_path / "none")


def test_cli_train_and_resume(tmp_path, capsys):
    root = write_digits(tmp_path / "data")
    run_dir = tmp_path / "run"
    args = ["ke", "train", "--config", "ke/demo", "--run-dir", str(run_dir),
            "--set", f"data_root={root}", "--set", "per_class=4", "--set", "epochs=2",
            "--set", "width=4", "--set", "generations=2", "--set", "threads=1"]  # fmt: skip
    assert main(args) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["generations"] == 2 and len(summary["accuracy"]["fit"]) == 2
    for name in ("report.md", "generations.png", "history.csv", "summary.json", "ke.json"):
        assert (run_dir / name).exists(), name
    assert "| 2 |" in (run_dir / "report.md").read_text()
    assert main(args) == 2  # an existing run is never silently restarted
    assert "already holds a run; continue it with --resume" in capsys.readouterr().err
    resume = args + ["--resume"]
    assert main(resume + ["--set", "generations=3"]) == 0  # extends a finished run
    assert len(json.loads(capsys.readouterr().out)["accuracy"]["dense"]) == 3
    assert main(resume + ["--set", "generations=3", "--set", "split_rate=0.3"]) == 2
    assert "config key 'split_rate' differs: stored 0.5, new 0.3" in capsys.readouterr().err
    assert main(["ke", "train", "--config", "ke/demo", "--set", "arm=best"]) == 2
    assert "config key 'arm'" in capsys.readouterr().err
    bench = ["ke", "bench", "--config", "ke/demo", "--set", "width=4",
             "--input-size", "8", "--batch", "1", "2", "--runs", "2"]  # fmt: skip
    assert main(bench) == 0
    out = capsys.readouterr().out
    rows = json.loads(out[out.index("{") :])["rows"]
    assert [r["net"] for r in rows] == ["dense", "slim sr=0.5"]
    assert rows[1]["params"] < rows[0]["params"] and rows[1]["cpu_ms_b2"] > 0


def test_fetch_digits_from_a_faked_wheel(tmp_path, monkeypatch):
    import importlib
    import subprocess
    import zipfile

    fetch_module = importlib.import_module("efficientdl.data.fetch")
    payload = (write_digits(tmp_path / "src") / "digits" / "digits.csv.gz").read_bytes()
    calls = []

    def fake_pip(cmd, *, cwd=None, **kwargs):
        calls.append(cmd)
        dest = cmd[cmd.index("-d") + 1]
        with zipfile.ZipFile(f"{dest}/scikit_learn-9.9-py3-none-any.whl", "w") as wheel:
            wheel.writestr("sklearn/datasets/data/digits.csv.gz", payload)
        return subprocess.CompletedProcess(cmd, 0, stdout="", stderr="")

    monkeypatch.setattr(fetch_module.subprocess, "run", fake_pip)
    folder = fetch_module.fetch("digits", dest=tmp_path / "cache")
    assert (folder / "digits.csv.gz").read_bytes() == payload
    assert calls[0][1:5] == ["-m", "pip", "download", "--no-deps"] and "scikit-learn" in calls[0]
    assert len(get_dataset("digits", "test", root=tmp_path / "cache")) == 40
    fetch_module.fetch("digits", dest=tmp_path / "cache")  # cached: no second download
    assert len(calls) == 1


def test_cskd_training_runs():
    from conftest import toy_data
    from efficientdl.knowledge_evolution import recipe_train_fn
    from efficientdl.knowledge_evolution.driver import GenerationContext
    from efficientdl.models import small_cnn

    cfg = KEConfig(epochs=2, batch_size=8, lr=0.05, cskd=True, label_smoothing=0.0,
                   progress=False)  # fmt: skip
    model = small_cnn(4, width=4)
    ctx = GenerationContext(1, 1, 0, torch.Generator().manual_seed(0), {}, None)
    out = recipe_train_fn(cfg, toy_data(6, 0), device="cpu")(model, ctx)
    assert out["epochs"] == 2 and math.isfinite(out["train_loss"])
