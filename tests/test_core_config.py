"""Config loading, overrides and checkpoints (efficientdl.core)."""

import dataclasses
import random
from pathlib import Path

import numpy as np
import pytest
import torch

from efficientdl.core import (
    ConfigError,
    RunFolderError,
    apply_overrides,
    load_checkpoint,
    load_config,
    rng_state,
    save_checkpoint,
    set_rng_state,
)
from efficientdl.core.recipes import list_recipes, resolve_recipe
from efficientdl.snn.config import TSSLBPRecipe

CONFIGS = [resolve_recipe(name, "snn") for name in list_recipes("snn")]


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
    with pytest.raises(RunFolderError, match="nope.pt does not exist"):
        load_checkpoint(tmp_path / "nope.pt")


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


# --- number spellings (YAML 1.2 / Python) and malformed YAML --------------------------------

FLOAT_SPELLINGS = [
    ("1e-3", 1e-3),
    ("1E6", 1e6),
    ("5e-4", 5e-4),
    (".5", 0.5),
    ("1.0e-3", 1e-3),
    ("-2.5E+2", -250.0),
]


@pytest.mark.parametrize("text, value", FLOAT_SPELLINGS, ids=[t for t, _ in FLOAT_SPELLINGS])
def test_float_spellings_in_a_yaml_file(tmp_path, text, value):
    path = tmp_path / "c.yaml"
    path.write_text(f"lr: {text}\nsteps: 1e4\ninner:\n  depth: 3\n")
    cfg = load_config(Outer, path)
    assert cfg.lr == value and type(cfg.lr) is float
    assert cfg.steps == 10000 and type(cfg.steps) is int
    assert cfg.inner.depth == 3 and type(cfg.inner.depth) is int


@pytest.mark.parametrize("text, value", FLOAT_SPELLINGS, ids=[t for t, _ in FLOAT_SPELLINGS])
def test_float_spellings_in_set_overrides(text, value):
    data = apply_overrides({"lr": 0.1}, [f"lr={text}", "steps=1e4", "inner.depth=2E1"])
    assert data == {"lr": value, "steps": 1e4, "inner": {"depth": 20.0}}
    assert type(data["lr"]) is float
    cfg = load_config(Outer, None, [f"lr={text}", "steps=1e4", "inner.depth=2E1"])
    assert cfg.lr == value and type(cfg.lr) is float
    assert (cfg.steps, cfg.inner.depth) == (10000, 20)
    assert type(cfg.steps) is int and type(cfg.inner.depth) is int


def test_plain_ints_and_strings_keep_their_type():
    data = apply_overrides({}, ["a=7", "b=1_000", "c=abc", "d=1.2.3", "e=true", "f=[1, 2.5e1]"])
    assert data == {"a": 7, "b": 1000, "c": "abc", "d": "1.2.3", "e": True, "f": [1, 25.0]}
    assert type(data["a"]) is int and type(data["b"]) is int


@pytest.mark.parametrize("spelling", ["1.5", "2.5e0", "1e-1"])
def test_a_non_integral_float_for_an_int_field_names_the_key(tmp_path, spelling):
    with pytest.raises(ConfigError, match=r"config key 'steps': expected int, got 0?\.?[0-9.]+"):
        load_config(Outer, None, [f"steps={spelling}"])
    path = tmp_path / "c.yaml"
    path.write_text(f"inner:\n  depth: {spelling}\n")
    with pytest.raises(ConfigError, match="config key 'inner.depth': expected int"):
        load_config(Outer, path)


@pytest.mark.parametrize(
    "text, line, col, problem",
    [
        ("lr: 0.1\nsteps: 3: 4\n", 2, 9, "mapping values are not allowed here"),
        ("lr: 0.1\ninner:\n\tdepth: 5\n", 3, 1, "found character '\\t' that cannot start"),
        ("lr: 0.1\ninner: [1, 2\nsteps: 3\n", 3, 6, "expected ',' or ']'"),
        ("lr: 0.1\n  steps: 3\n", 2, 8, "mapping values are not allowed here"),
    ],
    ids=["two-colons", "tab", "open-list", "bad-indent"],
)
def test_malformed_yaml_names_file_line_and_column(tmp_path, text, line, col, problem):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        load_config(Outer, path)
    message = str(info.value)
    assert message.startswith(f"{path}:{line}:{col}: "), message
    assert problem in message
    assert "\n" not in message


def test_malformed_set_value_names_the_override():
    with pytest.raises(ConfigError, match=r"^--set lr:1:\d+: "):
        apply_overrides({}, ["lr=[1, 2"])


def test_a_yaml_file_that_is_not_a_mapping(tmp_path):
    path = tmp_path / "list.yaml"
    path.write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match=f"{path} must hold a mapping, got list"):
        load_config(Outer, path)


def test_odd_dotted_tokens_stay_strings_instead_of_crashing():
    # `._` looks like the start of `.5` but is no number: a string, not a ValueError traceback
    assert apply_overrides({}, ["name=._", "other=."]) == {"name": "._", "other": "."}


# --- packaged recipes --------------------------------------------------------------------------


def _recipe_class(method):
    if method == "snn":
        return TSSLBPRecipe
    if method == "ke":
        from efficientdl.knowledge_evolution.config import KEConfig

        return KEConfig
    from efficientdl.adashare.config import AdaShareConfig

    return AdaShareConfig


def test_every_method_ships_recipes():
    names = list_recipes()
    assert names == sorted(names)
    assert {n.split("/")[0] for n in names} == {"snn", "ke", "adashare"}
    for must in ("snn/mnist_cnn", "snn/demo", "ke/digits_small", "ke/demo",
                 "adashare/procedural_demo"):  # fmt: skip
        assert must in names
    assert list_recipes("ke") == [n for n in names if n.startswith("ke/")]


@pytest.mark.parametrize("name", list_recipes())
def test_every_packaged_recipe_resolves_and_loads(name):
    method, short = name.split("/")
    path = resolve_recipe(name, method)
    assert path.is_file() and path.name == f"{short}.yaml" and path.parent.name == method
    assert resolve_recipe(short, method) == path  # the short name too
    config = load_config(_recipe_class(method), path)
    if hasattr(config, "validate"):
        config.validate()


@pytest.mark.parametrize(
    "spec, method, expected",
    [
        ("configs/snn/demo.yaml", "snn", "snn/demo"),  # the repo layout older READMEs used
        ("configs/ke/demo.yaml", "ke", "ke/demo"),
        ("demo.yaml", "snn", "snn/demo"),
        ("adashare/procedural_demo", "snn", "adashare/procedural_demo"),
        ("configs/adashare/procedural_demo.yaml", "adashare", "adashare/procedural_demo"),
    ],
)
def test_older_spellings_resolve_to_the_packaged_file(spec, method, expected):
    path = resolve_recipe(spec, method)
    assert (path.parent.name, path.stem) == tuple(expected.split("/"))
    assert "efficientdl" in path.parts and "configs" in path.parts


def test_a_file_path_wins_over_a_packaged_name(tmp_path, monkeypatch):
    (tmp_path / "mnist_cnn").write_text("epochs: 1\n")
    monkeypatch.chdir(tmp_path)
    assert resolve_recipe("mnist_cnn", "snn") == Path("mnist_cnn")
    assert resolve_recipe(tmp_path / "mnist_cnn", "snn") == tmp_path / "mnist_cnn"


def test_an_unknown_recipe_lists_the_packaged_names():
    with pytest.raises(ConfigError) as info:
        resolve_recipe("mnist_cnnn", "snn")
    message = str(info.value)
    assert message.startswith("--config mnist_cnnn: no such file and no packaged snn recipe")
    packaged = [n.split("/")[1] for n in list_recipes("snn")]
    assert f"packaged: {', '.join(packaged)}" in message
    assert "digits_small" not in message  # only the method's own recipes
    assert "efficientdl configs" in message and "\n" not in message
    with pytest.raises(ConfigError, match="no packaged ke recipe"):
        resolve_recipe("nope/demo", "ke")


def test_the_configs_command_lists_the_recipes(cli, tmp_path):
    proc = cli("configs", cwd=tmp_path)  # `configs METHOD`: tests/test_core_cli.py
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == list_recipes()
    assert list(tmp_path.iterdir()) == []


def test_a_config_file_that_is_not_text_is_a_config_error(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_bytes(b"lr: \xff\xfe 0.1\n")
    with pytest.raises(ConfigError, match=f"config file {path} cannot be read as text"):
        load_config(Outer, path)


def test_non_string_yaml_keys_are_unknown_keys_not_a_crash(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("1: x\nzz: 2\nlr: 0.5\n")
    with pytest.raises(ConfigError, match="unknown config key '1' for Outer"):
        load_config(Outer, path)


@pytest.mark.parametrize("device", ["gpu", "cuda:x", "cuda"])
def test_a_device_that_cannot_be_used_is_a_config_error(device):
    from efficientdl.core.runtime import select_device

    if device == "cuda" and torch.cuda.is_available():
        pytest.skip("CUDA is available here")
    with pytest.raises(ConfigError, match=f"config key 'device': '{device}'"):
        select_device(device)
    assert select_device("cpu") == torch.device("cpu")
