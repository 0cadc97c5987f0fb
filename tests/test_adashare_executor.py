"""TreeExecutor: bit-exact against per-task execution, one evaluation per distinct
prefix, per-task exported networks, cost falling with skipped blocks."""

import pytest
import torch
from torch import nn

from efficientdl.adashare import AdaShareNet, Policy, TreeExecutor, flops, param_counts
from efficientdl.adashare.model.executor import TaskNetwork, export_task

pytestmark = pytest.mark.usefixtures("one_thread")

TASKS = {"seg": 5, "normal": 3, "depth": 1, "edge": 1}
L = 8


def _model(exec_mode="fast", head="light", width=8):
    torch.manual_seed(0)
    model = AdaShareNet("resnet18", TASKS, head, exec_mode=exec_mode, width=width)
    g = torch.Generator().manual_seed(1)
    for m in model.modules():  # non-trivial BN so that skips and executes differ visibly
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean = 0.2 * torch.randn(m.num_features, generator=g)
            m.running_var = 0.5 + torch.rand(m.num_features, generator=g)
            m.bias.data = 0.3 * torch.randn(m.num_features, generator=g)
        elif isinstance(m, nn.Conv2d):
            m.weight.data = (
                torch.randn(m.weight.shape, generator=g) * (2 / m.weight[0].numel()) ** 0.5
            )
    return model.eval()


def _policies():
    g = torch.Generator().manual_seed(7)
    rows = {
        "all_skip": torch.zeros(4, L),
        "all_execute": torch.ones(4, L),
        "identical": (torch.rand(1, L, generator=g) < 0.5).expand(4, L),
        "diverge_first": torch.tensor([[1] * L, [0] + [1] * 7, [1] * L, [0] + [1] * 7]),
        "diverge_last": torch.tensor([[1] * L, [1] * 7 + [0], [1] * L, [1] * 7 + [0]]),
    }
    for i in range(6):
        r = torch.rand(4, L, generator=g) < 0.5
        r[3] = r[i % 3]  # a task whose policy equals another's
        rows[f"random{i}"] = r
    return {name: Policy(tuple(TASKS), r.bool()) for name, r in rows.items()}


POLICIES = _policies()


def _prefixes(policy):
    """Independent enumeration: the set of distinct decision prefixes of lengths 1…L."""
    rows = [tuple(r) for r in policy.execute.tolist()]
    return {r[:n] for r in rows for n in range(1, L + 1)}


def test_tree_equals_per_task_and_official_and_counts_each_prefix_once():
    fast, official = _model(), _model("official")
    official.load_state_dict(fast.state_dict())
    x = torch.randn(2, 3, 40, 40)
    for name, policy in POLICIES.items():
        calls = {"conv1": [], "proj": []}
        hooks = [
            b.conv1.register_forward_hook(lambda m, i, o, l=l, c=calls: c["conv1"].append(l))
            for l, b in enumerate(fast.blocks)
        ] + [
            b.projection[0].register_forward_hook(lambda m, i, o, l=l, c=calls: c["proj"].append(l))
            for l, b in enumerate(fast.blocks)
            if b.projection is not None
        ]
        tree = TreeExecutor(fast, policy)
        out = tree(x)
        for h in hooks:
            h.remove()
        with torch.no_grad():
            per_task, masked = fast(x, policy), official(x, policy)
        for t in TASKS:
            assert torch.equal(out[t], per_task[t]), (name, t)
            assert torch.equal(out[t], masked[t]), (name, t)
        nodes = _prefixes(policy)
        executed = [p for p in nodes if p[-1]]
        assert tree.num_nodes() == len(nodes) == tree.stats()["nodes"], name
        assert tree.stats()["blocks"] == len(executed) == len(calls["conv1"]), name
        assert tree.stats()["macs"] == flops(fast, 40, 40, policy)["macs_shared"], name
        for l, b in enumerate(fast.blocks):
            assert calls["conv1"].count(l) == sum(len(p) == l + 1 for p in executed), (name, l)
            if b.projection is not None:
                assert calls["proj"].count(l) == sum(len(p) == l + 1 for p in nodes), (name, l)


def test_tree_under_channels_last_and_bf16_autocast_matches_per_task():
    model = _model().to(memory_format=torch.channels_last)
    x = torch.randn(2, 3, 40, 40).contiguous(memory_format=torch.channels_last)
    policy = POLICIES["random0"]
    out = TreeExecutor(model, policy)(x)
    with torch.no_grad():
        ref = model(x, policy)
    assert all(torch.equal(out[t], ref[t]) for t in TASKS)
    out = TreeExecutor(model, policy, autocast=torch.bfloat16)(x)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        ref = model(x, policy)
    assert all(out[t].dtype == torch.bfloat16 and torch.equal(out[t], ref[t]) for t in TASKS)
    with pytest.raises(ValueError, match="autocast"):
        TreeExecutor(model, policy, autocast="bf16")


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
@pytest.mark.parametrize("method", ["export", "trace"])
def test_exported_task_networks_hold_only_executed_blocks(method):
    model = _model(head="aspp", width=4)
    policy = POLICIES["random1"]
    x = torch.randn(2, 3, 40, 40)
    tree = TreeExecutor(model, policy)(x)
    counts = param_counts(model, policy)["per_task"]
    for k, task in enumerate(TASKS):
        net = TaskNetwork(model, policy, task)
        assert sum(p.numel() for p in net.parameters()) == counts[task]
        kept = {id(p) for p in net.parameters()}
        for block, run in zip(model.blocks, policy.execute[k].tolist()):
            assert (id(block.conv1.weight) in kept) == run
        exported = export_task(model, policy, task, x, method=method)
        run = exported.module() if method == "export" else exported
        with torch.no_grad():
            assert torch.equal(run(x), tree[task]), task
    assert not model.training
    with pytest.raises(ValueError, match="export method"):
        export_task(model, policy, "seg", x, method="onnx")
    with pytest.raises(ValueError, match="unknown task"):
        TaskNetwork(model, policy, "sky")


def test_cost_and_time_fall_as_more_blocks_are_skipped():
    model = _model(width=16)
    x = torch.randn(2, 3, 64, 64)
    order = torch.randperm(L, generator=torch.Generator().manual_seed(3))
    calls = []  # one entry per conv evaluated: the work that takes the time, not a clock
    for conv in (m for m in model.modules() if isinstance(m, nn.Conv2d)):
        conv.register_forward_hook(lambda *_: calls.append(1))
    macs, convs_run = [], []
    for skipped in (0, 4, 8):
        execute = torch.ones(4, L, dtype=torch.bool)
        execute[:, order[:skipped]] = False
        tree = TreeExecutor(model, Policy(tuple(TASKS), execute))
        calls.clear()
        tree(x)
        macs.append(tree.stats()["macs"])
        convs_run.append(len(calls))
    assert macs[0] > macs[1] > macs[2]
    assert convs_run[2] < convs_run[0]


def test_bad_policy_is_rejected():
    model = _model()
    with pytest.raises(ValueError, match="tasks"):
        TreeExecutor(model, Policy(("a", "b"), torch.ones(2, L, dtype=torch.bool)))
    with pytest.raises(ValueError, match="blocks"):
        TreeExecutor(model, Policy(tuple(TASKS), torch.ones(4, 16, dtype=torch.bool)))


def test_policy_owns_its_tensor_so_a_cached_executor_stays_right():
    """Mutating the caller's tensor after building a Policy changes neither the policy nor a
    TreeExecutor built from it: both keep agreeing with `model(x, policy)`."""
    model = _model()
    rows = torch.tensor([[1, 0] * (L // 2), [0, 1] * (L // 2), [1] * L, [0] * L], dtype=torch.bool)
    policy = Policy(tuple(TASKS), rows)
    tree = TreeExecutor(model, policy)
    kept = rows.clone()
    rows ^= True  # the caller reuses its tensor
    assert torch.equal(policy.execute, kept)
    x = torch.randn(1, 3, 40, 40)
    out = tree(x)
    with torch.no_grad():
        per_task = model(x, policy)
    for t in TASKS:
        assert torch.equal(out[t], per_task[t]), t


def test_executor_counts_stay_per_image_size():
    """The cached counts follow the input size: a second size gives that size's MACs."""
    model, policy = _model(), POLICIES["random0"]
    tree = TreeExecutor(model, policy)
    for size in (40, 48, 40):
        tree(torch.randn(1, 3, size, size))
        assert tree.stats()["macs"] == flops(model, size, size, policy)["macs_shared"], size
