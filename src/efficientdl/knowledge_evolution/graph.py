"""Channel structure of an unmodified model, found by tracing it with torch.fx.

Every tensor in the traced graph carries the atoms of its channels (see `channels`): convs and
linears create atoms for their rows, channel-moving ops (cat, slicing, chunk, shuffles, permutes
to channels-last) rearrange them, and ops that need channels kept or dropped together join their
classes. Anything else raises a `KEStructureError` naming the node and its module.
"""

from __future__ import annotations

import math
import operator
from dataclasses import dataclass

import torch
import torch.fx
from torch import nn

from efficientdl.knowledge_evolution.channels import (
    ChannelGraph,
    KEStructureError,
    LayerUse,
    SliceCheck,
    SplitLayer,
    Structure,
)

__all__ = ["KEStructureError", "SPLIT_TYPES", "SplitLayer", "Structure", "analyse", "trace"]

SPLIT_TYPES = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)
_CONV_TYPES = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
NORM_TYPES = (
    nn.BatchNorm1d,
    nn.BatchNorm2d,
    nn.BatchNorm3d,
    nn.InstanceNorm1d,
    nn.InstanceNorm2d,
    nn.InstanceNorm3d,
    nn.GroupNorm,
    nn.LayerNorm,
)
_PRESERVING_MODULES = (
    nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.ELU, nn.CELU, nn.SELU, nn.GELU, nn.SiLU, nn.Mish,
    nn.Hardswish, nn.Hardsigmoid, nn.Hardtanh, nn.Sigmoid, nn.Tanh, nn.Softplus, nn.Dropout,
    nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout, nn.FeatureAlphaDropout,
    nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d, nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d,
    nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.AdaptiveAvgPool3d, nn.AdaptiveMaxPool1d,
    nn.AdaptiveMaxPool2d, nn.AdaptiveMaxPool3d, nn.Identity, nn.Upsample, nn.ZeroPad2d,
    nn.ConstantPad2d, nn.ReflectionPad2d, nn.ReplicationPad2d,
)  # fmt: skip
_PRESERVING_NAMES = frozenset(
    """relu relu_ relu6 leaky_relu leaky_relu_ elu elu_ celu selu gelu silu silu_ mish
    hardswish hardswish_ hardsigmoid hardsigmoid_ hardtanh hardtanh_ sigmoid sigmoid_ tanh tanh_
    softplus exp abs neg sqrt rsqrt square erf dropout dropout1d dropout2d dropout3d
    alpha_dropout feature_alpha_dropout stochastic_depth drop_path bernoulli bernoulli_
    max_pool1d max_pool2d max_pool3d _max_pool1d _max_pool2d _max_pool3d avg_pool1d avg_pool2d
    avg_pool3d adaptive_avg_pool1d adaptive_avg_pool2d adaptive_avg_pool3d adaptive_max_pool1d
    adaptive_max_pool2d adaptive_max_pool3d _adaptive_max_pool1d _adaptive_max_pool2d
    _adaptive_max_pool3d interpolate upsample clamp clamp_ clip contiguous clone detach float
    double half bfloat16 to type_as requires_grad_ expand expand_as""".split()
)
_BINARY_NAMES = frozenset(
    "add add_ sub sub_ mul mul_ div div_ true_divide maximum minimum pow addcmul addcdiv".split()
)
_FUNCTIONAL_LAYERS = {"linear": nn.Linear, "conv1d": nn.Conv1d, "conv2d": nn.Conv2d,
                      "conv3d": nn.Conv3d}  # fmt: skip
_BINARY_OPERATORS = frozenset(
    {operator.add, operator.iadd, operator.sub, operator.isub, operator.mul, operator.imul,
     operator.truediv, operator.itruediv, operator.pow}
)  # fmt: skip
_FRESH_NAMES = frozenset(
    """new_empty new_zeros new_ones new_full new_tensor empty_like zeros_like ones_like
    full_like rand_like randn_like""".split()
)  # tensors whose values do not depend on the input's channels: broadcast operands
_META_ATTRS = frozenset({"shape", "ndim", "dtype", "device", "is_cuda", "requires_grad"})
_SCALAR_FUNCS = {
    operator.add, operator.sub, operator.mul, operator.floordiv, operator.truediv,
    operator.mod, operator.neg, operator.getitem, operator.eq, operator.ne, operator.lt,
    operator.le, operator.gt, operator.ge,
}  # fmt: skip


@dataclass(frozen=True)
class Channels:
    """A tensor's channel atoms: `ids` has the shape of its channel dims (one dim, or several
    after a view splits the channels), which start at dim `dim` of a tensor of rank `ndim`
    (None: unknown). `pending`: a map flattened with flatten(x, 1) whose positions per channel
    are not known yet (the consuming Linear resolves them)."""

    ids: torch.Tensor
    dim: int = 1
    ndim: int | None = None
    pending: bool = False

    @property
    def size(self) -> int:
        """The number of channels."""
        return self.ids.numel()

    def flat(self) -> torch.Tensor:
        """The atoms in channel order."""
        return self.ids.flatten()


@dataclass(frozen=True)
class Unsized:
    """A network input whose channel count is not known (no example_input): always kept."""


@dataclass(frozen=True)
class Param:
    """A parameter or buffer read with get_attr, or a view of it: `name` (qualified), its
    current `shape`, and `dim`, the dim of the stored tensor that its only non-singleton dim
    comes from (None when it has several)."""

    name: str
    shape: tuple[int, ...]
    dim: int | None

    @staticmethod
    def of(name: str, shape: tuple[int, ...]) -> Param:
        """The Param of a stored tensor of `shape`."""
        big = [i for i, s in enumerate(shape) if s != 1]
        return Param(name, shape, big[0] if len(big) == 1 else None)


@dataclass(frozen=True)
class Scalar:
    """A non-tensor value (sizes, shapes, ints) or a tensor that does not carry channels;
    `value` is the Python value when known."""

    value: object = None


_UNKNOWN = Scalar()


def trace(model: nn.Module) -> torch.fx.GraphModule:
    """Symbolically trace `model` (standard `nn` layers as leaves) in training mode, so that
    branches which run only while training (GoogLeNet's and Inception-v3's auxiliary heads)
    are in the graph; every module's mode is restored afterwards."""
    modes = {m: m.training for m in model.modules()}
    try:
        model.train()
        return torch.fx.symbolic_trace(model)
    except Exception as err:  # noqa: BLE001 - every tracer failure gets the same hint
        raise KEStructureError(
            f"torch.fx could not trace {type(model).__name__}: {type(err).__name__}: {err}. "
            "KELS needs a traceable forward; scheme='wels' needs no tracing"
        ) from err
    finally:
        for module, mode in modes.items():
            module.training = mode


def _target_name(node: torch.fx.Node) -> str:
    return node.target if isinstance(node.target, str) else getattr(node.target, "__name__", "")


def _where(node: torch.fx.Node) -> str:
    stack = node.meta.get("nn_module_stack") or {}
    paths = [v[0] if isinstance(v, tuple) else str(k) for k, v in stack.items()]
    path = paths[-1] if paths else ""
    where = f" in module '{path}'" if path else ""
    return f"node '{node.name}' ({node.op} {_target_name(node)}){where}"


def _fail(node: torch.fx.Node, why: str) -> KEStructureError:
    return KEStructureError(f"KELS cannot handle {_where(node)}: {why}")


def _shape(node) -> tuple[int, ...] | None:
    meta = node.meta.get("tensor_meta") if isinstance(node, torch.fx.Node) else None
    return tuple(meta.shape) if meta is not None and hasattr(meta, "shape") else None


def _arg(node, index: int, key: str, default):
    if len(node.args) > index:
        return node.args[index]
    return node.kwargs.get(key, default)


def _dims_arg(node, start: int) -> tuple:
    """Dims given as f(x, *dims) or f(x, dims)."""
    rest = node.args[start:]
    if len(rest) == 1 and isinstance(rest[0], tuple | list):
        return tuple(rest[0])
    if not rest and "dims" in node.kwargs:
        return tuple(node.kwargs["dims"])
    return tuple(rest)


class _Analyser:
    def __init__(self, gm: torch.fx.GraphModule, model: nn.Module) -> None:
        self.gm = gm
        self.modules = dict(model.named_modules())  # the traced copy has plain containers
        self.env: dict[torch.fx.Node, object] = {}
        self.graph = ChannelGraph()
        self.called: set[str] = set()

    def run(self) -> ChannelGraph:
        for node in self.gm.graph.nodes:
            self.env[node] = self._visit(node)
        if not self.graph.layers:
            raise ValueError("the model has no Conv1d/2d/3d or Linear layer to split")
        return self.graph

    # ---- values -------------------------------------------------------------------------

    def _value(self, arg):
        if isinstance(arg, torch.fx.Node):
            return self.env.get(arg, _UNKNOWN)
        if isinstance(arg, tuple | list):
            values = [self._value(a) for a in arg]
            if any(isinstance(v, Channels | Unsized | Param) for v in values):
                return tuple(values)
            known = all(isinstance(v, Scalar) and v.value is not None for v in values)
            return Scalar(type(arg)(v.value for v in values) if known else None)
        return Scalar(arg)

    def _known(self, arg):
        """The Python value of a scalar argument, or None when unknown."""
        value = self._value(arg)
        return value.value if isinstance(value, Scalar) else None

    def _channels(self, node, arg, size: int | None = None) -> Channels:
        """The channels of a tensor argument; an unsized input gets `size` kept channels."""
        value = self._value(arg)
        if isinstance(value, Unsized):
            if size is None:
                raise _fail(node, "the input's channel count is unknown; pass example_input")
            return self._input(size)
        if not isinstance(value, Channels):
            raise _fail(node, f"expected a tensor with channels, got {arg!r}")
        return value

    def _input(self, size: int) -> Channels:
        """`size` channels of a network input (always kept)."""
        return Channels(self.graph.new_space("input", size, layer=False))

    def _ndim(self, node, x: Channels) -> int:
        if x.ndim is not None:
            return x.ndim
        shape = _shape(node.args[0]) if node.args else None
        if shape is None:
            raise _fail(node, "the tensor's rank is unknown here; pass example_input")
        return len(shape)

    # ---- dispatch -----------------------------------------------------------------------

    def _visit(self, node: torch.fx.Node):
        if node.op == "placeholder":
            shape = _shape(node)
            if not shape or len(shape) < 2:
                return Unsized()
            ids = self.graph.new_space(node.name, shape[1], layer=False)
            return Channels(ids, 1, len(shape))
        if node.op == "output":
            self._mark_outputs(node.args[0])
            return None
        if node.op == "get_attr":
            value = getattr_path(self.gm, node.target)
            if isinstance(value, torch.Tensor):
                return Param.of(node.target, tuple(value.shape))
            return Scalar(value)
        if node.op == "call_module":
            return self._module(node)
        return self._function(node, _target_name(node))

    def _mark_outputs(self, arg) -> None:
        value = self._value(arg)
        values = value if isinstance(value, tuple) else (value,)
        for v in values:
            if isinstance(v, Channels):
                atoms = v.flat().tolist()
                self.graph.forced.update(atoms)
                self.graph.outputs.update(atoms)
        if isinstance(arg, dict):
            for v in arg.values():
                self._mark_outputs(v)

    def _function(self, node, name: str):
        values = [self._value(a) for a in node.all_input_nodes]
        if not any(isinstance(v, Channels | Unsized | Param) for v in values) and not any(
            isinstance(v, tuple) for v in values
        ):
            return self._scalar(node)
        if isinstance(node.target, type) and issubclass(node.target, tuple):
            # a namedtuple of outputs (GoogLeNetOutputs, InceptionOutputs): its fields
            return tuple(self._value(a) for a in (*node.args, *node.kwargs.values()))
        if node.target in (torch.cat, torch.concat, torch.concatenate):
            return self._cat(node)
        if node.target in _BINARY_OPERATORS or name in _BINARY_NAMES:
            return self._binary(node)
        if name == "getattr":
            return self._getattr(node)
        if name == "getitem":
            return self._getitem(node)
        if name in _FUNCTIONAL_LAYERS:
            return self._functional_layer(node, name)
        first = self._value(node.args[0]) if node.args else _UNKNOWN
        if isinstance(first, Param):
            return self._param_op(node, name, first)
        if name in _FRESH_NAMES:
            return _UNKNOWN
        handler = getattr(self, f"_op_{name.strip('_')}", None)
        if isinstance(first, Unsized) and (handler is not None or name in _PRESERVING_NAMES):
            return _UNKNOWN if name in ("size", "dim", "numel") else first  # kept whole
        if name in _PRESERVING_NAMES:
            return self._channels(node, node.args[0])
        if handler is not None:
            return handler(node, self._channels(node, node.args[0]))
        raise _fail(node, "unsupported operation")

    def _scalar(self, node) -> Scalar:
        """Arithmetic on sizes; evaluated when every argument is known."""
        if node.target in _SCALAR_FUNCS:
            args = [self._known(a) for a in node.args]
            if all(a is not None for a in args):
                try:
                    return Scalar(node.target(*args))
                except Exception:  # noqa: BLE001 - an unknown result only loses a size
                    return _UNKNOWN
        return _UNKNOWN

    # ---- modules ------------------------------------------------------------------------

    def _module(self, node) -> object:
        name = node.target
        mod = self.modules[name]
        if isinstance(mod, SPLIT_TYPES + NORM_TYPES) or any(True for _ in mod.parameters()):
            self._claim(node, name)
        if isinstance(mod, nn.Linear):
            return self._linear(node, name, mod)
        if isinstance(mod, _CONV_TYPES):
            return self._conv(node, name, mod)
        if isinstance(mod, NORM_TYPES):
            return self._norm_module(node, name, mod)
        value = self._value(node.args[0]) if node.args else _UNKNOWN
        if isinstance(mod, nn.Flatten):
            if isinstance(value, Unsized):
                return value
            return self._flatten(node, self._channels(node, node.args[0]), mod.start_dim,
                                 mod.end_dim)  # fmt: skip
        if isinstance(mod, _PRESERVING_MODULES):
            return value if isinstance(value, Unsized) else self._channels(node, node.args[0])
        raise _fail(node, f"unsupported layer {type(mod).__name__}")

    def _claim(self, node, name: str) -> None:
        if name in self.called:
            raise _fail(node, "a module with weights is called twice (shared weights)")
        self.called.add(name)

    def _functional_layer(self, node, name: str) -> Channels:
        """F.linear / F.conv*d on a Conv/Linear module's own weight (timm's Linear subclass
        calls F.linear(x, self.weight, self.bias)): that module's call."""
        weight = self._value(_arg(node, 1, "weight", None))
        owner = weight.name.rpartition(".")[0] if isinstance(weight, Param) else None
        mod = self.modules.get(owner) if owner is not None else None
        kind = _FUNCTIONAL_LAYERS[name]
        groups = 1 if kind is nn.Linear else self._known(_arg(node, 6, "groups", 1))
        if not (isinstance(mod, kind) and weight.name == f"{owner}.weight") or (
            groups != getattr(mod, "groups", 1)
        ):
            raise _fail(node, f"{name} on a tensor that is not the weight of a {kind.__name__} "
                        "(with its groups)")  # fmt: skip
        self._claim(node, owner)
        return self._linear(node, owner, mod) if kind is nn.Linear else self._conv(node, owner, mod)

    def _conv(self, node, name: str, mod) -> Channels:
        x = self._channels(node, node.args[0], mod.in_channels)
        rank = 3 + _CONV_TYPES.index(next(t for t in _CONV_TYPES if isinstance(mod, t)))
        if x.ids.dim() != 1 or x.pending or x.dim != 1 or (x.ndim not in (None, rank)):
            raise _fail(node, "a convolution needs a channels-first input (channels at dim 1)")
        if x.size != mod.in_channels:
            raise _fail(node, f"in_channels={mod.in_channels} but its input has {x.size} channels")
        g = mod.groups
        if g > 1 and mod.in_channels == g:  # depthwise: output channel o reads input o // m
            out = x.ids.repeat_interleave(mod.out_channels // g)
        else:
            out = self.graph.new_space(name, mod.out_channels, layer=True)
            if g > 1:  # per-group kept offsets shared by every group, in and out
                self.graph.unify_along(x.ids.view(g, -1), 0)
                self.graph.unify_along(out.view(g, -1), 0)
        self.graph.layers[name] = LayerUse(name, mod, node.name, x.ids, out, g)
        return Channels(out, 1, rank)

    def _linear(self, node, name: str, mod: nn.Linear) -> Channels:
        n_in = mod.in_features
        x = self._channels(node, node.args[0], n_in)
        ndim = x.ndim
        if x.ids.dim() != 1 or (ndim is not None and x.dim != ndim - 1 and not x.pending):
            raise _fail(node, "a Linear acts on the last dim, which does not hold the channels "
                        "here; flatten(x, 1) or permute to channels-last first")  # fmt: skip
        inputs = x.ids
        if x.pending and x.size != n_in:
            if n_in % x.size:
                raise _fail(node, f"in_features={n_in} but the flattened map has {x.size} channels")
            inputs = x.ids.repeat_interleave(n_in // x.size)  # channel-major: feature c·S + s
        if inputs.numel() != n_in:
            raise _fail(node, f"in_features={n_in} but its input has {inputs.numel()} features")
        out = self.graph.new_space(name, mod.out_features, layer=True)
        self.graph.layers[name] = LayerUse(name, mod, node.name, inputs, out)
        return Channels(out, x.dim if not x.pending else 1, 2 if x.pending else ndim)

    def _norm_module(self, node, name: str, mod) -> Channels:
        x = self._channels(node, node.args[0], _norm_width(mod))
        tensors = {p: getattr(mod, p, None) for p in ("weight", "bias", "running_mean",
                                                        "running_var")}  # fmt: skip
        params = [f"{name}.{p}" for p, t in tensors.items() if isinstance(t, torch.Tensor)]
        if isinstance(mod, nn.GroupNorm):
            return self._group_norm(node, name, x, mod.num_groups, params)
        if isinstance(mod, nn.LayerNorm):
            return self._layer_norm(node, name, x, tuple(mod.normalized_shape), params)
        return self._per_channel_norm(node, name, x, params)

    # ---- normalisation ------------------------------------------------------------------

    def _per_channel_norm(self, node, name: str, x: Channels, params) -> Channels:
        if x.ids.dim() != 1 or x.pending:
            raise _fail(node, "normalisation over a split or flattened channel dim")
        if name is not None:
            self.graph.norms[name] = x.ids
        for p in params:
            self._gather(node, p, 0, x.ids)
        return x

    def _group_norm(self, node, name: str, x: Channels, groups: int, params) -> Channels:
        """GroupNorm's statistics mix a group's channels: groups are kept or reset whole."""
        if x.ids.dim() != 1 or x.pending or x.dim != 1 or x.size % groups:
            raise _fail(node, f"GroupNorm({groups}) needs a channels-first input whose channel "
                        f"count is a multiple of {groups}")  # fmt: skip
        for block in x.ids.view(groups, -1):
            self.graph.unify_all(block)
        return self._per_channel_norm(node, name, x, params)

    def _layer_norm(self, node, name: str, x: Channels, shape: tuple, params) -> Channels:
        """LayerNorm over the channel dim mixes every channel: they are kept whole."""
        ndim = self._ndim(node, x)
        first = ndim - len(shape)
        if x.dim + x.ids.dim() <= first:
            return x  # normalised over dims after the channels: per channel
        if x.dim < first or x.ids.dim() != 1:
            raise _fail(node, f"LayerNorm over {shape} covers only part of the channel dims")
        self.graph.keep_all(x.ids)
        if name is not None:
            self.graph.norms[name] = x.ids
        for p in params:
            self._gather(node, p, x.dim - first, x.ids)
        return x

    def _gather(self, node, name: str, dim: int, ids: torch.Tensor) -> None:
        """Record that tensor `name` is gathered along `dim` by the kept channels of `ids`."""
        size = getattr_path(self.gm, name).shape[dim]
        if size != ids.numel():
            raise _fail(node, f"'{name}' has {size} entries along dim {dim}, its input "
                        f"{ids.numel()} channels")  # fmt: skip
        if name in self.graph.params:
            self.graph.unify(self.graph.params[name][1], ids)
        else:
            self.graph.params[name] = (dim, ids)

    def _op_batch_norm(self, node, x: Channels) -> Channels:
        return self._functional_norm(node, x, [_arg(node, i, k, None) for i, k in
                                               ((1, "running_mean"), (2, "running_var"),
                                                (3, "weight"), (4, "bias"))])  # fmt: skip

    def _op_instance_norm(self, node, x: Channels) -> Channels:
        return self._op_batch_norm(node, x)

    def _functional_norm(self, node, x: Channels, args) -> Channels:
        params = [self._value(a).name for a in args if isinstance(self._value(a), Param)]
        return self._per_channel_norm(node, _owner(params), x, params)

    def _op_layer_norm(self, node, x: Channels) -> Channels:
        shape = self._known(_arg(node, 1, "normalized_shape", None))
        shape = (shape,) if isinstance(shape, int) else shape
        if shape is None:
            raise _fail(node, "layer_norm with an unknown normalized_shape")
        args = [_arg(node, 2, "weight", None), _arg(node, 3, "bias", None)]
        params = [self._value(a).name for a in args if isinstance(self._value(a), Param)]
        return self._layer_norm(node, _owner(params), x, tuple(shape), params)

    def _op_group_norm(self, node, x: Channels) -> Channels:
        groups = self._known(_arg(node, 1, "num_groups", None))
        args = [_arg(node, 2, "weight", None), _arg(node, 3, "bias", None)]
        params = [self._value(a).name for a in args if isinstance(self._value(a), Param)]
        return self._group_norm(node, _owner(params), x, groups, params)

    def _op_norm(self, node, x: Channels):
        """x.norm(p, dim, keepdim): a reduction."""
        dims = _arg(node, 2, "dim", None)
        return self._reduce(node, x, dims, _arg(node, 3, "keepdim", False))

    def _op_softmax(self, node, x: Channels) -> Channels:
        dim = _arg(node, 1, "dim", None)
        if dim is None or self._channel_dims(node, x, [dim]):
            self.graph.keep_all(x.ids)  # normalised over the channels: kept whole
        return x

    def _op_log_softmax(self, node, x: Channels) -> Channels:
        return self._op_softmax(node, x)

    # ---- element-wise -------------------------------------------------------------------

    def _binary(self, node):
        """Element-wise ops: operands with channels tie them position by position; a
        per-channel parameter (layer scale) is gathered; scalars and broadcasts pass."""
        args = [self._value(a) for a in (*node.args, *node.kwargs.values())]
        chans = [v for v in args if isinstance(v, Channels)]
        if not chans:
            params = [v for v in args if isinstance(v, Param)]
            return params[0] if params else next((v for v in args if isinstance(v, Unsized)),
                                                 _UNKNOWN)  # fmt: skip
        first = max(chans, key=lambda c: c.size)
        if any(isinstance(v, Unsized) for v in args):
            chans.append(self._input(first.size))
        for other in chans:
            if other.size == 1 and first.size > 1:
                continue  # broadcast along the channels
            aligned = None in (first.ndim, other.ndim) or (
                first.ndim - first.dim == other.ndim - other.dim
            )
            if other.ids.shape != first.ids.shape or other.pending != first.pending or not aligned:
                raise _fail(
                    node,
                    f"operands have different channel layouts ({first.size} "
                    f"channels at dim {first.dim} vs {other.size} at dim {other.dim})",
                )
            self.graph.unify(first.ids, other.ids)
        for param in (v for v in args if isinstance(v, Param)):
            self._broadcast_param(node, first, param)
        return first

    def _broadcast_param(self, node, x: Channels, param: Param) -> None:
        ndim = self._ndim(node, x)
        along = x.dim - (ndim - len(param.shape))
        if along < 0 or math.prod(param.shape) == 1 or param.shape[along] == 1:
            return  # a scalar, or broadcast along the channels
        if x.ids.dim() != 1 or param.dim is None or param.shape[along] != x.size:
            raise _fail(node, f"parameter '{param.name}' of shape {param.shape} meets "
                        f"{x.size} channels at dim {x.dim}")  # fmt: skip
        self._gather(node, param.name, param.dim, x.ids)

    def _param_op(self, node, name: str, param: Param):
        """Views of a parameter (gamma.reshape(1, -1, 1, 1)) stay that parameter."""
        if name in ("reshape", "view"):
            sizes = [self._known(s) for s in _dims_arg(node, 1)]
            if any(s is None for s in sizes):
                raise _fail(node, f"reshape of '{param.name}' to unknown sizes")
            known = math.prod(s for s in sizes if s != -1)
            total = math.prod(param.shape)
            return Param(param.name, tuple(total // known if s == -1 else s for s in sizes),
                         param.dim)  # fmt: skip
        if name == "unsqueeze":
            dim = self._known(_arg(node, 1, "dim", None)) % (len(param.shape) + 1)
            return Param(param.name, param.shape[:dim] + (1,) + param.shape[dim:], param.dim)
        if name in _PRESERVING_NAMES:
            return param
        raise _fail(node, f"parameter '{param.name}' used outside standard layers "
                    "(only per-channel scales and norm arguments are supported)")  # fmt: skip

    def _getattr(self, node):
        value = self._value(node.args[0])
        attr = node.args[1]
        if isinstance(value, Channels) and attr in _META_ATTRS:
            return Scalar(value.ndim) if attr == "ndim" else Scalar(self._sizes(node, value)) \
                if attr == "shape" else _UNKNOWN  # fmt: skip
        if attr in _META_ATTRS:
            return _UNKNOWN
        if attr == "data":
            return value
        raise _fail(node, f"attribute {attr!r} of a tensor")

    def _sizes(self, node, x: Channels):
        """The tensor's sizes as far as known (channel dims always)."""
        shape = _shape(node.args[0])
        ndim = x.ndim if x.ndim is not None else (len(shape) if shape else None)
        if ndim is None:
            return None
        sizes = list(shape) if shape else [None] * ndim
        for i, s in enumerate(x.ids.shape):
            sizes[x.dim + i] = s
        return torch.Size(sizes) if all(s is not None for s in sizes) else tuple(sizes)

    def _op_size(self, node, x: Channels):
        sizes = self._sizes(node, x)
        dim = self._known(_arg(node, 1, "dim", None))
        if dim is None:
            return Scalar(sizes)
        return Scalar(sizes[dim] if sizes is not None else None)

    def _op_dim(self, node, x: Channels):
        return Scalar(x.ndim)

    def _op_numel(self, node, x: Channels):
        return _UNKNOWN

    def _op_pad(self, node, x: Channels) -> Channels:
        pad = self._known(_arg(node, 1, "pad", None))
        ndim = self._ndim(node, x)
        if pad is None or x.dim + x.ids.dim() > ndim - len(pad) // 2:
            raise _fail(node, "padding of the channel dimension")
        return x

    # ---- channel moves ------------------------------------------------------------------

    def _channel_dims(self, node, x: Channels, dims) -> list[int]:
        """Which of `dims` (normalised) fall on the channel dims."""
        ndim = self._ndim(node, x) if any(d < 0 for d in dims) else (x.ndim or 0)
        span = range(x.dim, x.dim + x.ids.dim())
        return [d % ndim if d < 0 else d for d in dims if (d % ndim if d < 0 else d) in span]

    def _cat(self, node) -> Channels:
        parts = self._value(_arg(node, 0, "tensors", []))
        dim = _arg(node, 1, "dim", 0)
        sized = [p for p in parts if isinstance(p, Channels)]
        if not sized:
            raise _fail(node, "concatenating the raw network input needs example_input")
        ref = sized[0]
        parts = [self._input(ref.size) if isinstance(p, Unsized) else p for p in parts]
        if any(not isinstance(p, Channels) for p in parts):
            raise _fail(node, "concatenation with a tensor that carries no channels")
        ndim = ref.ndim if ref.ndim is not None else self._ndim(node, ref)
        dim = dim % ndim if dim < 0 else dim
        if dim == ref.dim and all(p.ids.dim() == 1 and p.dim == dim for p in parts):
            if any(p.pending != ref.pending for p in parts):
                raise _fail(node, "concatenating flattened maps of unknown size")
            return Channels(torch.cat([p.ids for p in parts]), dim, ndim, ref.pending)
        for p in parts[1:]:  # along another dim: same channels in every part
            if p.ids.shape != ref.ids.shape:
                raise _fail(node, "concatenation along a non-channel dim of different channels")
            self.graph.unify(ref.ids, p.ids)
        return ref

    def _getitem(self, node):
        value = self._value(node.args[0])
        index = node.args[1]
        if isinstance(value, tuple):
            return value[index]
        if isinstance(value, Scalar):
            return self._scalar(node)
        if isinstance(value, Unsized):
            return value
        if isinstance(value, Param):
            raise _fail(node, f"indexing parameter '{value.name}'")
        return self._index(node, value, index if isinstance(index, tuple) else (index,))

    def _index(self, node, x: Channels, index: tuple) -> Channels | Scalar:
        if any(i is Ellipsis for i in index):
            ndim = self._ndim(node, x)
            at = index.index(Ellipsis)
            fill = ndim - (len(index) - 1 - sum(i is None for i in index))
            index = index[:at] + (slice(None),) * fill + index[at + 1 :]
        dim, out_dim, ids, ndim = 0, x.dim, x.ids, x.ndim
        for item in index:
            if item is None:
                if dim <= x.dim:
                    out_dim += 1
                ndim = ndim + 1 if ndim is not None else None
                continue
            if not isinstance(item, int | slice) or isinstance(item, bool):
                raise _fail(node, f"indexing with {item!r}")
            on_channels = x.dim <= dim < x.dim + x.ids.dim()
            if on_channels and item != slice(None):
                if x.ids.dim() != 1 or x.pending:
                    raise _fail(node, "indexing a split or flattened channel dim")
                self.graph.slices.append(SliceCheck(node.name, x.ids, item))
                if isinstance(item, int):
                    return _UNKNOWN  # one channel: a broadcast operand from here on
                ids = x.ids[item]
            elif isinstance(item, int):
                if dim < x.dim:
                    out_dim -= 1
                ndim = ndim - 1 if ndim is not None else None
            dim += 1
        return Channels(ids, out_dim, ndim, x.pending)

    @staticmethod
    def _parts(x: Channels, pieces: list[torch.Tensor]) -> tuple:
        return tuple(Channels(p, x.dim, x.ndim) for p in pieces)

    def _op_chunk(self, node, x: Channels):
        chunks = self._known(_arg(node, 1, "chunks", None))
        dim = self._known(_arg(node, 2, "dim", 0))
        if not self._channel_dims(node, x, [dim]):
            return tuple(x for _ in range(chunks))
        if x.ids.dim() != 1 or x.pending:
            raise _fail(node, "chunk of a split or flattened channel dim")
        pieces = list(x.ids.chunk(chunks))
        if len({p.numel() for p in pieces}) == 1:
            for p in pieces[1:]:  # the slim net chunks its kept channels the same way
                self.graph.unify(pieces[0], p)
        else:
            self.graph.keep_all(x.ids)
        return self._parts(x, pieces)

    def _op_split(self, node, x: Channels):
        sizes = self._known(_arg(node, 1, "split_size_or_sections", None))
        dim = self._known(_arg(node, 2, "dim", 0))
        if sizes is None:
            raise _fail(node, "split with unknown sizes")
        if not self._channel_dims(node, x, [dim]):
            count = len(sizes) if isinstance(sizes, list | tuple) else -(-x.size // sizes)
            return tuple(x for _ in range(count))
        if x.ids.dim() != 1 or x.pending:
            raise _fail(node, "split of a split or flattened channel dim")
        self.graph.keep_all(x.ids)  # constant sizes: the slim net needs every channel
        return self._parts(x, list(x.ids.split(sizes)))

    def _op_flatten(self, node, x: Channels) -> Channels:
        start = self._known(_arg(node, 1, "start_dim", 0))
        end = self._known(_arg(node, 2, "end_dim", -1))
        return self._flatten(node, x, start, end)

    def _flatten(self, node, x: Channels, start: int, end: int) -> Channels:
        ndim = self._ndim(node, x)
        start, end = start % ndim, end % ndim
        last = x.dim + x.ids.dim() - 1
        if end < x.dim:
            return Channels(x.ids, x.dim - (end - start), ndim - (end - start), x.pending)
        if start > last:
            return Channels(x.ids, x.dim, ndim - (end - start), x.pending)
        if start != x.dim or x.pending:
            raise _fail(node, f"flatten({start}, {end}) mixes the channels with other dims")
        ids = x.ids.flatten()
        if end > last:  # channel-major: each channel is followed by its positions
            shape = _shape(node.args[0])
            if shape is None:
                return Channels(ids, start, ndim - (end - start), pending=True)
            ids = ids.repeat_interleave(math.prod(shape[last + 1 : end + 1]))
        return Channels(ids, start, ndim - (end - start))

    def _op_view(self, node, x: Channels):
        return self._reshape(node, x, _dims_arg(node, 1))

    def _op_reshape(self, node, x: Channels):
        return self._reshape(node, x, _dims_arg(node, 1))

    def _reshape(self, node, x: Channels, sizes) -> Channels:
        """Views that keep the dims before the channels and either split the channels into
        factors, merge split factors, flatten channels with what follows, or add size-1 dims.
        A factor given as a constant stays that size in the slim net, so the channels along it
        are tied (kept whole when every factor is constant)."""
        known = [self._known(s) for s in sizes]
        constant = [not isinstance(s, torch.fx.Node) and s != -1 for s in sizes]
        ndim = self._ndim(node, x)
        tail = ndim - x.dim - x.ids.dim()
        rest, rest_const = known[x.dim :], constant[x.dim :]
        total = x.size
        if len(rest) == 1 and (rest[0] == -1 or (tail and rest[0] != total)):
            if rest_const[0]:
                self.graph.keep_all(x.ids)  # a hard-coded feature count: keep every channel
            if tail:
                return self._flatten(node, x, x.dim, -1)
            return Channels(x.flat(), x.dim, x.dim + 1)
        prod, j = 1, 0
        while j < len(rest) and prod < total and isinstance(rest[j], int) and rest[j] > 0:
            prod, j = prod * rest[j], j + 1
        if j == 0 and rest and rest[0] == -1:
            j, factors = 1, [total]
        elif prod == total and j:
            factors = rest[:j]
        else:
            raise _fail(node, f"reshape to {tuple(known)} may mix channels; use flatten(x, 1)")
        after = rest[j:]
        if len(after) != tail and not all(s == 1 for s in after):
            raise _fail(node, f"reshape to {tuple(known)} may mix channels with other dims")
        ids = x.flat().view(factors)
        variable = [i for i in range(len(factors)) if not rest_const[i] and factors[i] != 1]
        if not variable:
            self.graph.keep_all(ids)
        else:
            for axis in range(len(factors)):
                if axis not in variable[:1] and factors[axis] > 1:
                    self.graph.unify_along(ids, axis)
        return Channels(ids, x.dim, len(sizes))

    def _op_permute(self, node, x: Channels) -> Channels:
        dims = [self._known(d) for d in _dims_arg(node, 1)]
        return self._reorder(node, x, [d % len(dims) for d in dims])

    def _op_transpose(self, node, x: Channels) -> Channels:
        ndim = self._ndim(node, x)
        a, b = (self._known(_arg(node, i, k, None)) % ndim for i, k in ((1, "dim0"), (2, "dim1")))
        order = list(range(ndim))
        order[a], order[b] = order[b], order[a]
        return self._reorder(node, x, order)

    def _op_swapaxes(self, node, x: Channels) -> Channels:
        return self._op_transpose(node, x)

    def _reorder(self, node, x: Channels, order: list[int]) -> Channels:
        span = list(range(x.dim, x.dim + x.ids.dim()))
        new = sorted(order.index(d) for d in span)
        if new != list(range(new[0], new[0] + len(new))) or x.pending:
            raise _fail(node, f"permute {order} separates the channel dims")
        ids = x.ids.permute([span.index(order[p]) for p in new])
        return Channels(ids, new[0], len(order))

    def _op_unsqueeze(self, node, x: Channels) -> Channels:
        ndim = self._ndim(node, x)
        dim = self._known(_arg(node, 1, "dim", None)) % (ndim + 1)
        return Channels(x.ids, x.dim + (dim <= x.dim), ndim + 1, x.pending)

    def _op_squeeze(self, node, x: Channels) -> Channels:
        dims = [self._known(d) for d in _dims_arg(node, 1)]
        ndim = self._ndim(node, x)
        if not dims or self._channel_dims(node, x, dims):
            raise _fail(node, "squeeze without dims (or of the channel dim); name the dims")
        dims = [d % ndim for d in dims]
        return Channels(x.ids, x.dim - sum(d < x.dim for d in dims), ndim - len(dims), x.pending)

    def _reduce(self, node, x: Channels, dims, keepdim):
        """A reduction over `dims`; over the channels it needs every channel."""
        dims, keepdim = self._known(dims), self._known(keepdim)
        dims = (dims,) if isinstance(dims, int) else dims
        ndim = self._ndim(node, x)
        if dims is None or self._channel_dims(node, x, list(dims)):
            self.graph.keep_all(x.ids)  # a reduction over the channels needs all of them
            if keepdim and dims is not None:
                return Channels(self.graph.new_space(node.name, 1, layer=False), x.dim, ndim)
            return _UNKNOWN
        dims = [d % ndim for d in dims]
        if keepdim:
            return x
        before = sum(d < x.dim for d in dims)
        return Channels(x.ids, x.dim - before, ndim - len(dims), x.pending)

    def _op_mean(self, node, x):
        return self._reduce(node, x, _arg(node, 1, "dim", None), _arg(node, 2, "keepdim", False))

    _op_amax = _op_amin = _op_sum = _op_std = _op_var = _op_mean


def _norm_width(mod) -> int | None:
    if isinstance(mod, nn.GroupNorm):
        return mod.num_channels
    if isinstance(mod, nn.LayerNorm):
        return None
    return mod.num_features


def _owner(params: list[str]) -> str | None:
    """The module holding every one of `params` (a functional norm's arguments), if one."""
    owners = {p.rpartition(".")[0] for p in params}
    return owners.pop() if len(owners) == 1 and "" not in owners else None


def getattr_path(root: nn.Module, name: str):
    """The attribute `a.b.c` of `root`."""
    value = root
    for part in name.split("."):
        value = getattr(value, part)
    return value


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


def analyse(model: nn.Module, *, example_input: torch.Tensor | None = None) -> ChannelGraph:
    """Trace `model` and record the channel atoms of every conv/linear input and output,
    normalisation layer and per-channel tensor, with the classes that must be kept together
    (solve it with `ChannelGraph.solve_prefix` or `.solve_rows`). The model is not modified."""
    gm = trace(model)
    if example_input is not None:
        _propagate_shapes(gm, example_input)
    return _Analyser(gm, model).run()
