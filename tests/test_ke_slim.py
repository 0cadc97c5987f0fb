"""extract_slim equivalence and structure, and cost() counts."""

import copy

import pytest
import torch
from torch import nn

from conftest import ConcatNet
from efficientdl.knowledge_evolution import cost, extract_slim, masked_copy, split
from efficientdl.models import resnet18, small_cnn

pytestmark = pytest.mark.usefixtures("one_thread")


class SqueezeExcite(nn.Module):
    """conv-BN-ReLU, then channel gating x · σ(fc2(relu(fc1(pool x)))).view(n, -1, 1, 1)."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 16, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(16)
        self.fc1, self.fc2 = nn.Linear(16, 4), nn.Linear(4, 16)
        self.head = nn.Linear(16, 5)

    def forward(self, x):
        y = torch.relu(self.bn(self.conv(x)))
        gate = torch.sigmoid(self.fc2(torch.relu(self.fc1(y.mean((2, 3))))))
        y = y * gate.view(x.size(0), -1, 1, 1)
        return self.head(torch.flatten(nn.functional.adaptive_avg_pool2d(y, 1), 1))


def randomise_bn(model, seed=0):
    gen = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=gen))
            m.running_var.copy_(torch.rand(m.num_features, generator=gen) + 0.5)
            m.weight.data.copy_(torch.randn(m.num_features, generator=gen))
            m.bias.data.copy_(torch.randn(m.num_features, generator=gen))
    return model


def rel_err(a, b):
    return ((a - b).abs().max() / b.abs().max()).item()


@pytest.fixture(scope="module")
def r18():
    torch.manual_seed(0)
    model = randomise_bn(resnet18(100)).eval()
    return model, split(model, rate=0.5)


def test_slim_equals_dense_with_reset_zeroed_resnet18(r18):
    model, masks = r18
    slim = extract_slim(model, masks)
    zeroed = masked_copy(model, masks, part="fit")
    x96, x224 = torch.randn(2, 3, 96, 96), torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        for x in (x96, x224):
            assert rel_err(slim(x), zeroed(x)) < 1e-5
        assert rel_err(model(x96), zeroed(x96)) > 1e-2  # cross-weights are H▽, non-zero
        s64, z64 = copy.deepcopy(slim).double(), copy.deepcopy(zeroed).double()
        for x in (x96, x224):
            assert rel_err(s64(x.double()), z64(x.double())) < 1e-10


def test_slim_structure_resnet18(r18):
    model, masks = r18
    before = {k: v.clone() for k, v in model.state_dict().items()}
    slim = extract_slim(model, masks)
    assert sum(p.numel() for p in slim.parameters()) == 2_824_580
    for name, module in slim.named_modules():
        if isinstance(module, nn.Conv2d | nn.BatchNorm2d | nn.Linear):
            assert type(module) in (nn.Conv2d, nn.BatchNorm2d, nn.Linear), name
    widths = [slim.get_submodule(f"layer{i}")[0].conv2.out_channels for i in range(1, 5)]
    assert widths == [32, 64, 128, 256] and slim.conv1.in_channels == 3
    assert slim.fc.in_features == 256 and slim.fc.out_features == 100
    bn = slim.layer3[1].bn2
    assert bn.num_features == 128 and bn.eps == model.layer3[1].bn2.eps
    assert torch.equal(bn.running_var, model.layer3[1].bn2.running_var[:128])
    for p in slim.parameters():
        assert p.is_contiguous()
        assert all(p.data_ptr() != q.data_ptr() for q in model.parameters())
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before) and not slim.training
    assert extract_slim(model.train(), masks).training
    model.eval()


@pytest.mark.parametrize(
    "make, shape",
    [
        (ConcatNet, (2, 3, 12, 12)),
        (lambda: small_cnn(10, width=12), (3, 1, 28, 28)),
        (SqueezeExcite, (2, 3, 12, 12)),
    ],
)
def test_slim_equivalence_concat_small_cnn_and_gating(make, shape):  # fmt: skip
    torch.manual_seed(1)
    model = randomise_bn(make()).eval()
    masks = split(model, rate=0.5)
    slim = extract_slim(model, masks, example_input=torch.randn(shape))
    zeroed = masked_copy(model, masks)
    x = torch.randn(shape, dtype=torch.float64)
    with torch.no_grad():
        assert rel_err(slim(x.float()), zeroed(x.float())) < 1e-5  # float32, as deployed
        assert rel_err(model(x.float()), zeroed(x.float())) > 1e-2  # without zeroing: differs
        out = slim.double()(x)
        ref = zeroed.double()(x)
    assert rel_err(out, ref) < 1e-10
    if make is ConcatNet:
        assert slim.c.in_channels == 48 and slim.norm.num_features == 48
        assert slim.fc.in_features == 56 and slim.a.out_channels == 32
        traced = torch.fx.symbolic_trace(slim)  # a plain module, no masks or gathers
        assert torch.equal(traced(x), out)
        assert not any("mask" in k for k in slim.state_dict())
    if make is SqueezeExcite:
        assert slim.fc1.weight.shape == (2, 8) and slim.fc2.weight.shape == (8, 2)


def test_slim_rejects_wels_and_mismatched_masks(r18):
    model, masks = r18
    wels = split(model, rate=0.5, scheme="wels", generator=torch.Generator().manual_seed(0))
    with pytest.raises(ValueError, match="mask for 'conv1.weight' is not kernel-level .*WELS"):
        extract_slim(model, wels)
    bad = dict(masks)
    shifted = torch.zeros_like(bad["layer1.0.conv2.weight"])
    shifted[:32, 1:33] = True  # a rows×cols product whose cols do not match the producer
    bad["layer1.0.conv2.weight"] = shifted
    with pytest.raises(ValueError, match="'layer1.0.conv2.weight' keeps input channels"):
        extract_slim(model, bad)
    missing = {k: v for k, v in masks.items() if k != "fc.weight"}
    with pytest.raises(ValueError, match="no mask for 'fc.weight'"):
        extract_slim(model, missing)
    fc_rows = dict(masks)
    fc_rows["fc.weight"] = masks["fc.weight"] & (torch.arange(100) < 50)[:, None]
    with pytest.raises(ValueError, match="drops rows of an output layer"):
        extract_slim(model, fc_rows)


def test_cost_matches_official_log_numbers():
    model = resnet18(100)
    x = torch.randn(1, 3, 224, 224)
    assert cost(model, x) == {"params": 11_227_812, "macs": 1_813_612_544,
                              "ops_official": 3_632_418_204}  # fmt: skip
    expected = {
        0.5: {"params": 2_824_580, "macs": 482_919_424, "ops_official": 968_435_356},
        0.8: {"params": 7_218_816, "macs": 1_195_122_972, "ops_official": 2_394_450_338},
    }
    for rate, numbers in expected.items():
        assert cost(extract_slim(model, split(model, rate=rate)), x) == numbers
    assert model.training  # mode restored
    assert cost(model, torch.randn(2, 3, 224, 224))["macs"] == 1_813_612_544  # per sample
