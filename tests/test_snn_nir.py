"""NIR export/import of spiking networks: the round trip is exact for every registered network,
the exported parameters run our model under NIR's own equations (a forward-Euler reading written
here from the NIR node definitions), and graphs efficientdl cannot represent are refused."""

from __future__ import annotations

import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from conftest import assert_one_error, optional_module
from efficientdl.core.errors import DataError, UserError
from efficientdl.core.registry import get, names
from efficientdl.snn import export_nir, import_nir, psp
from efficientdl.snn.networks import build
from efficientdl.snn.nir_sim import our_spikes

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def nir():
    return optional_module("nir")


def _input(name: str, net, n: int = 2, seed: int = 0) -> torch.Tensor:
    """A strong random input (so that every layer spikes): images, or event frames."""
    g = torch.Generator().manual_seed(seed)
    shape = get("snn", name).input_shape
    if net.T is None:  # event frames [T, N, C, H, W]
        return 3.0 * (torch.rand(4, n, *shape, generator=g) < 0.3).to(torch.float32)
    return 3.0 * torch.rand(n, *shape, generator=g)


def _assert_same_network(a, b) -> None:
    assert str(a) == str(b)
    assert a.T == b.T and a.fold_static_input == b.fold_static_input
    assert a.encoder.tau_s == b.encoder.tau_s
    assert [n.settings for n in a.neurons()] == [n.settings for n in b.neurons()]
    sa, sb = a.state_dict(), b.state_dict()
    assert list(sa) == list(sb)
    for key in sa:
        assert sa[key].dtype == sb[key].dtype and torch.equal(sa[key], sb[key]), key
    for layer_a, layer_b in zip(a.layers, b.layers, strict=True):
        assert getattr(layer_a, "scale", None) == getattr(layer_b, "scale", None)


LARGE = 5_000_000
"""Networks with more weights are round-tripped in memory and in float32 only (the CIFAR-10 CNNs,
21 M and 45 M weights, take ~30 s to write); their node kinds and dropout metadata go through a
file in `test_dropout_and_pooling_survive_a_file_round_trip`."""


@pytest.mark.parametrize("name", names("snn"))
def test_write_read_import_is_exact_for_every_registered_network(nir, name, tmp_path):
    torch.manual_seed(0)
    net = build(name, T=3).eval()
    graph = export_nir(net, get("snn", name).input_shape)
    large = sum(p.numel() for p in net.parameters()) > LARGE
    if not large:
        nir.write(tmp_path / f"{name}.nir", graph)
        graph = tmp_path / f"{name}.nir"
    back = import_nir(graph).eval()
    _assert_same_network(net, back)
    x = _input(name, net, n=1 if large else 2)
    for dtype in (torch.float32,) if large else (torch.float64, torch.float32):
        trace, counts = our_spikes(net.to(dtype), x.to(dtype))
        trace_b, counts_b = our_spikes(back.to(dtype), x.to(dtype))
        assert torch.equal(trace, trace_b), dtype
        assert counts.keys() == counts_b.keys()
        assert all(torch.equal(counts[k], counts_b[k]) for k in counts)
        assert counts[min(counts, key=lambda k: int(k.split("_")[1]))].sum() > 0  # it spiked


def test_dropout_and_pooling_survive_a_file_round_trip(nir, tmp_path):
    from efficientdl.snn import PSPEncoder, SpikingNetwork
    from efficientdl.snn.layers import SpikingConv2d, SpikingDropout, SpikingLinear, SumPool2d

    torch.manual_seed(6)
    layers = [
        SpikingConv2d(3, 4, 3, padding=1, weight_scale=5.0, tau_m=6.0),
        SpikingDropout(0.3, mask="row"),
        SumPool2d(2, scale=1.3),
        SpikingDropout(0.1),
        SpikingConv2d(4, 6, 3, stride=2, tau_s=2.0),
        SpikingLinear(6 * 2 * 2, 5, threshold=0.7),
        SpikingDropout(0.2),
        SpikingLinear(5, 3, tau_s=4.5, warmup_surrogate=False),
    ]
    net = SpikingNetwork(PSPEncoder(2.5, T=4), layers, fold_static_input=False).eval()
    nir.write(tmp_path / "net.nir", export_nir(net, (3, 12, 12)))
    back = import_nir(tmp_path / "net.nir").eval()
    _assert_same_network(net, back)
    assert [type(m).__name__ for m in back.layers] == [type(m).__name__ for m in layers]
    assert [(m.p, m.mask) for m in back.layers if isinstance(m, SpikingDropout)] == [
        (0.3, "row"),
        (0.1, "neuron"),
        (0.2, "neuron"),
    ]
    x = 3.0 * torch.rand(2, 3, 12, 12)
    assert torch.equal(net.double()(x.double()), back.double()(x.double()))


# --- NIR's equations, read independently: a forward-Euler interpreter of the exported graph ----


def _pair(value) -> tuple[int, int]:
    return tuple(int(v) for v in np.broadcast_to(np.asarray(value), (2,)))


def _euler_reading(graph, steps: np.ndarray, dt: float) -> dict[str, np.ndarray]:
    """{CubaLIF node: spikes [T, N, ...]} of a chain graph fed `steps` [T, N, ...], each node as
    the NIR documentation defines it, integrated by forward Euler with step `dt` in float64:
    τ_syn·di/dt = −i + w_in·x, τ_mem·dv/dt = (v_leak − v) + R·i, z = v > v_threshold → v_reset."""
    successor = dict(graph.edges)
    order = ["input"]
    while order[-1] in successor:
        order.append(successor[order[-1]])
    state = {}
    spikes = {name: [] for name in order if type(graph.nodes[name]).__name__ == "CubaLIF"}
    for x in steps.astype(np.float64):
        for name in order[1:-1]:
            node = graph.nodes[name]
            kind = type(node).__name__
            if kind == "Conv2d":
                x = F.conv2d(
                    torch.from_numpy(x),
                    torch.from_numpy(node.weight.astype(np.float64)),
                    torch.from_numpy(node.bias.astype(np.float64)),
                    stride=_pair(node.stride),
                    padding=_pair(node.padding),
                ).numpy()
            elif kind == "Linear":
                x = x @ node.weight.astype(np.float64).T
            elif kind == "Flatten":
                x = x.reshape(x.shape[0], -1)
            elif kind == "SumPool2d":
                k = int(node.kernel_size[0])
                n, c, h, w = x.shape
                x = x.reshape(n, c, h // k, k, w // k, k).sum(axis=(3, 5))
            elif kind == "Scale":
                x = x * node.scale
            elif kind == "CubaLIF":
                i, v = state.get(name, (np.zeros_like(x), np.zeros_like(x)))
                i = i + dt / node.tau_syn * (-i + node.w_in * x)
                v = v + dt / node.tau_mem * ((node.v_leak - v) + node.r * i)
                z = v > node.v_threshold
                v = np.where(z, node.v_reset, v)
                state[name] = (i, v)
                x = z.astype(np.float64)
                spikes[name].append(x)
            else:
                raise AssertionError(kind)
    return {name: np.stack(s) for name, s in spikes.items()}


@pytest.mark.parametrize("dt", [1.0, 1e-4])
@pytest.mark.parametrize("fold_pool_scale", [False, True])
@pytest.mark.parametrize("name", ["mnist_cnn", "fmnist_mlp", "nmnist_cnn"])
def test_exported_graph_under_nir_equations_reproduces_our_network(nir, name, dt, fold_pool_scale):
    """Our discrete LIF model and a forward-Euler reading of the exported NIR equations at the
    graph's dt give the same spikes in every layer, and our output trace is the output spikes
    filtered with the last layer's τs (float64; the two round differently only at 1e-16)."""
    torch.manual_seed(1)
    net = build(name, T=5, tau_m=4.0, tau_s=2.5, threshold=0.8).eval().double()
    x = _input(name, net, n=3).double()
    graph = export_nir(net, get("snn", name).input_shape, dt=dt, fold_pool_scale=fold_pool_scale)
    kinds = [type(n).__name__ for n in graph.nodes.values()]
    assert ("Scale" in kinds) == (not fold_pool_scale and "SumPool2d" in kinds)
    steps = x.unsqueeze(0).expand(net.T, *x.shape) if net.T is not None else x
    reference = _euler_reading(graph, steps.numpy(), dt)
    trace, counts = our_spikes(net, x)
    assert list(reference) == list(counts)
    for layer, z in reference.items():
        assert torch.equal(torch.from_numpy(z.sum(0)), counts[layer]), layer
        assert z.sum() > 0, layer  # every layer spikes: the comparison means something
    last = torch.from_numpy(reference[list(reference)[-1]])
    assert torch.allclose(psp(last, 2.5), trace, rtol=0, atol=1e-12)


def test_cubalif_parameters_follow_the_documented_mapping(nir):
    net = build("mnist_cnn", T=4, tau_m=6.0, tau_s=2.0, threshold=1.5)
    net.encoder.tau_s = 3.0  # the first layer's synapse filters with the encoder's τs
    graph = export_nir(net, (1, 28, 28), dt=0.5, fold_pool_scale=True)
    lifs = [n for n in graph.nodes.values() if isinstance(n, nir.CubaLIF)]
    assert len(lifs) == 4
    for k, node in enumerate(lifs):
        assert np.all(node.tau_syn == (3.0 if k == 0 else 2.0) * 0.5)
        assert np.all(node.tau_mem == 6.0 * 0.5) and np.all(node.r == 6.0)
        assert np.all(node.v_threshold == 1.5) and np.all(node.v_reset == 0)
        assert np.all(node.v_leak == 0)
        assert np.all(node.w_in == (1.1 if k in (1, 2) else 1.0))  # after each 2×2 sum pool
    assert tuple(lifs[0].tau_syn.shape) == (15, 24, 24) and tuple(lifs[3].r.shape) == (10,)


def test_import_without_efficientdl_metadata_reads_the_nir_parameters(nir):
    torch.manual_seed(2)
    net = build("mnist_cnn", T=5).eval().double()
    graph = export_nir(net, (1, 28, 28))
    graph.metadata = {}
    for node in graph.nodes.values():
        node.metadata = {}
    back = import_nir(graph, T=5).eval().double()
    x = _input("mnist_cnn", net).double()
    assert torch.equal(net(x), back(x))
    assert [n.settings.tau_s for n in back.neurons()] == [3.0] * 4
    assert import_nir(graph).T is None  # nothing says T: the network takes [T, N, ...] inputs


def test_export_at_another_dt_round_trips_exactly(nir, tmp_path):
    torch.manual_seed(3)
    net = build("fmnist_mlp", T=4, tau_m=7.0, tau_s=3.3).eval()
    path = tmp_path / "net.nir"
    nir.write(path, export_nir(net, (1, 28, 28), dt=1e-4))
    _assert_same_network(net, import_nir(path))


def _graph(nir, name="mnist_cnn"):
    torch.manual_seed(4)
    return export_nir(build(name, T=3), get("snn", name).input_shape)


def _lif_to_plain_lif(nir, g):
    old = g.nodes["lif_2"]
    g.nodes["lif_2"] = nir.LIF(
        tau=old.tau_mem, r=old.r, v_leak=old.v_leak, v_threshold=old.v_threshold
    )


def _conv_bias(nir, g):
    g.nodes["conv_2"].bias = np.full_like(g.nodes["conv_2"].bias, 0.5)


def _threshold_varies(nir, g):
    g.nodes["lif_4"].v_threshold[0] = 2.0


def _r_tampered(nir, g):
    g.nodes["lif_0"].r = g.nodes["lif_0"].r * 2


def _branch(nir, g):
    g.edges.append(("lif_0", "output"))


@pytest.mark.parametrize(
    "tamper, fragments",
    [
        (_lif_to_plain_lif, ("'lif_2'", "LIF has no efficientdl counterpart")),
        (_conv_bias, ("'conv_2'", "non-zero bias")),
        (_threshold_varies, ("'lif_4'", "v_threshold differs between neurons")),
        (_r_tampered, ("'lif_0'", "r = 10.0")),
        (_branch, ("'lif_0'", "2 outgoing edges")),
    ],
)
def test_graphs_efficientdl_cannot_represent_are_one_line_data_errors(nir, tamper, fragments):
    g = _graph(nir)
    tamper(nir, g)
    with pytest.raises(DataError) as err:
        import_nir(g)
    message = str(err.value)
    assert "\n" not in message and all(f in message for f in fragments), message


def test_a_missing_or_damaged_file_is_a_data_error(nir, tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        import_nir(tmp_path / "none.nir")
    (tmp_path / "bad.nir").write_bytes(b"not hdf5")
    with pytest.raises(DataError, match="not a readable NIR file"):
        import_nir(tmp_path / "bad.nir")


def test_export_refuses_a_wrong_input_shape(nir):
    with pytest.raises(UserError, match=r"layer 0 \(SpikingConv2d, 1 input channels\)"):
        export_nir(build("mnist_cnn"), (3, 28, 28))


def test_without_nir_the_error_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "nir", None)  # `import nir` now fails
    with pytest.raises(UserError, match=r"efficientdl\[nir\]"):
        export_nir(build("fmnist_mlp"), (784,))


def _write_run(run_dir, model: str, **fields):
    """A run folder with the checkpoint of an untrained `model` (what export reads of a run)."""
    from efficientdl.core import save_checkpoint, to_dict
    from efficientdl.snn.config import recipe
    from efficientdl.snn.train import CHECKPOINT, build_network

    r = recipe(model, **fields)
    torch.manual_seed(5)
    net = build_network(r)
    run_dir.mkdir()
    state = {"recipe": to_dict(r), "model": net.state_dict(), "seed": r.seed, "epoch": 0}
    save_checkpoint(run_dir / CHECKPOINT, state)
    return net


def _export(capsys, run_dir, out):
    """`efficientdl snn export --run-dir RUN_DIR --out OUT` in-process → (exit code, stdout,
    stderr), shaped for `assert_one_error`."""
    from types import SimpleNamespace

    from efficientdl.cli import main

    code = main(["snn", "export", "--run-dir", str(run_dir), "--out", str(out)])
    captured = capsys.readouterr()
    return SimpleNamespace(returncode=code, stdout=captured.out, stderr=captured.err)


def test_cli_export_writes_a_graph_that_imports_back(nir, tmp_path, capsys):
    net = _write_run(tmp_path / "run", "fmnist_mlp", T=4)
    proc = _export(capsys, tmp_path / "run", tmp_path / "net.nir")
    assert proc.returncode == 0 and '"model": "fmnist_mlp"' in proc.stdout, proc.stderr
    _assert_same_network(net.eval(), import_nir(tmp_path / "net.nir").eval())
    bad = tmp_path / "missing_folder" / "net.nir"
    assert_one_error(_export(capsys, tmp_path / "run", bad), "cannot write --out", str(bad))


def test_cli_export_of_a_checkpoint_that_does_not_fit_is_one_error_line(nir, tmp_path, capsys):
    from efficientdl.core import load_checkpoint, save_checkpoint
    from efficientdl.snn.train import CHECKPOINT

    _write_run(tmp_path / "run", "fmnist_mlp", T=4)
    state = load_checkpoint(tmp_path / "run" / CHECKPOINT)
    state["model"] = {k: v[..., :1] for k, v in state["model"].items()}  # wrong shapes
    save_checkpoint(tmp_path / "run" / CHECKPOINT, state)
    proc = _export(capsys, tmp_path / "run", tmp_path / "net.nir")
    assert_one_error(proc, "does not match the checkpoint in", str(tmp_path / "run"))


def test_cli_export_of_a_missing_run_is_one_error_line(nir, tmp_path, capsys):
    proc = _export(capsys, tmp_path / "none", tmp_path / "x.nir")
    assert_one_error(proc, "checkpoint", "does not exist")


def test_cli_export_without_nir_is_one_error_line_naming_the_extra(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "nir", None)  # `import nir` now fails
    proc = _export(capsys, tmp_path, tmp_path / "x.nir")
    assert_one_error(proc, "needs the nir package", "efficientdl[nir]")
