"""Tasks and datasets of your own through the AdaShare API: a toy brightness-regression task and a
quadrant-classification task trained end to end (search, sampling, re-training, selection,
baselines, an ablation, evaluation), Δ_T with the declared metric directions against a
closed form, the metrics in the result files, and the one-line errors of a wrong definition."""

import csv
import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from adashare_support import TINY
from efficientdl.adashare import AdaShareRun, Metric, Task
from efficientdl.adashare.config import AdaShareConfig
from efficientdl.adashare.objectives.metrics import delta_t
from efficientdl.adashare.objectives.tasks import TaskMeter, TaskSpec
from efficientdl.adashare.phases import build_data
from efficientdl.core import ConfigError, DataError
from efficientdl.core.config import from_dict

pytestmark = pytest.mark.usefixtures("one_thread")


class Quadrants:
    """Noise images 3×16×16 with a bright 4×4 patch in one quadrant: (image, {brightness,
    quadrant}) where brightness is the image mean and quadrant the patch's quadrant 0..3."""

    def __init__(self, n: int, seed: int) -> None:
        rng = np.random.default_rng(seed)
        self.items = []
        for _ in range(n):
            image = rng.normal(0.0, 0.3, size=(3, 16, 16))
            q = int(rng.integers(4))
            y, x = 8 * (q // 2) + 2, 8 * (q % 2) + 2
            image[:, y : y + 4, x : x + 4] += 2.0
            self.items.append((image, {"brightness": np.float32(image.mean()), "quadrant": q}))

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int):
        return self.items[i]


def mae(pred, target):
    return (pred[:, 0] - target).abs().mean()


class Accuracy:
    """A meter of our own: pooled accuracy in % and the error rate (a second metric)."""

    def __init__(self) -> None:
        self.correct = self.total = 0

    def update(self, pred, target, mask=None):
        self.correct += int((pred.argmax(1) == target).sum())
        self.total += len(target)

    def compute(self):
        acc = 100.0 * self.correct / self.total
        return {"acc": acc, "error": 100.0 - acc}


def toy_tasks():
    return [
        Task(
            "brightness",
            1,
            loss=lambda pred, target: F.mse_loss(pred[:, 0], target),
            metrics={"mae": Metric(mae, higher_is_better=False)},
        ),
        Task(
            "quadrant",
            4,
            loss=lambda pred, target: F.cross_entropy(pred, target),
            metrics={
                "acc": Metric(higher_is_better=True),
                "error": Metric(higher_is_better=False, in_delta=False),
            },
            weight=0.5,
            meter=Accuracy,
        ),
    ]


def toy_config(**extra) -> AdaShareConfig:
    data = {k: v for k, v in TINY.items() if k != "data"}
    data["model"] = {"backbone": "resnet18", "head": "linear", "width": 4}
    return from_dict(AdaShareConfig, data | extra)


def toy_data():
    return {"train": Quadrants(16, 0), "val": Quadrants(8, 1), "test": Quadrants(16, 2)}


def closed_form_delta(results: dict, single: dict) -> float:
    """Δ_T written out for the toy tasks: brightness mae (lower is better), quadrant acc
    (higher is better); the quadrant error rate is reported but not counted."""
    b = -(results["brightness"]["mae"] - single["brightness"]["mae"]) / single["brightness"]["mae"]
    q = (results["quadrant"]["acc"] - single["quadrant"]["acc"]) / single["quadrant"]["acc"]
    return 100.0 * (b + q) / 2


def test_delta_t_uses_the_declared_directions():
    spec = TaskSpec(tuple(toy_tasks()))
    assert spec.higher_is_better == {"brightness": {"mae": False}, "quadrant": {"acc": True}}
    assert spec.lambdas == {"brightness": 1.0, "quadrant": 0.5}
    single = {"brightness": {"mae": 0.20}, "quadrant": {"acc": 50.0, "error": 50.0}}
    better = {"brightness": {"mae": 0.15}, "quadrant": {"acc": 40.0, "error": 60.0}}
    # brightness: −(0.15 − 0.20)/0.20 = +25 %; quadrant: (40 − 50)/50 = −20 %; mean +2.5 %
    out = delta_t(better, single, spec.higher_is_better)
    assert out["per_task"] == pytest.approx({"brightness": 25.0, "quadrant": -20.0})
    assert out["delta_t"] == pytest.approx(2.5) == pytest.approx(closed_form_delta(better, single))


def test_a_toy_custom_task_trains_end_to_end(tmp_path):
    baselines = ["single_task", "multi_task", "stochastic_depth", "no_sharing"]
    run = AdaShareRun(
        toy_config(baselines=baselines), run_dir=tmp_path, tasks=toy_tasks(), data=toy_data()
    )
    assert run.cfg.data.dataset == "custom"
    assert run.cfg.data.tasks == ["brightness", "quadrant"]
    assert run.build_model().stem[0].in_channels == 3
    out = run.pipeline()
    assert set(out["runs"]) == {"adashare", *baselines}
    single = out["runs"]["single_task"]["test"]
    for name, row in out["runs"].items():
        assert set(row["test"]) == {"brightness", "quadrant"}, name
        assert {"mae", "loss"} <= set(row["test"]["brightness"]), name
        assert {"acc", "error", "loss"} <= set(row["test"]["quadrant"]), name
        q = row["test"]["quadrant"]
        assert q["acc"] + q["error"] == pytest.approx(100.0)
        want = closed_form_delta(row["test"], single)
        assert row["delta_t"] == pytest.approx(want, rel=1e-9, abs=1e-9), (name, row)
    assert out["runs"]["single_task"]["delta_t"] == pytest.approx(0.0, abs=1e-12)
    stored = json.loads((tmp_path / "results.json").read_text())
    assert stored["runs"]["adashare"]["test"] == out["runs"]["adashare"]["test"]
    with open(tmp_path / "results.csv", newline="") as handle:
        rows = {(r["run"], r["task"], r["metric"]) for r in csv.DictReader(handle)}
    assert {("adashare", "brightness", "mae"), ("multi_task", "quadrant", "acc")} <= rows
    table = (tmp_path / "results.md").read_text()
    assert "brightness mae ↓" in table and "quadrant acc ↑" in table
    assert "quadrant error" not in table  # reported in the files, not a Δ_T column
    assert (
        json.loads((tmp_path / "config.json").read_text())["config"]["data"]["dataset"] == "custom"
    )
    assert run.evaluate("test") == out["runs"]["adashare"]["test"]


def test_dict_items_masks_and_upsampled_dense_metrics():
    """A dense task of dict items with a mask: the loss gets the mask, a metric fn gets the
    prediction upsampled to the target size, and the result is the same at any batch size."""
    seen = {}

    def masked_l1(pred, target, mask):
        seen["loss"] = (pred.shape, mask.shape)
        return pred.abs().mean()

    def per_image_error(pred, target, mask):
        seen["metric"] = pred.shape
        err = ((pred - target).abs()[:, 0] * mask).flatten(1).sum(1) / mask.flatten(1).sum(1)
        return err.mean()

    task = Task("height", 1, loss=masked_l1, metrics={"err": Metric(per_image_error, False)})
    rng = np.random.default_rng(0)
    pred = torch.from_numpy(rng.normal(size=(6, 1, 4, 4)))
    target = torch.from_numpy(rng.normal(size=(6, 1, 16, 16)))
    mask = torch.from_numpy(rng.random((6, 16, 16)) > 0.3)
    mask[2, :12] = False  # very different valid counts per image
    up = pred.repeat_interleave(4, -2).repeat_interleave(4, -1)  # nearest ×4
    per_image = [((up[i] - target[i]).abs()[0][mask[i]]).mean() for i in range(6)]
    for batch in (1, 4, 6):
        meter = TaskMeter(task)
        for s in range(0, 6, batch):
            sl = slice(s, s + batch)
            meter.update(pred[sl], target[sl], mask[sl])
        assert meter.compute()["err"] == pytest.approx(float(np.mean(per_image)), rel=1e-12)
    assert seen["metric"] == (6, 1, 16, 16)
    task.batch_loss(pred, {"height": target, "height_mask": mask})
    assert seen["loss"] == ((6, 1, 4, 4), (6, 16, 16))


def test_wrong_definitions_are_one_line_errors(tmp_path):
    with pytest.raises(ConfigError, match="task 'depth2' has no loss"):
        Task("depth2", 1, metrics={"mae": Metric(mae, higher_is_better=False)})
    with pytest.raises(ConfigError, match="metric 'mae' of task 'b' has no direction"):
        Task("b", 1, loss=F.l1_loss, metrics={"mae": Metric(mae)})
    with pytest.raises(ConfigError, match="metric 'mae' of task 'b' has no direction"):
        Task("b", 1, loss=F.l1_loss, metrics={"mae": mae})
    with pytest.raises(ConfigError, match="metric 'acc' of task 'b': give it a fn"):
        Task("b", 1, loss=F.l1_loss, metrics={"acc": Metric(higher_is_better=True)})
    with pytest.raises(ConfigError, match="task names must be unique"):
        TaskSpec((toy_tasks()[0], toy_tasks()[0]))

    class NoQuadrant(Quadrants):
        def __getitem__(self, i):
            image, targets = self.items[i]
            return image, {"brightness": targets["brightness"]}

    data = toy_data() | {"test": NoQuadrant(4, 2)}
    with pytest.raises(DataError, match="test item 0 has no target for task 'quadrant'") as err:
        AdaShareRun(toy_config(), run_dir=tmp_path / "a", tasks=toy_tasks(), data=data)
    assert "\n" not in str(err.value)
    with pytest.raises(ConfigError, match="'train.lambdas': tasks of your own carry"):
        cfg = toy_config(train=TINY["train"] | {"lambdas": {"quadrant": 2.0}})
        AdaShareRun(cfg, run_dir=tmp_path / "b", tasks=toy_tasks(), data=toy_data())
    with pytest.raises(ConfigError, match="expected the datasets"):
        data = {"train": Quadrants(16, 0)}
        AdaShareRun(toy_config(), run_dir=tmp_path / "c", tasks=toy_tasks(), data=data)
    # a stored custom run read without its tasks (e.g. from the CLI) says where they come from
    custom = from_dict(AdaShareConfig, {"data": {"dataset": "custom", "tasks": ["brightness"]}})
    with pytest.raises(ConfigError, match="'custom' run takes its tasks and datasets from the API"):
        build_data(custom)


def test_a_loss_that_is_not_a_scalar_tensor_is_named():
    task = Task(
        "b", 1, loss=lambda p, t: float((p - t).abs().mean()), metrics={"m": Metric(mae, False)}
    )
    with pytest.raises(ConfigError, match="the loss of task 'b' returned float"):
        task.batch_loss(torch.zeros(2, 1), {"b": torch.zeros(2)})


def test_the_shipped_datasets_tasks_are_task_instances():
    """NYUv2 tasks as `Task`s: λ from `train.lambdas`, the paper's Δ_T metrics, and a normal
    meter in the training split's normals encoding."""
    from efficientdl.adashare.objectives.metrics import DELTA_METRICS
    from efficientdl.adashare.objectives.tasks import task_spec

    class Train:
        task_channels = {"seg": 40, "normal": 3}
        normals_encoding = "official_raw"

    data = {"dataset": "nyu_v2", "tasks": ["seg", "normal"]}
    cfg = from_dict(AdaShareConfig, {"data": data, "train": {"lambdas": {"normal": 20}}})
    spec = task_spec(cfg, Train())
    assert all(isinstance(t, Task) for t in spec.definitions)
    assert spec.lambdas == {"seg": 1.0, "normal": 20.0}
    assert spec.channels == {"seg": 40, "normal": 3}
    assert spec.higher_is_better == {t: DELTA_METRICS["nyu"][t] for t in ("seg", "normal")}
    assert spec["normal"].meter().encoding == "official_raw"
    assert spec.kinds == {"seg": "seg", "normal": "normal"}
    assert spec.subset(["normal"]).tasks == ("normal",)
