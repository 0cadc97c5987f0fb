"""The soft-sharing baselines (Cross-Stitch, Sluice, NDDR-CNN, MTAN): each one's defining
property against independent single-task / hard-sharing networks in float64, gradients, analytic
costs against torch's FlopCounter and closed forms, and the `baseline` entry points."""

import json

import pytest
import torch
import yaml
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from adashare_support import TINY
from conftest import run_cli
from efficientdl.adashare import AdaShareNet
from efficientdl.adashare.config import AdaShareConfig
from efficientdl.adashare.model import SOFT_SHARING, flops, make_soft_sharing, param_counts
from efficientdl.adashare.phases import AdaShareRun
from efficientdl.core import ConfigError
from efficientdl.core.config import apply_overrides, from_dict

pytestmark = pytest.mark.usefixtures("one_thread")

TASKS = {"seg": 5, "normal": 3, "depth": 1}
WIDTH = 4
SIZE = (33, 29)  # odd sizes: every stride and padding shows in the feature sizes


def _randomise(model: nn.Module, seed: int) -> nn.Module:
    """Random convs and BN affine/running statistics, so no unit is an identity by accident."""
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            fan_in = m.weight[0].numel()
            m.weight.data = torch.randn(m.weight.shape, generator=g) * (2 / fan_in) ** 0.5
        elif isinstance(m, nn.BatchNorm2d):
            n = m.num_features
            m.weight.data = 1 + 0.3 * torch.randn(n, generator=g)
            m.bias.data = 0.3 * torch.randn(n, generator=g)
            m.running_mean = 0.2 * torch.randn(n, generator=g)
            m.running_var = 0.5 + torch.rand(n, generator=g)
    return model


def _singles() -> dict[str, AdaShareNet]:
    """One randomised single-task network per task, float64, eval mode."""
    return {
        t: _randomise(AdaShareNet("resnet18", {t: c}, "light", width=WIDTH), k).double().eval()
        for k, (t, c) in enumerate(TASKS.items())
    }


def _load_columns(net, singles) -> None:
    """Column k ← single-task network k (stem, blocks) and its head."""
    for trunk, (t, single) in zip(net.trunks, singles.items()):
        trunk.stem.load_state_dict(single.stem.state_dict())
        trunk.blocks.load_state_dict(single.blocks.state_dict())
        net.heads[t].load_state_dict(single.heads[t].state_dict())


def _x(seed=0):
    return torch.randn(2, 3, *SIZE, generator=torch.Generator().manual_seed(seed)).double()


def _column_net(name, init_same):
    return make_soft_sharing(name, "resnet18", TASKS, "light", width=WIDTH, init_same=init_same)


@pytest.mark.parametrize("name", ["cross_stitch", "sluice", "nddr_cnn"])
def test_identity_units_give_independent_single_task_networks(name):
    singles = _singles()
    net = _column_net(name, 1.0).double()
    _load_columns(net, singles)
    if name == "sluice":  # β selects the last block of the last stage
        with torch.no_grad():
            net.beta.zero_()
            net.beta[:, -1] = 1.0
    if name == "nddr_cnn":  # BN of the NDDR layers as the identity in eval mode
        for m in net.units.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_var.fill_(1.0 - m.eps)
    net.eval()
    x = _x()
    with torch.no_grad():
        out = net(x)
        for t, single in singles.items():
            torch.testing.assert_close(out[t], single(x)[t], rtol=1e-12, atol=1e-12)
        # the property can fail: mixing the columns changes every task's output
        for unit in net.units.modules():
            if hasattr(unit, "alpha"):
                unit.alpha.add_(0.2 * torch.rand_like(unit.alpha))
            elif isinstance(unit, nn.Conv2d):
                unit.weight.add_(0.1 * torch.rand_like(unit.weight))
        mixed = net(x)
    for t, single in singles.items():
        assert not torch.allclose(mixed[t], single(x)[t], rtol=1e-6, atol=1e-6)


def test_sluice_beta_mixes_the_last_stage_blocks():
    """With identity α and β = (b, 1 − b), a task's feature is b·(first block of the last stage)
    + (1 − b)·(its last block), computed here from the single-task network's own blocks."""
    singles = _singles()
    net = _column_net("sluice", 1.0).double()
    _load_columns(net, singles)
    with torch.no_grad():
        net.beta.copy_(torch.tensor([[0.3, 0.7], [0.8, 0.2], [-0.5, 1.5]]))
    net.eval()
    x = _x(1)
    with torch.no_grad():
        out = net(x)
        for k, (t, single) in enumerate(singles.items()):
            h = single.stem(x)
            for block in single.blocks[:-2]:
                h = block.execute(h)
            first = single.blocks[-2].execute(h)
            last = single.blocks[-1].execute(first)
            b = net.beta[k]
            expected = single.heads[t](b[0] * first + b[1] * last)
            torch.testing.assert_close(out[t], expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("k", [1, 2, 3, 5])
def test_unit_initialisation_rows_sum_to_one(k):
    tasks = {f"t{i}": 1 for i in range(k)}
    cs = make_soft_sharing("cross_stitch", "resnet18", tasks, width=WIDTH, init_same=0.9)
    alpha = cs.units[0].alpha.detach()
    expected = (
        torch.eye(k)
        if k == 1
        else torch.full((k, k), 0.1 / (k - 1)) + torch.eye(k) * (0.9 - 0.1 / (k - 1))
    )
    torch.testing.assert_close(alpha, expected)
    sluice = make_soft_sharing("sluice", "resnet18", tasks, width=WIDTH, init_same=0.9)
    a = sluice.units[2].alpha.detach()
    assert a.shape == (2 * k, 2 * k)
    torch.testing.assert_close(a.sum(1), torch.ones(2 * k))
    torch.testing.assert_close(a.diagonal(), torch.full((2 * k,), 0.9))
    nddr = make_soft_sharing("nddr_cnn", "resnet18", tasks, width=WIDTH, init_same=0.9)
    w = nddr.units[1].reduce[0][0].weight.detach()[:, :, 0, 0]  # task 0, stage 2 (8 channels)
    c = 2 * WIDTH
    for j in range(k):
        torch.testing.assert_close(w[:, j * c : (j + 1) * c], expected[0, j] * torch.eye(c))


def test_mtan_masks_of_ones_give_the_shared_features():
    """Masks forced to 1 (last BN of every attention module: weight 0, bias 50 → sigmoid = 1.0 in
    float64): every task reads the shared network's output, i.e. MTAN = hard sharing."""
    hard = _randomise(AdaShareNet("resnet18", TASKS, "light", width=WIDTH), 3).double().eval()
    net = make_soft_sharing("mtan", "resnet18", TASKS, "light", width=WIDTH)
    net = _randomise(net, 4).double()
    net.trunks[0].stem.load_state_dict(hard.stem.state_dict())
    net.trunks[0].blocks.load_state_dict(hard.blocks.state_dict())
    net.heads.load_state_dict(hard.heads.state_dict())
    net.eval()
    x = _x(2)
    with torch.no_grad():
        soft = net(x)  # random attention: not the shared features
        for t in TASKS:
            assert not torch.allclose(soft[t], hard(x)[t], rtol=1e-6, atol=1e-6)
        for stage in net.attention:
            for att in stage:
                att[4].weight.zero_()
                att[4].bias.fill_(50.0)
        out = net(x)
        for t in TASKS:
            torch.testing.assert_close(out[t], hard(x)[t], rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("name", list(SOFT_SHARING))
def test_forward_shapes_and_every_parameter_gets_a_gradient(name):
    torch.manual_seed(0)
    net = make_soft_sharing(name, "resnet18", TASKS, "light", width=WIDTH).train()
    out = net(torch.randn(2, 3, *SIZE))
    ref = AdaShareNet("resnet18", TASKS, "light", width=WIDTH)(torch.randn(2, 3, *SIZE))
    assert {t: o.shape for t, o in out.items()} == {t: o.shape for t, o in ref.items()}
    sum((o**2).mean() for o in out.values()).backward()
    for pname, p in net.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), pname
        assert p.grad.abs().sum() > 0, pname
    groups = net.parameter_groups()
    assert {id(p) for g in groups.values() for p in g} == {id(p) for p in net.parameters()}
    assert {id(p) for p in groups["heads"]} == {id(p) for p in net.heads.parameters()}


def _counted_macs(net, tasks=TASKS) -> float:
    """Conv + matmul MACs per image as torch's FlopCounter counts them (2 FLOPs per MAC)."""
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        net(torch.randn(2, 3, *SIZE))
    return counter.get_total_flops() / 2 / 2


@pytest.mark.parametrize("name", list(SOFT_SHARING))
def test_analytic_macs_match_flop_counter(name):
    net = make_soft_sharing(name, "resnet18", TASKS, "light", width=WIDTH).eval()
    cost = flops(net, *SIZE)
    assert cost["macs_shared"] == _counted_macs(net)
    assert cost["flops_shared"] == 2 * cost["macs_shared"]
    hard = AdaShareNet("resnet18", TASKS, "light", width=WIDTH)
    one = flops(AdaShareNet("resnet18", {"seg": 5}, "light", width=WIDTH), *SIZE)
    backbone = one["macs_shared"] - one["macs_heads"]
    assert cost["macs_heads"] == flops(hard, *SIZE)["macs_heads"]
    if name == "mtan":  # per task: one independent single-task MTAN pass each
        singles = sum(
            _counted_macs(make_soft_sharing(name, "resnet18", {t: c}, "light", width=WIDTH))
            for t, c in TASKS.items()
        )
        assert cost["macs_per_task_sum"] == singles
        assert cost["macs_per_task_sum"] - cost["macs_shared"] == 2 * backbone
    else:  # three full columns plus the units
        assert cost["macs_per_task_sum"] == cost["macs_shared"]
        assert cost["macs_shared"] > 3 * backbone + cost["macs_heads"]


def test_parameter_counts_against_closed_forms():
    hard = AdaShareNet("resnet18", TASKS, "light", width=WIDTH)
    hp = param_counts(hard)
    k, stages = len(TASKS), 4
    chans = [WIDTH * 2**s for s in range(stages)]
    cs = param_counts(make_soft_sharing("cross_stitch", "resnet18", TASKS, width=WIDTH))
    assert cs["total"] == k * hp["backbone"] + stages * k * k + hp["heads"]
    assert cs["backbone_units"] == k and cs["union"] == cs["total"]
    assert cs["per_task"]["seg"] == cs["backbone"] + sum(
        p.numel() for p in hard.heads["seg"].parameters()
    )
    sl = param_counts(make_soft_sharing("sluice", "resnet18", TASKS, width=WIDTH))
    assert sl["total"] == k * hp["backbone"] + stages * (2 * k) ** 2 + k * 2 + hp["heads"]
    nd = param_counts(make_soft_sharing("nddr_cnn", "resnet18", TASKS, width=WIDTH))
    nddr_units = sum(k * (k * c * c + 2 * c) for c in chans)  # conv K·C→C, BN weight + bias
    assert nd["total"] == k * hp["backbone"] + nddr_units + hp["heads"]
    mt = make_soft_sharing("mtan", "resnet18", TASKS, width=WIDTH)
    mp = param_counts(mt)
    att = sum(  # per task: 1×1 conv (+bias) → BN → 1×1 conv (+bias) → BN
        (cin * c + c + 2 * c) + (c * c + c + 2 * c)
        for cin, c in zip([chans[0]] + [2 * c for c in chans[1:]], chans)
    )
    bridges = sum(  # a BasicBlock with projection, ch[s] → ch[s+1]
        ci * co * 9 + 2 * co + co * co * 9 + 2 * co + ci * co + 2 * co
        for ci, co in zip(chans, chans[1:])
    )
    assert mp["total"] == hp["backbone"] + k * att + bridges + hp["heads"]
    assert mp["backbone_units"] == 1
    seg_head = sum(p.numel() for p in hard.heads["seg"].parameters())
    assert mp["per_task"]["seg"] == hp["backbone"] + att + bridges + seg_head
    with pytest.raises(ValueError, match="no select-or-skip policy"):
        flops(mt, *SIZE, policy=object())


def tiny(*overrides):
    return from_dict(AdaShareConfig, apply_overrides(TINY, list(overrides)))


@pytest.mark.parametrize("name", ["sluice", "nddr_cnn", "mtan"])
def test_baselines_train_test_and_report_costs(tmp_path, name):
    run = AdaShareRun(tiny(), run_dir=tmp_path)
    result = run.run_baseline(name)
    stored = json.loads((tmp_path / "baselines" / name / "result.json").read_text())
    assert stored["test"] == result["test"] and set(result["test"]) == {"seg", "depth"}
    m = run.cfg.model
    net = make_soft_sharing(name, m.backbone, run.spec.channels, m.head, width=m.width)
    size = (TINY["data"]["size"],) * 2
    assert result["flops"] == flops(net, *size)
    assert result["params"] == json.loads(json.dumps(param_counts(net)))
    assert result["params"]["backbone_units"] == (1 if name == "mtan" else 2)


def test_config_validation_and_odd_width_sluice(tmp_path):
    assert "cross_stitch" not in AdaShareConfig().baselines  # not in the default run
    tiny("baselines=[cross_stitch, sluice, nddr_cnn, mtan]").validate()
    with pytest.raises(ConfigError, match="soft_sharing.init_same"):
        tiny("soft_sharing.init_same=1.5").validate()
    with pytest.raises(ConfigError, match="model.width.*even width, got 3"):
        tiny("model.width=3", "baselines=[mtan, sluice]").validate()
    with pytest.raises(ConfigError, match="model.width.*even width, got 3"):
        AdaShareRun(tiny("model.width=3"), run_dir=tmp_path).run_baseline("sluice")


def test_cli_cross_stitch_baseline_writes_result_with_costs(tmp_path):
    config = tmp_path / "tiny.yaml"
    config.write_text(yaml.safe_dump(apply_overrides(TINY, ["threads=1"])))
    args = ["--config", config, "--run-dir", "R", "--name", "cross_stitch", "--quiet"]
    proc = run_cli("adashare", "baseline", *args, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads((tmp_path / "R" / "baselines" / "cross_stitch" / "result.json").read_text())
    assert set(result["test"]) == {"seg", "depth"}
    assert result["params"]["backbone_units"] == 2
    assert result["flops"]["flops_shared"] == 2 * result["flops"]["macs_shared"] > 0
