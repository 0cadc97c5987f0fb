"""Channel layouts of an unmodified model, found by tracing it with torch.fx.

Every tensor in the traced graph gets a *layout*: its channel count and the set of channels the
fit hypothesis keeps. Convolutions and linears choose their kept output rows (a callback: prefix
rule for `split`, read from the masks for `extract_slim`), everything else propagates layouts or
is rejected with a `KEStructureError` naming the node.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
import torch.fx
from torch import nn

SPLIT_TYPES = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)
NORM_TYPES = (
    nn.BatchNorm1d,
    nn.BatchNorm2d,
    nn.BatchNorm3d,
    nn.InstanceNorm1d,
    nn.InstanceNorm2d,
    nn.InstanceNorm3d,
)
_PRESERVING_MODULES = (
    nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.ELU, nn.GELU, nn.SiLU, nn.Mish, nn.Hardswish,
    nn.Hardsigmoid, nn.Hardtanh, nn.Sigmoid, nn.Tanh, nn.Dropout, nn.Dropout1d, nn.Dropout2d,
    nn.Dropout3d, nn.AlphaDropout, nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d, nn.AvgPool1d,
    nn.AvgPool2d, nn.AvgPool3d, nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.AdaptiveAvgPool3d,
    nn.AdaptiveMaxPool1d, nn.AdaptiveMaxPool2d, nn.AdaptiveMaxPool3d, nn.Identity, nn.Upsample,
)  # fmt: skip
_PRESERVING_NAMES = frozenset(
    """relu relu_ relu6 leaky_relu leaky_relu_ elu elu_ gelu silu mish hardswish hardsigmoid
    hardtanh hardtanh_ sigmoid sigmoid_ tanh tanh_ dropout dropout1d dropout2d dropout3d
    max_pool1d max_pool2d max_pool3d _max_pool1d _max_pool2d _max_pool3d avg_pool1d avg_pool2d
    avg_pool3d adaptive_avg_pool1d adaptive_avg_pool2d adaptive_avg_pool3d adaptive_max_pool1d
    adaptive_max_pool2d adaptive_max_pool3d _adaptive_max_pool1d _adaptive_max_pool2d
    _adaptive_max_pool3d interpolate upsample clamp clamp_ clip contiguous clone detach float
    double half bfloat16 to""".split()
)
_BINARY_NAMES = frozenset("add add_ sub sub_ mul mul_ div div_ true_divide".split())
_BINARY_OPERATORS = frozenset(
    {operator.add, operator.iadd, operator.sub, operator.isub, operator.mul, operator.imul,
     operator.truediv, operator.itruediv}
)  # fmt: skip
_REDUCE_NAMES = frozenset({"mean", "amax", "amin", "sum"})
_SCALAR_METHODS = frozenset({"size", "dim", "numel"})
_RESHAPE_NAMES = frozenset({"flatten", "view", "reshape"})
_SCALAR = object()  # marks graph values that are not tensors (sizes, shapes, ints)


class KEStructureError(ValueError):
    """The model contains an op the kernel-level (KELS) analysis cannot handle."""


@dataclass(frozen=True)
class Layout:
    """Channel count (None: the network input before any conv sees it) and the kept channels
    (None: all of them). `flat`: a map flattened channel-major, with `spatial` positions per
    channel when known from shape propagation."""

    channels: int | None
    kept: tuple[int, ...] | None = None
    flat: bool = False
    spatial: int | None = None

    def indices(self, channels: int | None = None) -> tuple[int, ...]:
        """The kept channel indices (all of `channels` for an unsplit input)."""
        if self.kept is not None:
            return self.kept
        count = self.channels if self.channels is not None else channels
        if count is None:
            raise ValueError("layout without a channel count")
        return tuple(range(count))


@dataclass
class SplitLayer:
    """One conv/linear: kept output `rows` and input `cols` (weight dim 1; for a depthwise conv
    `cols` are its channels and the weight's dim 1 has size 1)."""

    name: str
    module: nn.Module
    rows: tuple[int, ...]
    cols: tuple[int, ...]
    output: bool
    depthwise: bool = False


@dataclass
class Structure:
    """The result of `analyse`: split layers and normalisation layers in graph order."""

    layers: dict[str, SplitLayer] = field(default_factory=dict)
    norms: dict[str, tuple[int, ...]] = field(default_factory=dict)


RowsFn = Callable[[str, nn.Module, tuple[int, ...] | None, bool], Sequence[int]]


def trace(model: nn.Module) -> torch.fx.GraphModule:
    """Symbolically trace `model` (standard `nn` layers as leaves) without changing it."""
    try:
        return torch.fx.symbolic_trace(model)
    except Exception as err:  # noqa: BLE001 - every tracer failure gets the same hint
        raise KEStructureError(
            f"torch.fx could not trace {type(model).__name__}: {type(err).__name__}: {err}. "
            "KELS needs a traceable forward; scheme='wels' needs no tracing"
        ) from err


def _where(node: torch.fx.Node) -> str:
    stack = node.meta.get("nn_module_stack") or {}
    paths = [v[0] if isinstance(v, tuple) else str(k) for k, v in stack.items()]
    path = paths[-1] if paths else ""
    target = node.target if isinstance(node.target, str) else getattr(node.target, "__name__", "")
    where = f" in module '{path}'" if path else ""
    return f"node '{node.name}' ({node.op} {target}){where}"


def _fail(node: torch.fx.Node, why: str) -> KEStructureError:
    return KEStructureError(f"KELS cannot handle {_where(node)}: {why}")


def _shape(node) -> tuple[int, ...] | None:
    meta = node.meta.get("tensor_meta") if isinstance(node, torch.fx.Node) else None
    return tuple(meta.shape) if meta is not None and hasattr(meta, "shape") else None


class _Analyser:
    def __init__(self, gm: torch.fx.GraphModule, rows_for: RowsFn) -> None:
        self.gm = gm
        self.modules = dict(gm.named_modules())
        self.rows_for = rows_for
        self.env: dict[torch.fx.Node, object] = {}
        self.result = Structure()
        self.called: set[str] = set()
        self.outputs = self._output_layers()

    def _preserves(self, node: torch.fx.Node) -> bool:
        """Whether `node` is a single-input op that keeps its input's channels in place."""
        if node.op == "call_module":
            mod = self.modules[node.target]
            return isinstance(mod, NORM_TYPES + _PRESERVING_MODULES + (nn.Flatten,))
        if node.op in ("call_function", "call_method"):
            name = node.target if isinstance(node.target, str) else node.target.__name__
            return name in _PRESERVING_NAMES | _REDUCE_NAMES | _RESHAPE_NAMES | {"getitem"}
        return False

    def _output_layers(self) -> set[str]:
        """Conv/linear modules whose output reaches a model output through preserving ops."""
        work = [n for n in self.gm.graph.nodes if n.op == "output"]
        work = [a for n in work for a in n.all_input_nodes]
        seen: set[torch.fx.Node] = set()
        found: set[str] = set()
        while work:
            node = work.pop()
            if node in seen:
                continue
            seen.add(node)
            if node.op == "call_module" and isinstance(self.modules[node.target], SPLIT_TYPES):
                found.add(node.target)
            elif self._preserves(node) and node.all_input_nodes:
                work.append(node.all_input_nodes[0])
        return found

    def run(self) -> Structure:
        for node in self.gm.graph.nodes:
            self.env[node] = self._visit(node)
        if not self.result.layers:
            raise ValueError("the model has no Conv1d/2d/3d or Linear layer to split")
        return self.result

    def _layout(self, node: torch.fx.Node, arg) -> Layout:
        value = self.env.get(arg) if isinstance(arg, torch.fx.Node) else _SCALAR
        if not isinstance(value, Layout):
            raise _fail(node, f"expected a tensor input, got {arg!r}")
        return value

    def _visit(self, node: torch.fx.Node):
        if node.op == "placeholder":
            shape = _shape(node)
            if not shape or len(shape) < 2:
                return Layout(None)
            return Layout(shape[1], flat=len(shape) == 2)
        if node.op == "output":
            return None
        if node.op == "get_attr":
            raise _fail(node, "parameters or buffers used outside standard layers are unsupported")
        if node.op == "call_module":
            return self._module(node)
        name = node.target if isinstance(node.target, str) else node.target.__name__
        tensors = [a for a in node.all_input_nodes if isinstance(self.env.get(a), Layout)]
        if not tensors:
            return _SCALAR  # shapes, sizes and arithmetic on them
        if node.op == "call_function" and node.target is torch.cat:
            return self._cat(node)
        if node.target in _BINARY_OPERATORS or name in _BINARY_NAMES:
            return self._binary(node, tensors)
        if name in _SCALAR_METHODS or (name == "getattr" and node.args[1] == "shape"):
            return _SCALAR
        first = self._layout(node, node.args[0])
        if name in _PRESERVING_NAMES:
            return first
        if name == "flatten":
            dims = (self._arg(node, 1, "start_dim", 0), self._arg(node, 2, "end_dim", -1))
            return self._flatten(node, first, dims)
        if name in ("view", "reshape"):
            return self._reshape(node, first, node.args[1:])
        if name in _REDUCE_NAMES:
            return self._reduce(node, first)
        if name == "getitem":
            return self._getitem(node, first)
        raise _fail(node, "unsupported operation")

    @staticmethod
    def _arg(node, index: int, key: str, default):
        if len(node.args) > index:
            return node.args[index]
        return node.kwargs.get(key, default)

    def _flatten(self, node, layout: Layout, dims: tuple[int, int]) -> Layout:
        if dims != (1, -1):
            raise _fail(node, "only flatten(x, 1) (all but the batch dimension) is supported")
        if layout.flat:
            return layout
        shape = _shape(node.args[0]) if node.args else None
        spatial = math.prod(shape[2:]) if shape is not None else None
        return Layout(layout.channels, layout.kept, flat=True, spatial=spatial)

    def _reduce(self, node, layout: Layout) -> Layout:
        dims = self._arg(node, 1, "dim", None)
        dims = (dims,) if isinstance(dims, int) else dims
        shape = _shape(node.args[0])
        if shape is not None and dims is not None:
            dims = tuple(d % len(shape) for d in dims)
        if layout.flat or dims is None or any(d < 2 for d in dims):
            raise _fail(node, f"reduction over dims {dims} touches the channel dimension "
                        "(only spatial dims ≥ 2 are supported; pass example_input for "
                        "negative dims)")  # fmt: skip
        if self._arg(node, 2, "keepdim", False):
            return layout
        out = _shape(node)
        return Layout(layout.channels, layout.kept, flat=out is None or len(out) == 2)

    def _reshape(self, node, layout: Layout, sizes) -> Layout:
        """x.view(n, -1) flattens; x.view(n, C or -1, 1, …) un-flattens a [N, C] vector."""
        sizes = tuple(sizes[0]) if len(sizes) == 1 and isinstance(sizes[0], tuple | list) else sizes
        if len(sizes) == 2 and sizes[1] == -1:
            return self._flatten(node, layout, (1, -1))
        if len(sizes) > 2 and sizes[1] in (-1, layout.channels) and all(s == 1 for s in sizes[2:]):
            if layout.flat and layout.spatial in (None, 1):
                return Layout(layout.channels, layout.kept)
        raise _fail(node, f"reshape to {tuple(sizes)} may mix channels; use flatten(x, 1)")

    def _getitem(self, node, layout: Layout) -> Layout:
        index = node.args[1]
        full = slice(None)
        if isinstance(index, tuple) and len(index) >= 2 and index[0] == full and index[1] == full:
            if any(i is None for i in index[2:]):  # x[:, :, None, None]: a [N, C, 1, 1] map
                return Layout(layout.channels, layout.kept)
            return layout
        raise _fail(node, f"indexing with {index!r} slices channels (or the batch)")

    def _binary(self, node, tensors) -> Layout:
        layouts = [self.env[t] for t in tensors]
        first = layouts[0]
        for other in layouts[1:]:
            if not _same(first, other):
                raise _fail(
                    node,
                    f"operands have different kept channel sets ({_describe(first)} vs "
                    f"{_describe(other)}); both sides of an add/mul must come from layers that "
                    "keep the same channels",
                )
        return first

    def _cat(self, node) -> Layout:
        parts = [self._layout(node, a) for a in self._arg(node, 0, "tensors", [])]
        dim = self._arg(node, 1, "dim", 0)
        flat = parts[0].flat if parts else False
        if dim == 1 or (flat and dim == -1):
            if any(p.channels is None for p in parts):
                raise _fail(node, "concatenating the raw network input needs example_input")
            kept, offset = [], 0
            for part in parts:
                kept += [offset + i for i in part.indices()]
                offset += part.channels
            return Layout(offset, tuple(kept), flat=flat)
        return self._binary(node, [a for a in self._arg(node, 0, "tensors", [])])

    def _module(self, node) -> Layout:
        name = node.target
        mod = self.modules[name]
        if isinstance(mod, SPLIT_TYPES + NORM_TYPES):
            if name in self.called:
                raise _fail(node, "a module with weights is called twice (shared weights)")
            self.called.add(name)
        layout = self._layout(node, node.args[0])
        if isinstance(mod, nn.Linear):
            return self._linear(node, name, mod, layout)
        if isinstance(mod, SPLIT_TYPES):
            return self._conv(node, name, mod, layout)
        if isinstance(mod, NORM_TYPES):
            self._check_channels(node, layout, mod.num_features, "num_features")
            self.result.norms[name] = layout.indices(mod.num_features)
            return layout
        if isinstance(mod, nn.Flatten):
            return self._flatten(node, layout, (mod.start_dim, mod.end_dim))
        if isinstance(mod, _PRESERVING_MODULES):
            return layout
        raise _fail(node, f"unsupported layer {type(mod).__name__}")

    def _check_channels(self, node, layout: Layout, expected: int, what: str) -> None:
        if layout.flat or (layout.channels is not None and layout.channels != expected):
            raise _fail(node, f"{what}={expected} but its input has {_describe(layout)}")

    def _conv(self, node, name: str, mod, layout: Layout) -> Layout:
        self._check_channels(node, layout, mod.in_channels, "in_channels")
        cols = layout.indices(mod.in_channels)
        depthwise = mod.groups > 1 and mod.groups == mod.in_channels == mod.out_channels
        if mod.groups > 1 and not depthwise:
            raise _fail(node, f"grouped convolution (groups={mod.groups}) is not supported")
        output = name in self.outputs
        rows = tuple(self.rows_for(name, mod, cols if depthwise else None, output))
        self.result.layers[name] = SplitLayer(name, mod, rows, cols, output, depthwise)
        return Layout(mod.out_channels, rows)

    def _linear(self, node, name: str, mod: nn.Linear, layout: Layout) -> Layout:
        n_in = mod.in_features
        if layout.channels is not None and not layout.flat:
            raise _fail(node, "a Linear on a spatial map acts on its last dim; flatten(x, 1) first")
        if layout.channels is None or (layout.channels == n_in and layout.spatial in (None, 1)):
            cols = layout.indices(n_in)
        elif layout.flat and n_in % layout.channels == 0:
            s = n_in // layout.channels  # channel-major flatten: feature c·S + s
            if layout.spatial is not None and layout.spatial != s:
                raise _fail(node, f"in_features={n_in} but the flattened map has "
                            f"{layout.channels}×{layout.spatial} features")  # fmt: skip
            cols = tuple(c * s + i for c in layout.indices() for i in range(s))
        else:
            raise _fail(node, f"in_features={n_in} but its input has {_describe(layout)}")
        output = name in self.outputs
        rows = tuple(self.rows_for(name, mod, None, output))
        self.result.layers[name] = SplitLayer(name, mod, rows, cols, output)
        return Layout(mod.out_features, rows, flat=True)


def _same(a: Layout, b: Layout) -> bool:
    if a.channels is None or b.channels is None:
        known = b if a.channels is None else a
        return known.kept is None or known.kept == tuple(range(known.channels or 0))
    return a.channels == b.channels and a.indices() == b.indices()


def _describe(layout: Layout) -> str:
    if layout.channels is None:
        return "all input channels"
    kept = layout.indices()
    shown = f"{list(kept[:6])}{'…' if len(kept) > 6 else ''}"
    return f"{layout.channels} channels, {len(kept)} kept {shown}"


def _propagate_shapes(gm: torch.fx.GraphModule, example_input: torch.Tensor) -> None:
    """Run ShapeProp in eval mode without gradients, restoring every module's training flag."""
    from torch.fx.passes.shape_prop import ShapeProp

    modes = {m: m.training for m in gm.modules()}
    try:
        gm.eval()
        with torch.no_grad():
            ShapeProp(gm).propagate(example_input)
    except Exception as err:  # noqa: BLE001 - any failure means the input does not fit
        shape = tuple(example_input.shape)
        raise ValueError(f"example_input of shape {shape} does not run through the model: "
                         f"{str(err).splitlines()[0]}") from err  # fmt: skip
    finally:
        for module, mode in modes.items():
            module.training = mode


def analyse(
    model: nn.Module, rows_for: RowsFn, *, example_input: torch.Tensor | None = None
) -> Structure:
    """Trace `model` and give every conv/linear its kept rows (from `rows_for(name, module,
    depthwise_channels, is_output)`) and kept cols (its input's kept channels), every
    BatchNorm/InstanceNorm its kept channels. The model is not modified."""
    gm = trace(model)
    if example_input is not None:
        _propagate_shapes(gm, example_input)
    return _Analyser(gm, rows_for).run()
