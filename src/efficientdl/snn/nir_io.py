"""NIR (Neuromorphic Intermediate Representation) export and import of a `SpikingNetwork`.

A network becomes the chain Input → [Flatten] → Conv2d | Linear → CubaLIF → [SumPool2d → Scale]
→ … → Output. The graph is continuous-time; its parameters are chosen so that a reader that
integrates it by forward Euler with the graph's time step dt (default 1) runs our discrete model:

    synapse  i[t] = i[t−1] + dt/τ_syn·(w_in·x[t] − i[t−1])     τ_syn = τs·dt, w_in = 1
    membrane v[t] = v[t−1] + dt/τ_mem·(R·i[t] − v[t−1])        τ_mem = τm·dt, R = τ_mem/dt = τm
    spike    z[t] = v[t] > v_threshold, then v[t] = v_reset     v_threshold = V_th, v_reset = 0

i.e. i = λs·i + x/τs (the PSP trace of the presynaptic spikes, carried through the linear weights)
and v = λm·v + i. τ_syn of a CubaLIF node is the τs of the presynaptic neurons (the encoder's for
the first layer). What NIR does not carry — T, the static-input folding, the last layer's τs (the
output trace), the TSSL-BP backward options and the dropout layers — is kept as JSON in the nodes'
`metadata["efficientdl"]`, so export → `nir.write` → `nir.read` → import is exact. docs/nir.md
derives the mapping and lists what other simulators run differently.
"""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import numpy as np
import torch

from efficientdl.core.errors import DataError, UserError
from efficientdl.snn.layers import (
    PSPEncoder,
    SpikingConv2d,
    SpikingDropout,
    SpikingLinear,
    SumPool2d,
)
from efficientdl.snn.network import SpikingNetwork
from efficientdl.snn.options import NeuronOptions

EXTRA = "pip install 'efficientdl[nir]'"
FORMAT = "efficientdl.snn/1"
"""The `format` field of the graph's metadata written by `export_nir`."""
META = "efficientdl"
"""The metadata key (a JSON string) under which efficientdl keeps what NIR does not carry."""
_RTOL = 1e-9  # metadata values must agree with the node parameters to this relative tolerance


def require_nir():
    """The `nir` module; a one-line UserError naming the extra when it cannot be imported."""
    try:
        import nir
    except Exception as err:  # a broken install fails with more than ImportError
        raise UserError(f"NIR export/import needs the nir package ({err}); {EXTRA}") from None
    return nir


def _const(value: float, shape) -> np.ndarray:
    return np.full(tuple(shape), value, dtype=np.float64)


def export_nir(
    net: SpikingNetwork,
    input_shape,
    *,
    dt: float = 1.0,
    fold_pool_scale: bool = False,
):
    """The NIR graph (`nir.NIRGraph`) of `net` for one input sample of `input_shape` ((C, H, W)
    or (features,), no time or batch axis), integrated with time step `dt`.

    Each conv/linear layer is a `Conv2d` (zero bias) / `Linear` node followed by a `CubaLIF`
    (τ_syn = τs·dt of the presynaptic neurons, τ_mem = τm·dt, R = τm, v_threshold = V_th,
    v_reset = 0, v_leak = 0); sum pooling is `SumPool2d` then `Scale`, or, with
    `fold_pool_scale`, the scale goes into the next CubaLIF's `w_in` (for readers without a
    Scale node). Dropout (identity at inference) is left out and noted in the metadata.
    """
    nir = require_nir()
    if not dt > 0:
        raise UserError(f"dt must be > 0, got {dt}")
    shape = shape_in = tuple(int(d) for d in input_shape)
    if len(shape) not in (1, 3):
        raise UserError(f"input_shape must be (C, H, W) or (features,), got {tuple(input_shape)}")
    nodes = {"input": nir.Input(input_type={"input": np.array(shape)})}
    meta = {"input": {}}
    edges, last = [], "input"
    pre_tau_s, pending_scale = net.encoder.tau_s, 1.0
    spiking_last = False  # the layers end with a neuron (not with pooling)

    def add(name, node):
        nonlocal last
        nodes[name], meta[name] = node, {}
        edges.append((last, name))
        last = name

    for i, layer in enumerate(net.layers):
        if isinstance(layer, SpikingConv2d):
            if len(shape) != 3 or shape[0] != layer.in_channels:
                raise UserError(
                    f"layer {i} (SpikingConv2d, {layer.in_channels} input channels) gets input "
                    f"of shape {shape}"
                )
            weight = layer.weight.detach().cpu().numpy().copy()
            add(
                f"conv_{i}",
                nir.Conv2d(
                    input_shape=shape[1:],
                    weight=weight,
                    stride=layer.stride,
                    padding=layer.padding,
                    dilation=1,
                    groups=1,
                    bias=np.zeros(layer.out_channels, dtype=weight.dtype),
                ),
            )
            k, s, p = layer.kernel_size, layer.stride, layer.padding
            shape = (
                layer.out_channels,
                (shape[1] + 2 * p - k) // s + 1,
                (shape[2] + 2 * p - k) // s + 1,
            )
        elif isinstance(layer, SpikingLinear):
            if math.prod(shape) != layer.in_features:
                raise UserError(
                    f"layer {i} (SpikingLinear, {layer.in_features} inputs) gets input of "
                    f"shape {shape}"
                )
            if len(shape) != 1:
                add(f"flatten_{i}", nir.Flatten(input_type={"input": np.array(shape)}, start_dim=0))
            add(f"linear_{i}", nir.Linear(weight=layer.weight.detach().cpu().numpy().copy()))
            shape = (layer.out_features,)
        elif isinstance(layer, SumPool2d):
            k = layer.kernel_size
            if len(shape) != 3 or shape[1] % k or shape[2] % k:
                raise UserError(f"layer {i} (SumPool2d({k})) gets input of shape {shape}")
            add(
                f"pool_{i}",
                nir.SumPool2d(
                    kernel_size=np.array([k, k]), stride=np.array([k, k]), padding=np.zeros(2)
                ),
            )
            shape = (shape[0], shape[1] // k, shape[2] // k)
            spiking_last = False
            if fold_pool_scale:
                pending_scale *= layer.scale
            else:
                add(f"scale_{i}", nir.Scale(scale=_const(layer.scale, shape)))
            continue
        elif isinstance(layer, SpikingDropout):
            meta[last]["dropout"] = {"p": layer.p, "mask": layer.mask}
            continue
        else:
            raise UserError(f"layer {i} ({type(layer).__name__}) has no NIR counterpart")
        neuron = layer.neuron
        add(
            f"lif_{i}",
            nir.CubaLIF(
                tau_syn=_const(pre_tau_s * dt, shape),
                tau_mem=_const(neuron.tau_m * dt, shape),
                r=_const(neuron.tau_m, shape),
                v_leak=_const(0.0, shape),
                v_threshold=_const(neuron.threshold, shape),
                v_reset=_const(0.0, shape),
                w_in=_const(pending_scale, shape),
            ),
        )
        meta[last]["neuron"] = dataclasses.asdict(neuron.settings)
        pre_tau_s, pending_scale, spiking_last = neuron.tau_s, 1.0, True
    if not spiking_last:
        raise UserError("NIR export needs a network whose last layer is a spiking conv/linear")
    add("output", nir.Output(output_type={"output": np.array(shape)}))
    for name, data in meta.items():
        if data:
            nodes[name].metadata = {META: json.dumps(data, sort_keys=True)}
    graph = nir.NIRGraph(nodes=nodes, edges=edges)
    header = {
        "format": FORMAT,
        "dt": dt,
        "T": net.encoder.T,
        "fold_static_input": net.fold_static_input,
        "encoder_tau_s": net.encoder.tau_s,
        "input_shape": list(shape_in),
    }
    graph.metadata = {META: json.dumps(header, sort_keys=True)}
    return graph


def _read_meta(node) -> dict:
    """The efficientdl metadata of a node or graph ({} when absent)."""
    raw = (getattr(node, "metadata", None) or {}).get(META)
    if raw is None:
        return {}
    if isinstance(raw, np.ndarray):
        raw = raw.item()
    if isinstance(raw, bytes):
        raw = raw.decode("utf8")
    try:
        return json.loads(raw)
    except (TypeError, ValueError):
        raise DataError(f"metadata[{META!r}] is not JSON: {str(raw)[:60]!r}") from None


def _uniform(name: str, node, field: str) -> float:
    values = np.asarray(getattr(node, field), dtype=np.float64)
    if values.size == 0 or not np.all(values == values.flat[0]):
        raise DataError(
            f"node {name!r}: {field} differs between neurons; efficientdl layers share one value"
        )
    return float(values.flat[0])


def _agree(name: str, field: str, stored, derived: float) -> float:
    """`stored` (exact, from metadata) if it agrees with the node's `derived` value, else a
    DataError; `derived` when nothing was stored."""
    if stored is None:
        return derived
    if not math.isclose(stored, derived, rel_tol=_RTOL, abs_tol=1e-12):
        raise DataError(
            f"node {name!r}: {field} {derived} does not match its efficientdl metadata {stored}"
        )
    return float(stored)


def _chain(graph, nir) -> list[str]:
    """The node names of `graph` from its Input to its Output (DataError unless a chain)."""
    inputs = [k for k, n in graph.nodes.items() if isinstance(n, nir.Input)]
    if len(inputs) != 1:
        raise DataError(f"the graph has {len(inputs)} Input nodes; efficientdl imports exactly one")
    successors: dict[str, list[str]] = {}
    for src, dst in graph.edges:
        successors.setdefault(src, []).append(dst)
    order, name = [], inputs[0]
    while True:
        order.append(name)
        if isinstance(graph.nodes[name], nir.Output):
            break
        after = successors.get(name, [])
        if len(after) != 1 or after[0] in order:
            raise DataError(
                f"node {name!r} has {len(after)} outgoing edges ({', '.join(after) or 'none'}); "
                "efficientdl imports a feed-forward chain of layers only"
            )
        name = after[0]
    if len(order) != len(graph.nodes):
        extra = sorted(set(graph.nodes) - set(order))
        raise DataError(f"node {extra[0]!r} is not on the Input → Output chain")
    return order


def _square(name: str, value, what: str) -> int:
    values = np.atleast_1d(np.asarray(value)).astype(np.int64)
    if not np.all(values == values[0]):
        raise DataError(f"node {name!r}: {what} {values.tolist()} is not the same in x and y")
    return int(values[0])


def _zero_bias(name: str, node) -> None:
    bias = getattr(node, "bias", None)
    if bias is not None and np.any(np.asarray(bias) != 0):
        raise DataError(f"node {name!r}: non-zero bias; efficientdl's spiking layers have none")


def import_nir(graph, *, dt: float | None = None, T: int | None = None) -> SpikingNetwork:
    """A `SpikingNetwork` from a NIR graph (a `nir.NIRGraph` or the path of a .nir file).

    Reads the chain written by `export_nir` (or an equivalent one from another tool) and inverts
    its mapping; `dt` is the graph's time step (default: the one it was exported with, else 1),
    `T` the steps a static input is shown (default: the exported T; without one, the network
    takes [T, N, ...] inputs). A node efficientdl cannot represent is a DataError naming it.
    """
    nir = require_nir()
    if isinstance(graph, str | Path):
        path = Path(graph)
        if not path.is_file():
            raise DataError(f"NIR file {path} does not exist")
        try:
            graph = nir.read(path)
        except Exception as err:  # h5py and nir raise many kinds on a damaged file
            raise DataError(
                f"{path} is not a readable NIR file ({type(err).__name__}: {err})"
            ) from None
    if not isinstance(graph, nir.NIRGraph):
        raise DataError(f"expected a NIR graph or the path of a .nir file, got {type(graph)}")
    header = _read_meta(graph)
    if header and header.get("format") != FORMAT:
        raise DataError(f"graph metadata format {header.get('format')!r}, expected {FORMAT!r}")
    dt = float(dt if dt is not None else header.get("dt", 1.0))
    if not dt > 0:
        raise DataError(f"dt must be > 0, got {dt}")
    order = _chain(graph, nir)
    layers, neurons = [], []  # neurons: (layer index, NeuronOptions fields, τ_syn/dt)
    synapse = None  # (name, node) of a weight node waiting for its CubaLIF
    pool = None  # [the SumPool2d, whether a Scale node gave its scale] until the next CubaLIF
    encoder_tau_s = None
    for name in order[:-1]:
        node = graph.nodes[name]
        meta = _read_meta(node)
        if isinstance(node, nir.Input):
            pass
        elif isinstance(node, nir.Flatten):
            if synapse is not None or int(node.start_dim) != 0 or int(node.end_dim) != -1:
                raise DataError(f"node {name!r}: only a full Flatten before a Linear is supported")
        elif isinstance(node, nir.Conv2d | nir.Linear | nir.Affine):
            if synapse is not None:
                raise DataError(f"node {name!r}: two weight layers without a CubaLIF between them")
            _zero_bias(name, node)
            synapse = (name, node)
        elif isinstance(node, nir.CubaLIF):
            if synapse is None:
                raise DataError(f"node {name!r}: a CubaLIF must follow a Conv2d or Linear node")
            fields, tau_syn = _neuron_fields(name, node, meta.get("neuron", {}), dt)
            w_in = _uniform(name, node, "w_in")
            if pool is not None and not pool[1]:  # the pooling's scale was folded into w_in
                pool[0].scale = w_in
            elif w_in != 1.0:
                raise DataError(
                    f"node {name!r}: w_in = {w_in}, expected 1 (or the scale of a SumPool2d "
                    "without a Scale node just before it)"
                )
            if neurons:
                previous = neurons[-1][1]
                previous["tau_s"] = _agree(name, "tau_syn/dt", previous.get("tau_s"), tau_syn)
            else:
                encoder_tau_s = _agree(name, "tau_syn/dt", header.get("encoder_tau_s"), tau_syn)
            neurons.append((len(layers), fields, tau_syn))
            layers.append(_synapse_layer(*synapse))
            synapse = pool = None
        elif isinstance(node, nir.SumPool2d):
            if synapse is not None or pool is not None:
                raise DataError(f"node {name!r}: a SumPool2d must follow a CubaLIF or the Input")
            k = _square(name, node.kernel_size, "kernel_size")
            if _square(name, node.stride, "stride") != k or np.any(np.asarray(node.padding) != 0):
                raise DataError(f"node {name!r}: only k×k pooling with stride k and no padding")
            pool = [SumPool2d(k, scale=1.0), False]
            layers.append(pool[0])
        elif isinstance(node, nir.Scale):
            if pool is None or pool[1]:
                raise DataError(f"node {name!r}: a Scale must follow a SumPool2d")
            pool[0].scale, pool[1] = _uniform(name, node, "scale"), True
        else:
            raise DataError(
                f"node {name!r}: NIR {type(node).__name__} has no efficientdl counterpart "
                "(supported: Conv2d, Linear, Affine without bias, CubaLIF, SumPool2d, Scale, "
                "Flatten)"
            )
        if "dropout" in meta:
            layers.append(SpikingDropout(meta["dropout"]["p"], mask=meta["dropout"]["mask"]))
    if synapse is not None or not neurons or pool is not None:
        raise DataError("the graph must end with a CubaLIF before its Output")
    for index, fields, tau_syn in neurons:
        fields.setdefault("tau_s", tau_syn)  # the last layer's τs, if its metadata is missing
        try:
            layers[index].neuron.settings = NeuronOptions(**fields)
        except (TypeError, ValueError) as err:
            raise DataError(f"layer {index}: neuron settings {fields} rejected ({err})") from None
    T = T if T is not None else header.get("T")
    encoder = PSPEncoder(encoder_tau_s, T=T)
    return SpikingNetwork(encoder, layers, fold_static_input=header.get("fold_static_input", True))


def _neuron_fields(name: str, node, stored: dict, dt: float) -> tuple[dict, float]:
    """The NeuronOptions fields of CubaLIF `node` (τs not yet known) and its τ_syn/dt."""
    for field in ("v_leak", "v_reset"):
        if _uniform(name, node, field) != 0.0:
            raise DataError(f"node {name!r}: {field} must be 0 (efficientdl resets to zero)")
    tau_m = _agree(name, "tau_mem/dt", stored.get("tau_m"), _uniform(name, node, "tau_mem") / dt)
    r = _uniform(name, node, "r")
    if not math.isclose(r, tau_m, rel_tol=1e-6):
        raise DataError(f"node {name!r}: r = {r}, expected tau_mem/dt = {tau_m}")
    threshold = _agree(
        name, "v_threshold", stored.get("threshold"), _uniform(name, node, "v_threshold")
    )
    return {**stored, "tau_m": tau_m, "threshold": threshold}, _uniform(name, node, "tau_syn") / dt


def _synapse_layer(name: str, node):
    """The efficientdl conv/linear layer of weight node `node` (its neuron is set afterwards)."""
    import nir

    weight = torch.from_numpy(np.array(node.weight))
    if isinstance(node, nir.Conv2d):
        if weight.dim() != 4 or weight.shape[2] != weight.shape[3]:
            raise DataError(f"node {name!r}: only square 2-D kernels, got {tuple(weight.shape)}")
        if _square(name, node.dilation, "dilation") != 1 or int(node.groups) != 1:
            raise DataError(f"node {name!r}: dilation and groups must be 1")
        if isinstance(node.padding, str):
            raise DataError(f"node {name!r}: padding {node.padding!r}; give it as integers")
        layer = SpikingConv2d(
            weight.shape[1],
            weight.shape[0],
            weight.shape[2],
            stride=_square(name, node.stride, "stride"),
            padding=_square(name, node.padding, "padding"),
        )
    else:
        if weight.dim() != 2:
            raise DataError(f"node {name!r}: weight must be 2-D, got {tuple(weight.shape)}")
        layer = SpikingLinear(weight.shape[1], weight.shape[0])
    layer.weight = torch.nn.Parameter(weight)
    return layer


__all__ = ["EXTRA", "FORMAT", "META", "export_nir", "import_nir", "require_nir"]
