"""efficientdl.models: torchvision-compatible ResNets (names, shapes, counts), the small CNN,
and a sweep over the registry (forward, fx tracing, KELS split)."""

import json
from pathlib import Path

import pytest
import torch
import torch.fx
from torch import nn

from conftest import optional_module
from efficientdl.core import registry
from efficientdl.knowledge_evolution import split
from efficientdl.models import resnet18, resnet34, resnet50, small_cnn
from efficientdl.models.external import torchvision_models

pytestmark = pytest.mark.usefixtures("one_thread")

# Parameter counts from torchvision's documentation; the full state_dict listing (names, order,
# shapes) was written from torchvision 0.28.0's own models, `[[key, list(v.shape)] for k, v in
# torchvision.models.resnet18(num_classes=1000).state_dict().items()]` (and 34, 50).
TV_PARAMS = {"resnet18": 11_689_512, "resnet34": 21_797_672, "resnet50": 25_557_032}
TV_STATE = json.loads(
    (Path(__file__).parent / "data" / "torchvision_resnet_state_dicts.json").read_text()
)
BUILDERS = {"resnet18": resnet18, "resnet34": resnet34, "resnet50": resnet50}


@pytest.mark.parametrize("name", sorted(TV_PARAMS))
def test_resnet_matches_torchvision_names_shapes_and_counts(name):
    model = BUILDERS[name]()
    state = model.state_dict()
    assert sum(p.numel() for p in model.parameters()) == TV_PARAMS[name]
    assert [[k, list(v.shape)] for k, v in state.items()] == TV_STATE["models"][name]
    top = [n for n, _ in model.named_children()]
    assert top == ["conv1", "bn1", "relu", "maxpool", "layer1", "layer2", "layer3", "layer4",
                   "avgpool", "fc"]  # fmt: skip


def test_resnet_details_follow_torchvision():
    m50 = resnet50()
    assert m50.layer2[0].conv2.stride == (2, 2) and m50.layer2[0].conv1.stride == (1, 1)
    bn = m50.bn1
    assert bn.eps == 1e-5 and bn.momentum == 0.1
    assert sum(p.numel() for p in resnet18(100).parameters()) == 11_227_812
    torch.manual_seed(0)
    conv = resnet18().layer3[0].conv1.weight  # kaiming_normal fan_out: std √(2/(256·9))
    assert abs(conv.std().item() / (2 / (256 * 9)) ** 0.5 - 1) < 0.02
    zero = resnet18(zero_init_residual=True)
    assert zero.layer1[0].bn2.weight.abs().sum() == 0 and zero.layer1[0].bn1.weight.sum() == 64
    copy = resnet18()
    copy.load_state_dict(resnet18().state_dict(), strict=True)


def test_resnet_stem_and_options():
    cifar = resnet18(10, in_channels=1, stem="cifar", width=16)
    assert cifar.conv1.weight.shape == (16, 1, 3, 3) and cifar.conv1.stride == (1, 1)
    assert isinstance(cifar.maxpool, nn.Identity) and cifar.fc.weight.shape == (10, 128)
    assert cifar(torch.randn(2, 1, 8, 8)).shape == (2, 10)
    with pytest.raises(ValueError, match="stem must be 'imagenet' or 'cifar', got 'tiny'"):
        resnet18(stem="tiny")
    with pytest.raises(ValueError, match="width must be a positive int, got 0"):
        resnet18(width=0)


def test_small_cnn_layout():
    net = small_cnn(10, in_channels=1, width=8)
    convs = [m for m in net.modules() if isinstance(m, nn.Conv2d)]
    assert [(c.in_channels, c.out_channels) for c in convs] == [(1, 8), (8, 8), (8, 16), (16, 16)]
    assert sum(isinstance(m, nn.MaxPool2d) for m in net.modules()) == 2
    assert net(torch.randn(3, 1, 28, 28)).shape == (3, 10)
    assert net(torch.randn(3, 1, 8, 8)).shape == (3, 10)


def test_registry_holds_the_generic_models():
    assert {"resnet18", "resnet34", "resnet50", "small_cnn"} <= set(registry.names("model"))


@pytest.mark.parametrize("name", registry.names("model"))
def test_registry_sweep(name):
    """Every registered model builds, runs, traces with torch.fx and splits with KELS."""
    model = registry.create("model", name, num_classes=7, in_channels=1).eval()
    x = torch.randn(2, 1, 28, 28)
    with torch.no_grad():
        out = model(x)
        traced = torch.fx.symbolic_trace(model)
        assert torch.equal(traced(x), out), name
    assert out.shape == (2, 7), name
    masks = split(model, rate=0.5)
    assert masks and all(m.dtype == torch.bool for m in masks.values())


def test_registry_errors():
    with pytest.raises(ValueError, match="unknown model 'vgg99'; registered: .*resnet18"):
        registry.create("model", "vgg99")
    with pytest.raises(ValueError, match="model 'small_cnn' registered twice"):
        registry.register("model", "small_cnn")(small_cnn)


@pytest.mark.parametrize("name", sorted(TV_PARAMS))
def test_torchvision_weights_load_strictly_with_equal_outputs(name):
    """Where the optional torchvision extra is installed: its weights load into ours strictly and
    both nets give identical outputs."""
    tv_models = optional_module("torchvision.models", load=torchvision_models)
    torch.manual_seed(0)
    theirs = getattr(tv_models, name)(num_classes=10).eval()
    ours = BUILDERS[name](10).eval()
    ours.load_state_dict(theirs.state_dict(), strict=True)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(ours(x), theirs(x))
