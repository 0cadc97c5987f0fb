"""AdaShareNet: gate algebra against an independent Deeplab-ResNet forward, counts, executors."""

import itertools

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from efficientdl.adashare import AdaShareNet, Policy, curriculum_pad, flops
from efficientdl.adashare.model.counting import costs, param_counts

pytestmark = pytest.mark.usefixtures("one_thread")

TASKS = {"seg": 5, "normal": 3, "depth": 1}
# independent of the implementation: stage planes (× width/64), strides, dilations (Deeplab-ResNet)
STAGES = [(1, 1, 1), (2, 2, 1), (4, 1, 2), (8, 1, 4)]


def _randomise(model: nn.Module, seed: int = 0) -> nn.Module:
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


def small_model(exec_mode="fast", dtype=torch.float64, width=8):
    torch.manual_seed(0)
    model = AdaShareNet("resnet18", TASKS, "light", exec_mode=exec_mode, width=width)
    return _randomise(model).to(dtype).eval()


def _bn(x, bn):
    return F.batch_norm(x, bn.running_mean, bn.running_var, bn.weight, bn.bias, False, 0.0, bn.eps)


def reference_backbone(model, x, width, layers=(2, 2, 2, 2)):
    """Plain Deeplab-ResNet-18 forward from the architecture (no gates, no block methods)."""
    stem = model.stem
    h = F.relu(_bn(F.conv2d(x, stem[0].weight, stride=2, padding=3), stem[1]))
    h = F.max_pool2d(h, 3, 2, 1, ceil_mode=True)
    blocks = iter(model.blocks)
    cin = width
    for (mult, stride, dil), count in zip(STAGES, layers):
        planes = width * mult
        for j in range(count):
            b = next(blocks)
            s = stride if j == 0 else 1
            y = F.relu(_bn(F.conv2d(h, b.conv1.weight, stride=s, padding=dil, dilation=dil), b.bn1))
            y = _bn(F.conv2d(y, b.conv2.weight, padding=dil, dilation=dil), b.bn2)
            if cin != planes or s != 1:
                p = b.projection
                r = _bn(F.conv2d(h, p[0].weight, stride=s), p[1])
            else:
                r = h
            h = F.relu(y + r)
            cin = planes
    return h


def test_all_execute_gates_equal_plain_resnet():
    model = small_model()
    x = torch.randn(2, 3, 40, 40, dtype=torch.float64)
    feat = reference_backbone(model, x, 8)
    gates = torch.tensor([1.0, 0.0], dtype=torch.float64).expand(3, 8, 2)
    for out in (model(x), model(x, gates), model(x, Policy(tuple(TASKS), torch.ones(3, 8)))):
        for t in TASKS:
            torch.testing.assert_close(out[t], model.heads[t](feat), rtol=1e-12, atol=1e-12)


def test_skip_returns_shortcut_without_relu_and_soft_gate_is_convex():
    model = small_model()
    x = torch.randn(2, 8, 12, 12, dtype=torch.float64)  # has negative values
    one, zero = torch.tensor(1.0, dtype=torch.float64), torch.tensor(0.0, dtype=torch.float64)
    block = model.blocks[0]  # identity shortcut
    assert torch.equal(block.mix(x, zero, one), x)
    proj = model.blocks[2]  # projection (8 → 16 channels, stride 2)
    p = proj.projection
    expected = _bn(F.conv2d(x, p[0].weight, stride=2), p[1])
    skipped = proj.mix(x, zero, one)
    torch.testing.assert_close(skipped, expected, rtol=1e-12, atol=1e-12)
    assert (skipped < 0).any()  # no ReLU on the skip path
    u = torch.tensor(0.3, dtype=torch.float64)
    for b in (block, proj):
        torch.testing.assert_close(b.mix(x, u, 1 - u), u * b.execute(x) + (1 - u) * b.shortcut(x))
        assert b.mix(x, u, 1 - u).shape == b.execute(x).shape


def test_execution_paths_agree_bit_exactly_in_eval_mode():
    fast, official = small_model(), small_model("official")
    official.load_state_dict(fast.state_dict())
    x = torch.randn(2, 3, 24, 24, dtype=torch.float64)
    execute = torch.rand(3, 8, generator=torch.Generator().manual_seed(3)) < 0.5
    policy = Policy(tuple(TASKS), execute)
    reference = fast(x, policy)
    for n in (None, 5, 1):
        padded = policy.padded(n)
        outs = [
            fast(x, padded),
            fast(x, policy, n_unlocked=n),
            official(x, policy, n_unlocked=n),
            fast(x, padded.gates(torch.float64)),
            fast(x, policy.gates(torch.float64), n_unlocked=n),
        ]
        if n is None:
            outs.append(reference)
        for out in outs[1:]:
            for t in TASKS:
                assert torch.equal(out[t], outs[0][t]), (n, t)


def test_curriculum_pad_and_shared_prefix_is_computed_once():
    model = small_model(dtype=torch.float32, width=8)
    gates = torch.softmax(torch.randn(3, 8, 2), -1)
    padded = curriculum_pad(gates, 3)
    assert torch.equal(padded[:, :5], torch.tensor([1.0, 0.0]).expand(3, 5, 2))
    assert torch.equal(padded[:, 5:], gates[:, 5:])
    calls = []
    hooks = [
        b.conv1.register_forward_hook(lambda m, i, o, l=l: calls.append(l))
        for l, b in enumerate(model.blocks)
    ]
    model(torch.randn(1, 3, 32, 32), gates, n_unlocked=3)
    for h in hooks:
        h.remove()
    assert calls == list(range(5)) + [5, 6, 7] * 3


def test_shared_modules_update_bn_as_k_identical_updates():
    torch.manual_seed(0)
    model = AdaShareNet("resnet18", TASKS, "light", width=8).train()
    x = torch.randn(4, 3, 32, 32)
    stem_bn = model.stem[1]
    model(x, Policy(tuple(TASKS), torch.ones(3, 8)))
    # stem computed once for K = 3 tasks: running mean = (1 − 0.9³)·batch mean
    batch_mean = model.stem[0](x).mean(dim=(0, 2, 3))
    torch.testing.assert_close(
        stem_bn.running_mean, (1 - 0.9**3) * batch_mean, rtol=1e-4, atol=1e-6
    )
    assert stem_bn.momentum == 0.1


@pytest.fixture(scope="module")
def meta_models():
    with torch.device("meta"):
        r18 = AdaShareNet("resnet18", {"seg": 40, "normal": 3}, "aspp")
        r34 = AdaShareNet("resnet34", {"seg": 40, "normal": 3, "depth": 1}, "aspp")
        light = AdaShareNet("resnet34", {"seg": 40}, "light")
    return r18, r34, light


def test_parameter_counts_match_the_expected_values(meta_models):
    r18, r34, light = meta_models
    assert (r18.num_blocks, r34.num_blocks) == (8, 16)
    assert param_counts(r18)["backbone"] == 11_176_512
    assert param_counts(r34)["backbone"] == 21_284_672
    n_head = sum(p.numel() for p in r34.heads["seg"].parameters())
    assert n_head == 23_240_864
    assert param_counts(r34)["total"] == 90_695_664
    assert sum(p.numel() for p in light.heads["seg"].parameters()) == 1_180_160 + 257 * 40
    assert [b.index for b in r34.block_info if b.has_projection] == [3, 7, 13]
    assert [b.index for b in r18.block_info if b.has_projection] == [2, 4, 6]


@pytest.mark.parametrize(
    "size, feat",
    [
        ((321, 321), (41, 41)),
        ((480, 640), (61, 81)),
        ((224, 224), (29, 29)),
        ((256, 512), (33, 65)),
        ((64, 64), (9, 9)),
    ],
)
def test_feature_sizes(meta_models, size, feat):
    r34 = meta_models[1]
    out = r34(torch.empty(1, 3, *size, device="meta"))
    assert tuple(out["seg"].shape[-2:]) == feat
    assert costs(r34, *size).feature_size == feat


def _hook_macs(model, x, policy=None):
    total = []

    def hook(m, inp, out):
        if isinstance(m, nn.Conv2d):
            total.append(
                out.numel()
                // out.shape[0]
                * m.in_channels
                // m.groups
                * m.kernel_size[0]
                * m.kernel_size[1]
            )
        else:
            total.append(m.in_features * m.out_features)

    hooks = [
        m.register_forward_hook(hook)
        for m in model.modules()
        if isinstance(m, nn.Conv2d | nn.Linear)
    ]
    model(x, policy)
    for h in hooks:
        h.remove()
    return sum(total)


def test_analytic_macs_match_hooks_and_the_expected_values(meta_models):
    r18, r34, _ = meta_models
    x = torch.empty(1, 3, 321, 321, device="meta")
    c = costs(r34, 321, 321)
    backbone = c.stem + sum(c.residual) + sum(c.projection)
    assert flops(r34, 321, 321)["macs_shared"] == _hook_macs(r34, x)
    execute = torch.rand(3, 16, generator=torch.Generator().manual_seed(0)) < 0.5
    policy = Policy(r34.tasks, execute)
    with torch.device("meta"):  # per-task sum = K independent single-task passes
        singles = [AdaShareNet("resnet34", {t: r34.task_channels[t]}, "aspp") for t in r34.tasks]
    per_task = sum(
        _hook_macs(m, x, Policy(m.tasks, execute[k : k + 1])) for k, m in enumerate(singles)
    )
    assert flops(r34, 321, 321, policy)["macs_per_task_sum"] == per_task
    shared_prefix = _hook_macs(r34, x, policy)  # stem once, then per task
    assert shared_prefix == per_task - 2 * c.stem
    for value, spec in [
        (c.stem, 0.244e9),
        (c.residual[0], 0.484e9),
        (c.residual[7], 1.487e9),
        (c.projection[13], 0.220e9),
        (backbone, 37.06e9),
        (c.heads["seg"], 39.05e9),
    ]:
        assert value == pytest.approx(spec, rel=5e-3)
    c18 = costs(r18, 321, 321)
    assert c18.stem + sum(c18.residual) + sum(c18.projection) == pytest.approx(19.72e9, rel=5e-3)
    c = costs(r34, 480, 640)
    assert c.stem + sum(c.residual) + sum(c.projection) == pytest.approx(108.98e9, rel=5e-3)
    assert c.heads["seg"] == pytest.approx(114.79e9, rel=5e-3)


def test_policy_helpers_and_json(tmp_path):
    policy = Policy(("a", "b"), torch.tensor([[1, 1, 0, 1], [1, 1, 1, 0]]).bool(), seed=5)
    assert policy.num_executed() == {"a": 3, "b": 3}
    assert policy.shared_prefix_length("a", "b") == 2
    assert policy.shared_prefix_length(0, 0) == 4
    back = Policy.from_json(policy.to_json(tmp_path / "p.json"))
    assert back == policy and back.seed == 5
    assert '"execute": [' in (tmp_path / "p.json").read_text()
    assert Policy.from_gates(policy.gates(), policy.tasks) == policy


def test_bernoulli_sampling_statistics():
    model = AdaShareNet("resnet18", {"a": 1, "b": 1}, "light", width=4)
    with torch.no_grad():
        model.policy_logits[0] = torch.tensor([0.5, 0.5])
        model.policy_logits[1] = torch.tensor([torch.log(torch.tensor(4.0)), 0.0])  # α = 0.8
    g = torch.Generator().manual_seed(0)
    n = 10_000
    draws = torch.stack([model.sample_policy(generator=g).execute for _ in range(n)]).double()
    freq = draws.mean(0)
    for row, alpha in ((0, 0.5), (1, 0.8)):
        se = (alpha * (1 - alpha) / n) ** 0.5
        assert (freq[row] - alpha).abs().max() < 4 * se
    again = model.sample_policy(generator=torch.Generator().manual_seed(0))
    first = model.sample_policy(generator=torch.Generator().manual_seed(0))
    assert again == first
    argmax = model.sample_policy(mode="argmax")
    assert argmax.execute.all()  # ties (α = 0.5) select, as argmax of (a0, a1)


@pytest.mark.parametrize("tau", [0.1, 1.0, 5.0])
def test_gumbel_softmax_matches_gumbel_max(tau):
    from efficientdl.adashare import gumbel_softmax_gates

    n = 10_000
    logits = torch.tensor([[0.3, -0.4], [1.2, 0.1]]).repeat_interleave(n, 0).reshape(2, n, 2)
    u = gumbel_softmax_gates(logits, tau, generator=torch.Generator().manual_seed(7))
    torch.testing.assert_close(u.sum(-1), torch.ones(2, n))
    p = torch.softmax(logits[:, 0], -1)[:, 0]
    freq = (u[..., 0] > u[..., 1]).double().mean(1)
    se = (p * (1 - p) / n).sqrt()
    assert ((freq - p).abs() < 4 * se).all()
    hard = gumbel_softmax_gates(logits, tau, hard=True, generator=torch.Generator().manual_seed(7))
    assert torch.equal(hard[..., 0] > 0.5, u[..., 0] > u[..., 1])


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"backbone": "resnet50"}, "unknown backbone 'resnet50'"),
        ({"head": "fcn"}, "unknown head 'fcn'"),
        ({"stem": "vit"}, "unknown stem 'vit'"),
        ({"logits_init": "zeros"}, "unknown logits_init 'zeros'"),
        ({"exec_mode": "tree"}, "unknown exec_mode 'tree'"),
    ],
)
def test_constructor_errors(kwargs, message):
    args = {"backbone": "resnet18", "tasks": {"a": 1}, "head": "light", **kwargs}
    with pytest.raises(ValueError, match=message):
        AdaShareNet(args.pop("backbone"), args.pop("tasks"), args.pop("head"), width=4, **args)


def test_forward_validation_errors():
    model = AdaShareNet("resnet18", {"a": 1, "b": 2}, "light", width=4)
    x = torch.randn(1, 3, 32, 32)
    with pytest.raises(ValueError, match=r"gates must have shape \[K, L, 2\] = \[2, 8, 2\]"):
        model(x, torch.full((2, 7, 2), 0.5))
    with pytest.raises(ValueError, match="sum to 1"):
        model(x, torch.full((2, 8, 2), 0.6))
    with pytest.raises(ValueError, match="do not match model tasks"):
        model(x, Policy(("b", "a"), torch.ones(2, 8)))
    with pytest.raises(ValueError, match="has 16 blocks"):
        model(x, Policy(("a", "b"), torch.ones(2, 16)))
    with pytest.raises(ValueError, match="must be > 0"):
        model.sample_gates(0.0)
    assert [list(itertools.islice(g, 1)) for g in model.parameter_groups().values()]


@pytest.mark.parametrize("n", [-1, 0, 9])
def test_n_unlocked_out_of_range_fails_before_any_conv(n):
    model = AdaShareNet("resnet18", {"a": 1, "b": 2}, "light", width=4)
    ran = []
    model.stem.register_forward_pre_hook(lambda *_: ran.append(1))
    x = torch.randn(1, 3, 32, 32)
    for policy in (torch.full((2, 8, 2), 0.5), Policy(("a", "b"), torch.ones(2, 8)), None):
        with pytest.raises(ValueError, match=rf"n_unlocked must be in 1\.\.8 .*got {n}$"):
            model(x, policy, n_unlocked=n)
    assert ran == []
    model(x, torch.full((2, 8, 2), 0.5), n_unlocked=8)  # the ends of the range are valid
    model(x, Policy(("a", "b"), torch.ones(2, 8)), n_unlocked=1)
    assert len(ran) == 2
