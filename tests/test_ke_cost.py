"""KE cost counts: MACs of functional ops and modules against closed forms, and the net and
input `ke bench` measures for the paper recipe (the official log's counts)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from efficientdl.core.config import load_config
from efficientdl.core.recipes import resolve_recipe
from efficientdl.knowledge_evolution import KEConfig, cost, extract_slim
from efficientdl.knowledge_evolution.bench import bench_shape
from efficientdl.knowledge_evolution.experiment import build, make_masks

pytestmark = pytest.mark.usefixtures("one_thread")


class Functional(nn.Module):
    """Every op through torch.nn.functional / operators, no conv or linear module."""

    def __init__(self):
        super().__init__()
        self.w1 = nn.Parameter(torch.randn(8, 3, 3, 3))  # dense 3×3 conv, 3 → 8
        self.w2 = nn.Parameter(torch.randn(8, 2, 3, 3))  # grouped conv, groups=4
        self.w3 = nn.Parameter(torch.randn(8, 1, 5, 5))  # depthwise 5×5, stride 2
        self.proj = nn.Parameter(torch.randn(8, 6))  # einsum channel projection 8 → 6
        self.fc = nn.Parameter(torch.randn(10, 6))
        self.bias = nn.Parameter(torch.randn(10))

    def forward(self, x):
        y = F.relu(F.conv2d(x, self.w1, padding=1))  # 8×16×16
        y = F.conv2d(y, self.w2, padding=1, groups=4)  # 8×16×16
        gate = torch.sigmoid(y.mean((2, 3), keepdim=True))  # SE-style gate: element-wise only
        y = F.conv2d(y * gate, self.w3, stride=2, padding=2, groups=8)  # 8×8×8
        y = torch.einsum("nchw,cd->ndhw", y, self.proj)  # 6×8×8
        tokens = y.flatten(2).transpose(1, 2)  # N×64×6
        attn = (tokens @ tokens.transpose(1, 2)).softmax(-1) @ tokens  # two 64×64×6 products
        sdpa = F.scaled_dot_product_attention(tokens, tokens, tokens)  # the same two products
        return F.linear((attn + sdpa).mean(1), self.fc, self.bias)  # 6 → 10


def _functional_macs_per_sample() -> int:
    """The closed form: out_elems · (C_in / groups) · k² per conv, m·n·k per matrix product."""
    conv1 = (8 * 16 * 16) * 3 * 9
    conv2 = (8 * 16 * 16) * 2 * 9
    conv3 = (8 * 8 * 8) * 1 * 25
    einsum = (6 * 8 * 8) * 8
    attention = 2 * (64 * 64 * 6)  # scores q·kᵀ and weights·v
    linear = 10 * 6
    return conv1 + conv2 + conv3 + einsum + 2 * attention + linear


def test_functional_ops_count_as_a_closed_form():
    model = Functional()
    for batch in (1, 3):
        counts = cost(model, torch.randn(batch, 3, 16, 16))
        assert counts["macs"] == _functional_macs_per_sample(), batch
    assert counts["params"] == 8 * 27 + 8 * 18 + 8 * 25 + 48 + 60 + 10
    assert counts["ops_official"] == 0  # the official rule sees conv/linear/BN/ReLU modules only


def test_module_and_functional_forms_count_alike():
    conv = nn.Conv2d(4, 6, 3, padding=1, groups=2, bias=True)
    lin = nn.Linear(6 * 5 * 5, 7)

    class Modules(nn.Module):
        def forward(self, x):
            return lin(torch.flatten(conv(x), 1))

    class Calls(nn.Module):
        def forward(self, x):
            y = F.conv2d(x, conv.weight, conv.bias, padding=1, groups=2)
            return torch.flatten(y, 1) @ lin.weight.t() + lin.bias

    x = torch.randn(2, 4, 5, 5)
    expected = (6 * 5 * 5) * 2 * 9 + 150 * 7
    assert cost(Modules(), x)["macs"] == cost(Calls(), x)["macs"] == expected


def test_paper_recipe_bench_is_the_headline_network():
    """`efficientdl ke bench --config ke/paper_resnet18` measures the paper's setting: an
    ImageNet-stem ResNet-18 on 3×224×224 inputs with 100 classes, whose counts are the official
    log's (11,227,812 parameters; slim sr 0.5: 2,824,580 parameters, 482,919,424 MACs)."""
    config = load_config(KEConfig, resolve_recipe("ke/paper_resnet18", "ke")).validate()
    shape, classes = bench_shape(config)
    assert shape == (3, 224, 224) and classes == 100
    model = build(config, num_classes=classes, in_channels=shape[0]).eval()
    assert model.conv1.kernel_size == (7, 7) and model.conv1.stride == (2, 2)
    assert isinstance(model.maxpool, nn.MaxPool2d) and model.fc.out_features == 100
    x = torch.randn(1, *shape)
    assert cost(model, x) == {"params": 11_227_812, "macs": 1_813_612_544,
                              "ops_official": 3_632_418_204}  # fmt: skip
    slim = extract_slim(model, make_masks(config, model))
    assert cost(slim, x)["params"] == 2_824_580 and cost(slim, x)["macs"] == 482_919_424
    # --input-size / --classes still win over the recipe
    assert bench_shape(config, input_size=32, num_classes=10) == ((3, 32, 32), 10)


def test_bench_shape_defaults_to_the_dataset():
    assert bench_shape(KEConfig(dataset="digits")) == ((1, 8, 8), 10)
    assert bench_shape(KEConfig(dataset="cifar10", num_classes=4)) == ((3, 32, 32), 4)
    with pytest.raises(ValueError, match="config key 'dataset': unknown dataset 'imagenet'"):
        bench_shape(KEConfig(dataset="imagenet"))
