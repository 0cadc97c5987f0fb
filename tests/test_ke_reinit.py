"""reinitialize / init_weights / masked_copy invariants."""

import math

import pytest
import torch
from torch import nn

from efficientdl.knowledge_evolution import init_weights, masked_copy, reinitialize, split
from efficientdl.models import resnet18, small_cnn

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def base():
    torch.manual_seed(0)
    model = resnet18(100, width=32)
    for m in model.modules():  # non-trivial BN state, to see that it is untouched
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.normal_()
            m.running_var.uniform_(0.5, 2.0)
            m.weight.data.normal_()
            m.bias.data.normal_()
    return model, split(model, rate=0.5)


def clone(model):
    import copy

    return copy.deepcopy(model)


@pytest.mark.parametrize("init", ["default", "kaiming_normal", "zero"])
def test_fit_entries_bit_identical_reset_entries_redrawn(base, init):
    model, masks = clone(base[0]), base[1]
    before = {k: v.clone() for k, v in model.state_dict().items()}
    params_before = dict(model.named_parameters())
    grad = torch.ones_like(model.layer1[0].conv1.weight)
    model.layer1[0].conv1.weight.grad = grad
    reinitialize(model, masks, init=init, generator=torch.Generator().manual_seed(3))
    after = model.state_dict()
    for key in before:
        if key not in masks:  # BN tensors and buffers, fc.bias: untouched
            assert torch.equal(before[key], after[key]), key
            continue
        m, old, new = masks[key], before[key], after[key]
        assert torch.equal(new[m], old[m]), key  # bit-identical fit entries
        fan = math.prod(new.shape[1:])
        reset = new[~m]
        if init == "zero":
            assert (reset == 0).all()
            continue
        assert (reset != old[~m]).float().mean() > 0.99, key
        if init == "default":
            assert reset.abs().max() <= 1 / math.sqrt(fan) + 1e-7
            if reset.numel() > 20_000:
                assert abs(reset.std().item() * math.sqrt(3 * fan) - 1) < 0.05, key
        elif reset.numel() > 20_000:
            assert abs(reset.std().item() * math.sqrt(fan / 2) - 1) < 0.05, key
    assert all(p is params_before[n] for n, p in model.named_parameters())  # same objects
    assert model.layer1[0].conv1.weight.grad is grad and (grad == 1).all()  # grads untouched


def test_values_independent_of_mask_and_reproducible(base):
    model, masks = base
    full = {k: torch.zeros_like(v) for k, v in masks.items()}  # everything reset
    a, b = clone(model), clone(model)
    reinitialize(a, full, generator=torch.Generator().manual_seed(5))
    reinitialize(b, masks, generator=torch.Generator().manual_seed(5))
    pa, pb = dict(a.named_parameters()), dict(b.named_parameters())
    for key, m in masks.items():
        assert torch.equal(pa[key][~m], pb[key][~m]), key  # R drawn with the full shape
    c = clone(model)
    reinitialize(c, masks, generator=torch.Generator().manual_seed(6))
    assert not torch.equal(dict(c.named_parameters())["fc.weight"], pb["fc.weight"])


def test_conv_bias_redrawn_on_reset_rows():
    net = nn.Sequential(nn.Conv2d(2, 6, 3), nn.ReLU(), nn.Conv2d(6, 4, 1),
                        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 3))  # fmt: skip
    masks = split(net, rate=0.5)
    assert torch.equal(masks["0.bias"], torch.tensor([True] * 3 + [False] * 3))
    old = net[0].bias.detach().clone()
    reinitialize(net, masks, init="default", generator=torch.Generator().manual_seed(0))
    assert torch.equal(net[0].bias[:3], old[:3]) and not torch.equal(net[0].bias[3:], old[3:])
    assert net[0].bias.abs().max() <= 1 / math.sqrt(2 * 9)
    reinitialize(net, masks, init="kaiming_normal", generator=torch.Generator().manual_seed(0))
    assert (net[0].bias[3:] == 0).all() and torch.equal(net[0].bias[:3], old[:3])


def test_reset_bn_resets_only_reset_channels(base):
    model, masks = clone(base[0]), base[1]
    bn = model.layer2[0].bn1
    old = {k: v.clone() for k, v in bn.state_dict().items()}
    reinitialize(model, masks, generator=torch.Generator().manual_seed(0), reset_bn=True)
    assert torch.equal(bn.weight[:32], old["weight"][:32]) and (bn.weight[32:] == 1).all()
    assert (bn.bias[32:] == 0).all() and (bn.running_mean[32:] == 0).all()
    assert (bn.running_var[32:] == 1).all() and torch.equal(bn.running_var[:32],
                                                            old["running_var"][:32])  # fmt: skip
    wels = split(model, rate=0.5, scheme="wels", generator=torch.Generator().manual_seed(0))
    with pytest.raises(ValueError, match="is not kernel-level"):
        reinitialize(model, wels, reset_bn=True)


def test_reinitialize_validation(base):
    model, masks = clone(base[0]), base[1]
    with pytest.raises(ValueError, match="mask key 'conv9.weight' is not a parameter"):
        reinitialize(model, {"conv9.weight": masks["conv1.weight"]})
    with pytest.raises(ValueError, match=r"mask for 'fc.weight' has shape \(3,\)"):
        reinitialize(model, {"fc.weight": torch.ones(3, dtype=torch.bool)})
    with pytest.raises(ValueError, match="mask for 'fc.weight' must be a torch.bool tensor"):
        reinitialize(model, {"fc.weight": masks["fc.weight"].float()})
    with pytest.raises(ValueError, match="unknown init 'xavier'"):
        reinitialize(model, masks, init="xavier")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_same_values_on_cpu_and_cuda(base):
    model, masks = base
    cpu, gpu = clone(model), clone(model).cuda()
    reinitialize(cpu, masks, generator=torch.Generator().manual_seed(9))
    reinitialize(gpu, masks, generator=torch.Generator().manual_seed(9))
    for (k, a), (_, b) in zip(cpu.named_parameters(), gpu.named_parameters()):
        assert torch.equal(a, b.cpu()), k


def test_init_weights_official_generation_one():
    net = small_cnn(10, width=64)
    for m in net.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.weight.data.fill_(3.0)
    bias = net.fc.bias.detach().clone()
    init_weights(net, generator=torch.Generator().manual_seed(0))
    w = net.stage2[3].weight
    assert abs(w.std().item() / math.sqrt(2 / (128 * 9)) - 1) < 0.03
    assert abs(net.fc.weight.std().item() / math.sqrt(2 / 128) - 1) < 0.1
    assert all((m.weight == 1).all() and (m.bias == 0).all()
               for m in net.modules() if isinstance(m, nn.BatchNorm2d))  # fmt: skip
    assert torch.equal(net.fc.bias, bias)
    with pytest.raises(ValueError, match="unknown init scheme 'orthogonal'"):
        init_weights(net, scheme="orthogonal")


def test_masked_copy(base):
    model, masks = base
    fit, reset = masked_copy(model, masks, part="fit"), masked_copy(model, masks, part="reset")
    p, pf, pr = (dict(m.named_parameters()) for m in (model, fit, reset))
    for key, m in masks.items():
        assert torch.equal(pf[key], p[key] * m) and torch.equal(pr[key], p[key] * ~m)
    assert torch.equal(pf["fc.bias"], p["fc.bias"]) and torch.equal(pr["bn1.weight"],
                                                                     p["bn1.weight"])  # fmt: skip
    with pytest.raises(ValueError, match="part must be 'fit' or 'reset', got 'both'"):
        masked_copy(model, masks, part="both")
