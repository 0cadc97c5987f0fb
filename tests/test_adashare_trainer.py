"""Trainer: schedule bookkeeping, exact resume in every phase, test-split isolation."""

import json
import math

import pytest
import torch

from adashare_support import TINY
from efficientdl.adashare.config import AdaShareConfig
from efficientdl.adashare.model.policy import Policy
from efficientdl.adashare.phases import AdaShareRun, search, training
from efficientdl.core import load_checkpoint
from efficientdl.core.config import apply_overrides, from_dict

pytestmark = pytest.mark.usefixtures("one_thread")

BASE = apply_overrides(
    TINY,
    [
        "seed=3",
        "data.tasks=[seg, normal, depth]",
        "data.num_train=32",
        "data.num_val=8",
        "data.num_test=8",
        "train.eval_batch_size=8",
        "train.total_iters=40",
        "train.warmup_iters=4",
        "train.lr=0.01",
        "train.backbone_lr=0.005",
        "train.policy_lr=0.003",
        "train.decay_lr_freq=3",
        "train.decay_lr_rate=0.5",
        "train.ckpt_every=3",
        "sample.num=2",
        "retrain.iters=6",
        "retrain.val_freq=3",
    ],
)
"""Three tasks on 32 scenes: the tiny config with enough iterations to test the schedule."""


def config(*overrides):
    return from_dict(AdaShareConfig, apply_overrides(BASE, overrides))


class NoTest:
    """A test split that must not be read before the final evaluation."""

    def __len__(self):
        raise AssertionError("test split touched")

    def __getitem__(self, i):
        raise AssertionError("test split touched")


def trainer(run_dir, *overrides):
    tr = AdaShareRun(config(*overrides), run_dir=run_dir)
    tr.splits["test"] = NoTest()
    return tr


def test_schedule_bookkeeping(tmp_path):
    tr = trainer(tmp_path)
    records = []
    tr.callbacks.append(records.append)
    tr.search()
    tr.sample()
    tr.retrain_all()
    warm = [r for r in records if r["phase"] == "warmup"]
    assert [r["iter"] for r in warm] == [1, 2, 3, 4]
    assert all(r["optimizer"] == "Adam" and r["half"] == "train" for r in warm)
    assert [r["lr"] for r in warm] == [0.01, 0.01, 0.01, 0.005]  # StepLR(3, 0.5)
    assert [r["backbone_lr"] for r in warm] == [0.005, 0.005, 0.005, 0.0025]
    found = [r for r in records if r["phase"].startswith("search")]
    assert [r["iter"] for r in found] == list(range(5, 41))
    for k, r in enumerate(found):
        cycle, within = divmod(k, 4)
        weight = within < 2
        assert r["phase"] == ("search_weight" if weight else "search_policy")
        assert r["half"] == ("train1" if weight else "train2")
        assert r["optimizer"] == ("SGD" if weight else "Adam")
        assert r["lr"] == (0.01 if weight else 0.003)  # SGD at `lr`, constant; Adam `policy_lr`
        assert r["cycle"] == cycle
        assert r["n_unlocked"] == min(8, cycle + 1)
        assert r["tau"] == pytest.approx(5.0 * 0.965**cycle, rel=1e-12)
    retrain = [r for r in records if r["phase"] == "retrain_00"]
    assert [r["lr"] for r in retrain] == [0.01] * 3 + [0.005] * 3
    # validations: best only once n = L (cycle ≥ 7)
    history = json.loads((tmp_path / "logits_history.json").read_text())  # run-folder root
    assert [h["n_unlocked"] for h in history] == [1, 2, 3, 4, 5, 6, 7, 8, 8, 8]  # + final
    best = load_checkpoint(tmp_path / "search" / "best.pt")
    assert best["state"]["cycle"] >= 7
    assert len(list((tmp_path / "policies").glob("policy_*.json"))) == 2
    assert (tmp_path / "policy_probs.png").is_file() and (tmp_path / "policy.png").is_file()


def test_no_best_before_all_blocks_unlock(tmp_path):
    tr = trainer(tmp_path, "train.total_iters=20")
    assert tr.search()["has_best"] is False
    assert not (tmp_path / "search" / "best.pt").exists()
    assert tr.searched_model()[1].endswith("latest.pt")


class Crash(Exception):
    pass


def _crash_after(monkeypatch, owner, name, calls):
    real, count = getattr(owner, name), {"n": 0}

    def wrapper(*args, **kwargs):
        count["n"] += 1
        if count["n"] == calls:
            raise Crash
        return real(*args, **kwargs)

    monkeypatch.setattr(owner, name, wrapper)


def _state(path):
    saved = load_checkpoint(path)
    return saved["model"], saved.get("state")


def _assert_same_model(a, b):
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    folder = tmp_path_factory.mktemp("full")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    full = trainer(folder)
    full.retrain(full.sample()[0], 0)
    torch.set_num_threads(threads)
    return folder


@pytest.mark.parametrize(
    "phase, calls", [("warmup", 3), ("search", 7), ("search", 20), ("retrain", 5)]
)
def test_resume_after_crash_is_bit_exact(uninterrupted, tmp_path, monkeypatch, phase, calls):
    broken = trainer(tmp_path)
    if phase == "search":
        _crash_after(monkeypatch, search.Search, "_step", calls)
    else:  # train_fixed's loss calls: 4 warm-up iterations come before the re-training
        _crash_after(
            monkeypatch, training, "weighted_loss", calls + (4 if phase == "retrain" else 0)
        )
    with pytest.raises(Crash):
        broken.retrain(broken.sample()[0], 0)
    monkeypatch.undo()
    again = trainer(tmp_path)
    again.retrain(again.sample()[0], 0)
    for rel in (
        "warmup/checkpoint.pt",
        "search/latest.pt",
        "search/best.pt",
        "retrain/sample_00/checkpoint.pt",
        "retrain/sample_00/best.pt",
    ):
        a, sa = _state(uninterrupted / rel)
        b, sb = _state(tmp_path / rel)
        _assert_same_model(a, b)
        assert sa == sb
    m_full = json.loads((uninterrupted / "metrics.json").read_text())
    m_crash = json.loads((tmp_path / "metrics.json").read_text())
    assert m_full == m_crash


def test_pipeline_end_to_end_with_baselines(tmp_path):
    tr = AdaShareRun(
        config(
            "baselines=[single_task, multi_task, random_policy, stochastic_depth]",
            "train.total_iters=36",
            "random_policy.match_counts=true",
        ),
        run_dir=tmp_path,
    )
    out = tr.pipeline()
    runs = out["runs"]
    assert set(runs) == {
        "adashare",
        "single_task",
        "multi_task",
        "random_policy",
        "stochastic_depth",
    }
    assert runs["single_task"]["backbone_units"] == 3 and runs["adashare"]["backbone_units"] == 1
    assert runs["single_task"]["params"] > 2.5 * runs["multi_task"]["params"]
    for name in ("results.json", "results.csv", "results.md", "report.md", "policy.png"):
        assert (tmp_path / name).is_file()
    assert "![policy](policy.png)" in (tmp_path / "report.md").read_text()
    ada = json.loads((tmp_path / "adashare_result.json").read_text())
    assert ada["selected"] == max(range(2), key=lambda i: ada["val_scores"][i])
    assert set(ada["test_mean"]) == {"seg", "normal", "depth"}
    assert tr.evaluate("test") == ada["test"]  # the selected checkpoint, tested again
    rand = json.loads((tmp_path / "baselines" / "random_policy" / "result.json").read_text())
    assert Policy.from_dict(rand["policy"]).num_executed() == ada["num_executed"]
    # the results.json of this run serves as selection reference: its single-task val metrics
    single = json.loads((tmp_path / "baselines" / "single_task" / "result.json").read_text())
    other = AdaShareRun(
        config(f"selection_reference={tmp_path / 'results.json'}"), run_dir=tmp_path / "other"
    )
    assert other.reference() == single["val"]


def test_selection_reference_without_single_task_val_is_a_clear_error(tmp_path):
    results = tmp_path / "run" / "results.json"
    results.parent.mkdir()
    results.write_text(json.dumps({"image_size": [16, 16], "runs": {"adashare": {"test": {}}}}))
    tr = AdaShareRun(config(f"selection_reference={results}"), run_dir=tmp_path / "new")
    with pytest.raises(ValueError, match=r"results.json.*baselines/single_task/result.json"):
        tr.reference()


def test_nan_loss_stops_with_the_iteration(tmp_path, monkeypatch):
    tr = trainer(tmp_path)
    real = training.weighted_loss

    def nan_loss(*args):
        loss, parts = real(*args)
        return loss * math.nan, parts

    monkeypatch.setattr(training, "weighted_loss", nan_loss)
    with pytest.raises(RuntimeError, match="warmup: loss became nan at iteration 1"):
        tr.warmup()


def test_config_errors():
    from efficientdl.core.config import ConfigError

    with pytest.raises(ConfigError, match="train.warmup_iters"):
        config("train.warmup_iters=100").validate()
    with pytest.raises(ConfigError, match="unknown 'fancy'"):
        config("baselines=[fancy]").validate()
    with pytest.raises(ConfigError, match="unknown task"):
        config("train.lambdas={albedo: 2}").validate()
    with pytest.raises(ConfigError, match="expected one of"):
        config("model.backbone=resnet50")
    with pytest.raises(ConfigError, match="unknown config key 'random_match_counts'"):
        config("random_match_counts=true")
    with pytest.raises(ConfigError, match="unknown config key 'random_policy.count'"):
        config("random_policy.count=true")
    assert config("random_policy.match_counts=true").random_policy.match_counts


def test_search_stated_by_cycles_and_final_temperature(tmp_path):
    """9 cycles ending at τ = 0.02: the C-th policy phase runs at exactly tau_final, the decay is
    the closed form (0.02/5)^(1/8), and done.json holds the select-probability histogram of the
    final logits (checked against numpy's histogram) beside its picture."""
    import numpy as np

    tr = trainer(tmp_path, "train.search_cycles=9", "train.tau_final=0.02")
    records = []
    tr.callbacks.append(records.append)
    done = tr.search()
    decay = (0.02 / 5.0) ** (1 / 8)
    policy = [r for r in records if r["phase"] == "search_policy"]
    assert sorted({r["cycle"] for r in policy}) == list(range(9))
    for r in policy:
        assert r["tau"] == pytest.approx(5.0 * decay ** r["cycle"], rel=1e-12)
    assert policy[-1]["tau"] == pytest.approx(0.02, rel=1e-12)
    assert done["last_policy_tau"] == pytest.approx(0.02, rel=1e-12)
    stored = json.loads((tmp_path / "search" / "done.json").read_text())
    logits = load_checkpoint(tmp_path / "search" / "latest.pt")["model"]["policy_logits"]
    alpha = torch.softmax(logits.double(), -1)[..., 0].numpy().ravel()
    expected, _ = np.histogram(alpha, bins=10, range=(0, 1))
    assert stored["select_histogram"]["counts"] == expected.tolist()
    assert stored["select_histogram"]["total"] == 3 * 8
    assert (tmp_path / "search" / "select_probs.png").is_file()


def test_schedule_config_errors():
    from efficientdl.core.config import ConfigError

    with pytest.raises(ConfigError, match="9 cycles of 2 \\+ 2 iterations after 4 .* make 40"):
        config("train.search_cycles=9", "train.total_iters=44").validate()
    with pytest.raises(ConfigError, match="'train.tau_final': needs train.search_cycles"):
        config("train.tau_final=0.1").validate()
    with pytest.raises(ConfigError, match="'train.tau_final': must be in \\(0, tau0=5.0\\]"):
        config("train.search_cycles=9", "train.tau_final=6").validate()
    with pytest.raises(ConfigError, match="needs train.weight_iters"):
        config("train.search_cycles=9", "train.weight_iters=null").validate()
    assert config("train.search_cycles=9").train.cycle_decay() == 0.965
