"""efficientdl.models: torchvision-compatible ResNets (names, shapes, counts), the small CNN,
and one sweep over the registry (forward, fx tracing, KELS split)."""

import pytest
import torch
import torch.fx
from torch import nn

from efficientdl.knowledge_evolution import split
from efficientdl.models import (
    build_model,
    list_models,
    register_model,
    resnet18,
    resnet34,
    resnet50,
    small_cnn,
)
from test_ke_masks import one_thread  # noqa: F401 (autouse fixture)

# Written from torchvision's documented ResNet (v1.5) architecture, not from our code.
TV_COUNTS = {  # parameters with 1000 classes, state_dict entries, parameter tensors
    "resnet18": (11_689_512, 122, 62),
    "resnet34": (21_797_672, 218, 110),
    "resnet50": (25_557_032, 320, 161),
}
TV_SHAPES = {
    "resnet18": {
        "conv1.weight": (64, 3, 7, 7),
        "bn1.weight": (64,),
        "bn1.running_var": (64,),
        "bn1.num_batches_tracked": (),
        "layer1.0.conv1.weight": (64, 64, 3, 3),
        "layer1.1.bn2.bias": (64,),
        "layer2.0.conv1.weight": (128, 64, 3, 3),
        "layer2.0.downsample.0.weight": (128, 64, 1, 1),
        "layer2.0.downsample.1.running_mean": (128,),
        "layer3.1.conv2.weight": (256, 256, 3, 3),
        "layer4.0.downsample.0.weight": (512, 256, 1, 1),
        "layer4.1.conv2.weight": (512, 512, 3, 3),
        "fc.weight": (1000, 512),
        "fc.bias": (1000,),
    },
    "resnet34": {
        "layer1.2.conv2.weight": (64, 64, 3, 3),
        "layer2.3.conv1.weight": (128, 128, 3, 3),
        "layer3.5.bn2.weight": (256,),
        "layer4.2.conv2.weight": (512, 512, 3, 3),
        "fc.weight": (1000, 512),
    },
    "resnet50": {
        "layer1.0.conv1.weight": (64, 64, 1, 1),
        "layer1.0.conv2.weight": (64, 64, 3, 3),
        "layer1.0.conv3.weight": (256, 64, 1, 1),
        "layer1.0.downsample.0.weight": (256, 64, 1, 1),
        "layer2.0.conv1.weight": (128, 256, 1, 1),
        "layer2.0.conv2.weight": (128, 128, 3, 3),
        "layer3.5.bn3.weight": (1024,),
        "layer4.2.conv3.weight": (2048, 512, 1, 1),
        "fc.weight": (1000, 2048),
    },
}
BUILDERS = {"resnet18": resnet18, "resnet34": resnet34, "resnet50": resnet50}


@pytest.mark.parametrize("name", sorted(TV_COUNTS))
def test_resnet_matches_torchvision_names_shapes_and_counts(name):
    model = BUILDERS[name]()
    params, entries, tensors = TV_COUNTS[name]
    state = model.state_dict()
    assert sum(p.numel() for p in model.parameters()) == params
    assert len(state) == entries and len(list(model.parameters())) == tensors
    for key, shape in TV_SHAPES[name].items():
        assert tuple(state[key].shape) == shape, key
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


def test_registry_sweep():
    """Every registered model builds, runs, traces with torch.fx and splits with KELS."""
    assert {"resnet18", "resnet34", "resnet50", "small_cnn"} <= set(list_models())
    for name in list_models():
        model = build_model(name, num_classes=7, in_channels=1).eval()
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
        build_model("vgg99")
    with pytest.raises(ValueError, match="model 'small_cnn' registered twice"):
        register_model("small_cnn")(small_cnn)
