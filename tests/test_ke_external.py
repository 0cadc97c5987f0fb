"""Outside models in KE: `model: torchvision:NAME` / `timm:NAME` with `model_kwargs`, their
errors, and the torchvision loader that copes with C operators that do not load.

The library paths are tested without torchvision or timm: fake modules put into `sys.modules`
(or a fake package on `sys.path`) build our own registry ResNet-18 through the libraries' entry
points (`torchvision.models.get_model`, `timm.create_model`). Where the real packages load, the
last tests build their models through the same config path."""

from __future__ import annotations

import math
import re
import sys
import types

import pytest
import torch
from torch import nn

from conftest import optional_module
from efficientdl.core.config import apply_overrides, from_dict
from efficientdl.core.errors import ConfigError
from efficientdl.knowledge_evolution import KEConfig, extract_slim, init_weights, masked_copy
from efficientdl.knowledge_evolution.experiment import build, check_data_shape, make_masks
from efficientdl.models import resnet18
from efficientdl.models.external import build_external, parse_spec, torchvision_models

pytestmark = pytest.mark.usefixtures("one_thread")


def _drop(prefix: str) -> None:
    for name in [m for m in sys.modules if m == prefix or m.startswith(prefix + ".")]:
        del sys.modules[name]


@pytest.fixture
def no_real_packages(monkeypatch):
    """Neither the real torchvision nor timm is imported by the test (restored afterwards)."""
    for prefix in ("torchvision", "timm"):
        for name in [m for m in sys.modules if m == prefix or m.startswith(prefix + ".")]:
            monkeypatch.delitem(sys.modules, name)
    yield monkeypatch
    _drop("torchvision")
    _drop("timm")


@pytest.fixture
def fake_torchvision(no_real_packages):
    """`torchvision.models` whose only model, `resnet18`, is our registry ResNet-18; records the
    keywords `get_model` received."""
    calls = []
    models = types.ModuleType("torchvision.models")
    models.list_models = lambda module=None: ["resnet18", "resnet34"]

    def get_model(name, **config):
        calls.append((name, dict(config)))
        config.pop("weights")
        return resnet18(**config)

    models.get_model = get_model
    package = types.ModuleType("torchvision")
    package.models = models
    no_real_packages.setitem(sys.modules, "torchvision", package)
    no_real_packages.setitem(sys.modules, "torchvision.models", models)
    return calls


@pytest.fixture
def fake_timm(no_real_packages):
    """`timm` whose only model, `resnet18`, is our ResNet-18 (`in_chans` → in_channels)."""
    calls = []
    timm = types.ModuleType("timm")
    timm.list_models = lambda pattern="*": ["resnet18", "resnet50d"]

    def create_model(model_name, *, pretrained, num_classes, in_chans, **kwargs):
        calls.append((model_name, pretrained, num_classes, in_chans, kwargs))
        return resnet18(num_classes, in_channels=in_chans, **kwargs)

    timm.create_model = create_model
    no_real_packages.setitem(sys.modules, "timm", timm)
    no_real_packages.setitem(sys.modules, "torchvision", None)  # timm without torchvision
    return calls


def test_model_spec_parsing():
    assert parse_spec("resnet18") == (None, "resnet18")
    assert parse_spec("timm:resnet18") == ("timm", "resnet18")
    assert parse_spec("torchvision:convnext_tiny") == ("torchvision", "convnext_tiny")
    with pytest.raises(ConfigError, match="unknown source 'keras'; expected a registry name or "):
        parse_spec("keras:resnet50")
    with pytest.raises(ConfigError, match="expected timm:NAME with a model name after ':'"):
        parse_spec("timm:")
    with pytest.raises(ConfigError, match="config key 'model': model 'tv:resnet18': unknown"):
        KEConfig(model="tv:resnet18").validate()


def test_model_kwargs_spelling_in_yaml_and_set():
    data = apply_overrides(
        {"model": "timm:resnet18", "model_kwargs": {"drop_rate": 0.1}},
        ["model_kwargs.width=16", "model_kwargs.drop_rate=0.2"],
    )
    config = from_dict(KEConfig, data).validate()
    assert config.model_kwargs == {"drop_rate": 0.2, "width": 16}
    with pytest.raises(ConfigError, match="config key 'model_kwargs': expected a mapping"):
        from_dict(KEConfig, {"model_kwargs": [1, 2]})


def test_torchvision_model_through_the_config(fake_torchvision):
    config = KEConfig(model="torchvision:resnet18", model_kwargs={"width": 16}, seed=3)
    model = build(config, num_classes=7, in_channels=3)
    assert fake_torchvision == [("resnet18", {"weights": None, "num_classes": 7, "width": 16})]
    assert model.fc.out_features == 7 and model.conv1.out_channels == 16
    # the official generation-1 init replaces the library's: kaiming_normal with fan_in
    # (torchvision's ResNet draws with fan_out), the same draw as for a registry model
    w = model.layer3[0].conv2.weight
    assert abs(w.std().item() / math.sqrt(2 / (w.shape[1] * 9)) - 1) < 0.05
    torch.manual_seed(3)  # the classifier bias keeps PyTorch's default draw
    ours = resnet18(7, width=16)
    init_weights(ours, generator=torch.Generator().manual_seed(3))
    for (name, a), b in zip(model.state_dict().items(), ours.state_dict().values()):
        assert torch.equal(a, b), name


def test_timm_model_gets_classes_and_channels(fake_timm):
    config = KEConfig(model="timm:resnet18", model_kwargs={"stem": "cifar"})
    model = build(config, num_classes=5, in_channels=1)
    assert fake_timm == [("resnet18", False, 5, 1, {"stem": "cifar"})]
    assert model.conv1.weight.shape == (64, 1, 3, 3)
    assert model(torch.randn(2, 1, 8, 8)).shape == (2, 5)
    # config values win over the data's, as for registry models
    assert build(KEConfig(model="timm:resnet18", num_classes=3), num_classes=5,
                 in_channels=1).fc.out_features == 3  # fmt: skip


def test_external_model_errors(fake_torchvision):
    def error(**fields):
        with pytest.raises(ConfigError) as info:
            build(KEConfig(**fields), num_classes=4, in_channels=3)
        message = str(info.value)
        assert "\n" not in message and message.startswith("config key 'model': ")
        return message

    msg = error(model="torchvision:resnet19")
    assert "torchvision has no classification model 'resnet19'; did you mean resnet18" in msg
    assert "torchvision.models.list_models(module=torchvision.models) lists them" in msg
    msg = error(model="torchvision:resnet18", model_kwargs={"depth": 3})
    assert "with keywords {'depth': 3}: " in msg and "unexpected keyword argument 'depth'" in msg
    msg = error(model="torchvision:resnet18", model_kwargs={"num_classes": 3})
    assert "keyword 'num_classes' is set by efficientdl" in msg
    msg = error(model="torchvision:resnet18", model_kwargs={"weights": "DEFAULT"})
    assert "keyword 'weights' is set by efficientdl" in msg
    with pytest.raises(ConfigError, match="torchvision's classification models take 3-channel"):
        build(KEConfig(model="torchvision:resnet18"), num_classes=4, in_channels=1)
    msg = error(model="torchvision:resnet18", width=8)
    assert "no option for config key 'width' (pass its own keywords in model_kwargs)" in msg
    msg = error(model="nope")
    assert "unknown model 'nope'; registered: " in msg and "(or torchvision:NAME, timm:NAME)" in msg
    msg = error(model="resnet18", model_kwargs={"num_classes": 3})
    assert "model_kwargs.num_classes is set by the config" in msg
    msg = error(model="small_cnn", model_kwargs={"depth": 3})
    assert "model 'small_cnn' with model_kwargs {'depth': 3}: " in msg


def test_registry_model_takes_model_kwargs():
    model = build(KEConfig(model="resnet18", model_kwargs={"zero_init_residual": True}),
                  num_classes=4, in_channels=1)  # fmt: skip
    assert isinstance(model, nn.Module) and model.fc.out_features == 4


def test_missing_package_is_one_line_naming_the_extra(no_real_packages, capsys):
    from efficientdl.cli import main

    no_real_packages.setitem(sys.modules, "timm", None)  # `import timm` fails as if missing
    no_real_packages.setitem(sys.modules, "torchvision", None)
    with pytest.raises(ConfigError) as info:
        build_external("timm:resnet18", num_classes=3)
    assert "timm:NAME models need the timm package" in str(info.value)
    assert "`pip install efficientdl[timm]`" in str(info.value)
    bench = ["ke", "bench", "--config", "ke/demo", "--batch", "1", "--runs", "1"]
    assert main([*bench, "--set", "model=torchvision:resnet18", "--set", "width=null"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: config key 'model': ")
    assert "need the torchvision package" in err[0] and "efficientdl[vision]" in err[0]


def _fake_broken_torchvision(root, *, models_break: bool = False):
    """A torchvision package on disk whose fake-kernel module raises like a wheel built for
    another torch; its models module works (or raises too, with `models_break`)."""
    pkg = root / "torchvision"
    pkg.mkdir()
    (pkg / "__init__.py").write_text(
        "from torchvision import _meta_registrations, extension\nfrom torchvision import models\n"
    )
    (pkg / "extension.py").write_text("LOADED = True\n")
    (pkg / "_meta_registrations.py").write_text(
        "raise RuntimeError('operator torchvision::nms does not exist')\n"
    )
    body = "raise ImportError('models broken too')\n" if models_break else ""
    (pkg / "models.py").write_text(
        body + "def list_models(module=None):\n    return ['tiny']\n"
        "def get_model(name, weights=None, num_classes=10):\n"
        "    import torch\n    return torch.nn.Linear(3, num_classes)\n"
    )


def test_torchvision_loader_copes_with_c_operators_that_do_not_load(
    no_real_packages, tmp_path, caplog
):
    _fake_broken_torchvision(tmp_path)
    no_real_packages.syspath_prepend(str(tmp_path))
    with pytest.raises(RuntimeError, match="torchvision::nms"):
        import torchvision  # noqa: F401 - what a plain import does on such an install
    with caplog.at_level("WARNING", logger="efficientdl"):
        models = torchvision_models()
    assert models.list_models() == ["tiny"]
    assert "C operators do not load" in caplog.text and "torchvision::nms" in caplog.text
    assert build_external("torchvision:tiny", num_classes=6).out_features == 6


def test_torchvision_that_cannot_load_at_all_is_one_config_error(no_real_packages, tmp_path):
    _fake_broken_torchvision(tmp_path, models_break=True)
    no_real_packages.syspath_prepend(str(tmp_path))
    with pytest.raises(ConfigError) as info:
        torchvision_models()
    message = str(info.value)
    assert "\n" not in message and "torchvision is installed but cannot be imported" in message
    assert "torchvision::nms does not exist" in message and "models broken too" in message
    assert "torchvision" not in sys.modules  # nothing half-imported is left behind


def test_config_shape_keys_must_match_the_training_data():
    images = torch.zeros(2, 1, 8, 8)
    check_data_shape(KEConfig(in_channels=1, input_size=8, num_classes=10), images, 10)
    for fields, fragment in (
        ({"in_channels": 3}, "config key 'in_channels' is 3, but digits has 1 channel(s)"),
        ({"input_size": 224}, "config key 'input_size' is 224, but digits has 8×8 images"),
        ({"num_classes": 100}, "config key 'num_classes' is 100, but digits has 10 classes"),
    ):
        with pytest.raises(ConfigError, match=re.escape(fragment)):
            check_data_shape(KEConfig(**fields), images, 10)


# Real torchvision / timm (skipped where they cannot be loaded for any reason).


def _check_ke_path(model: nn.Module, x: torch.Tensor) -> None:
    """KELS split, slim net == the dense net with its reset weights zeroed (eval mode)."""
    config = KEConfig()
    masks = make_masks(config, model, x)
    slim = extract_slim(model, masks).eval()
    with torch.no_grad():
        expected = masked_copy(model, masks).eval()(x)
        assert torch.allclose(slim(x), expected, atol=1e-5, rtol=1e-4)
    assert sum(p.numel() for p in slim.parameters()) < sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("name", ["resnet18", "mobilenet_v2"])
def test_real_torchvision_models(name):
    optional_module("torchvision.models", load=torchvision_models)
    model = build(KEConfig(model=f"torchvision:{name}"), num_classes=5, in_channels=3).eval()
    assert model.__class__.__module__.startswith("torchvision.models")
    _check_ke_path(model, torch.randn(2, 3, 64, 64))


def test_real_timm_model():
    from efficientdl.models.external import model_names

    optional_module("timm", load=lambda: model_names("timm"))
    model = build(KEConfig(model="timm:resnet18", model_kwargs={"drop_rate": 0.1}),
                  num_classes=5, in_channels=1).eval()  # fmt: skip
    assert model.__class__.__module__.startswith("timm.") and model.conv1.in_channels == 1
    _check_ke_path(model, torch.randn(2, 1, 64, 64))
