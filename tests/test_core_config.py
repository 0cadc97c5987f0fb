"""Config loading, overrides and checkpoints (efficientdl.core)."""

import dataclasses
import random
from pathlib import Path

import numpy as np
import pytest
import torch

from efficientdl.core import (
    ConfigError,
    apply_overrides,
    load_checkpoint,
    load_config,
    rng_state,
    save_checkpoint,
    set_rng_state,
)
from efficientdl.snn.models import TSSLBPRecipe

CONFIGS = sorted(Path(__file__).resolve().parents[1].joinpath("configs", "snn").glob("*.yaml"))


@dataclasses.dataclass
class Inner:
    depth: int = 2
    name: str = "x"


@dataclasses.dataclass
class Outer:
    lr: float = 0.1
    steps: int = 3
    flag: bool = False
    subset: int | None = None
    inner: Inner = dataclasses.field(default_factory=Inner)


def test_yaml_and_overrides(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("lr: 1\ninner:\n  depth: 5\n")
    cfg = load_config(Outer, path, ["steps=7", "inner.name=abc", "flag=true", "subset=null"])
    assert cfg == Outer(lr=1.0, steps=7, flag=True, subset=None, inner=Inner(depth=5, name="abc"))
    assert isinstance(cfg.lr, float)


@pytest.mark.parametrize(
    "override, message",
    [
        ("stepz=3", "unknown config key 'stepz'"),
        ("inner.width=3", "unknown config key 'inner.width'"),
        ("steps=1.5", "config key 'steps': expected int"),
        ("flag=3", "config key 'flag': expected bool"),
        ("lr=fast", "config key 'lr': expected float"),
        ("subset=many", "config key 'subset'"),
        ("noequals", "must look like key=value"),
    ],
)
def test_bad_overrides_name_the_key(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config(Outer, None, [override])


def test_missing_config_file(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(Outer, tmp_path / "nope.yaml")


def test_apply_overrides_does_not_mutate():
    data = {"a": {"b": 1}}
    assert apply_overrides(data, ["a.b=2"]) == {"a": {"b": 2}}
    assert data == {"a": {"b": 1}}


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.stem)
def test_every_shipped_snn_config_loads(path):
    load_config(TSSLBPRecipe, path).validate()


def test_recipe_validation_names_the_field():
    with pytest.raises(ValueError, match="batch_size"):
        load_config(TSSLBPRecipe, None, ["batch_size=0"]).validate()
    with pytest.raises(ValueError, match="loss"):
        load_config(TSSLBPRecipe, None, ["loss=mse"]).validate()


def test_checkpoint_roundtrip_and_rng(tmp_path):
    random.seed(1), np.random.seed(1), torch.manual_seed(1)
    state = rng_state()
    expected = (random.random(), np.random.rand(), torch.rand(1).item())
    path = save_checkpoint(tmp_path / "sub" / "ck.pt", {"rng": state, "w": torch.arange(3)})
    assert not list(path.parent.glob(".*.tmp"))  # temp file renamed away
    loaded = load_checkpoint(path)
    set_rng_state(loaded["rng"])
    assert (random.random(), np.random.rand(), torch.rand(1).item()) == expected
    assert torch.equal(loaded["w"], torch.arange(3))
    with pytest.raises(FileNotFoundError, match="nope.pt"):
        load_checkpoint(tmp_path / "nope.pt")


def test_failed_save_keeps_previous_checkpoint(tmp_path):
    path = save_checkpoint(tmp_path / "ck.pt", {"v": 1})

    class Unpicklable:
        def __reduce__(self):
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        save_checkpoint(path, {"v": Unpicklable()})
    assert load_checkpoint(path)["v"] == 1
    assert not list(tmp_path.glob(".*.tmp"))


def test_combine_reports_relinks_images_and_demotes_headings(tmp_path):
    from efficientdl.core.report import combine_reports

    for name in ("snn", "ke"):
        (tmp_path / "demo" / name).mkdir(parents=True)
        (tmp_path / "demo" / name / "report.md").write_text(
            f"# {name}\n\n![plot](plot.png) [site](https://x.org/a.png)\n## sub\n"
        )
    out = combine_reports(
        [tmp_path / "demo" / "snn", tmp_path / "demo" / "ke"], tmp_path / "demo" / "report.md"
    )
    text = out.read_text()
    assert "## snn" in text and "### sub" in text and "\n# snn" not in text
    assert "![plot](snn/plot.png)" in text and "![plot](ke/plot.png)" in text
    assert "(https://x.org/a.png)" in text
    with pytest.raises(FileNotFoundError, match="missing/report.md"):
        combine_reports([tmp_path / "missing"], tmp_path / "r.md")
