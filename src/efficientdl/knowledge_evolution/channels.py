"""Channel atoms, their equivalence classes, and the kept sets chosen from them.

Every channel of every tensor in a traced model is an *atom*: one output channel of a conv or
linear layer, or one channel of a network input. Ops that move channels (concatenation, slicing,
shuffles, chunks) rearrange atoms; ops that need two channels to be kept or dropped together
(residual adds, gates, grouped convolutions, GroupNorm groups, chunks) join their atoms into one
class (union-find), and ops that need every channel (LayerNorm or softmax over the channels,
constant channel counts in `view` or `split`) mark them kept. A kept set then assigns kept/reset
to whole classes, so each such op sees the same decision on every channel it ties.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import nn


class KEStructureError(ValueError):
    """The model contains an op the kernel-level (KELS) analysis cannot handle."""


@dataclass(frozen=True)
class Space:
    """The atoms created by one layer (or a network input): ids start … start + size − 1."""

    name: str
    start: int
    size: int
    layer: bool  # a conv/linear output (its rows), else a network input (always kept)


@dataclass
class LayerUse:
    """One call of a conv/linear: the atoms of its input channels (after any channel-major
    flatten) and of its output rows, and its dense `groups`."""

    name: str
    module: nn.Module
    node: str
    inputs: torch.Tensor
    outputs: torch.Tensor
    groups: int = 1


@dataclass
class SliceCheck:
    """A constant channel index/slice: the slim net applies the same index to its kept
    channels, so it must pick exactly the kept channels the dense index picks."""

    node: str
    ids: torch.Tensor
    index: int | slice


@dataclass
class SplitLayer:
    """One conv/linear of the solved structure: kept output `rows` and input channels `cols`
    (positions in its input tensor), `weight_cols` (indices into weight dim 1: within-group
    offsets for a grouped conv) and the slim net's `groups`."""

    name: str
    module: nn.Module
    rows: tuple[int, ...]
    cols: tuple[int, ...]
    weight_cols: tuple[int, ...]
    groups: int
    output: bool


@dataclass
class Structure:
    """Solved kept sets: split layers, normalisation layers (module name → kept channels) and
    per-channel tensors to gather (qualified name → (dim, kept indices)), in graph order."""

    layers: dict[str, SplitLayer] = field(default_factory=dict)
    norms: dict[str, tuple[int, ...]] = field(default_factory=dict)
    params: dict[str, tuple[int, tuple[int, ...]]] = field(default_factory=dict)


def difference(expected: torch.Tensor, got: torch.Tensor) -> str:
    """Where two kept flags (bool vectors) first differ, with their kept counts."""
    if expected.numel() != got.numel():
        return f"{expected.numel()} vs {got.numel()} channels"
    diff = (expected != got).nonzero().flatten()
    if not diff.numel():
        return "identical"
    i = int(diff[0])
    state = ("reset", "kept")
    return (
        f"first difference at channel {i} ({state[int(expected[i])]} vs {state[int(got[i])]}), "
        f"{int(expected.sum())} vs {int(got.sum())} of {expected.numel()} kept"
    )


def positions(flags: torch.Tensor) -> tuple[int, ...]:
    """The indices of the True entries of a bool vector."""
    return tuple(flags.nonzero().flatten().tolist())


RowsOf = Callable[[Space], torch.Tensor]


class ChannelGraph:
    """Atoms, their classes and the layer/norm/tensor uses recorded while walking a graph."""

    def __init__(self) -> None:
        self.parent: list[int] = []
        self.spaces: list[Space] = []
        self.space_of: list[int] = []  # atom → index into self.spaces
        self.forced: set[int] = set()  # atoms that must be kept (inputs, outputs)
        self.outputs: set[int] = set()  # atoms of the model's outputs
        self.layers: dict[str, LayerUse] = {}
        self.norms: dict[str, torch.Tensor] = {}
        self.params: dict[str, tuple[int, torch.Tensor]] = {}
        self.slices: list[SliceCheck] = []

    def new_space(self, name: str, size: int, *, layer: bool) -> torch.Tensor:
        """Fresh atoms for `size` channels; inputs are always kept."""
        start = len(self.parent)
        self.parent.extend(range(start, start + size))
        self.space_of.extend([len(self.spaces)] * size)
        self.spaces.append(Space(name, start, size, layer))
        ids = torch.arange(start, start + size)
        if not layer:
            self.forced.update(ids.tolist())
        return ids

    def find(self, atom: int) -> int:
        """The representative atom of `atom`'s class."""
        parent = self.parent
        while parent[atom] != atom:
            parent[atom] = parent[parent[atom]]
            atom = parent[atom]
        return atom

    def unify(self, a: torch.Tensor, b: torch.Tensor) -> None:
        """Join the classes of a[i] and b[i] for every i (same number of atoms)."""
        for x, y in zip(a.flatten().tolist(), b.flatten().tolist(), strict=True):
            rx, ry = self.find(x), self.find(y)
            if rx != ry:
                self.parent[max(rx, ry)] = min(rx, ry)

    def unify_all(self, ids: torch.Tensor) -> None:
        """Join every atom of `ids` into one class (kept or reset together)."""
        flat = ids.flatten()
        if flat.numel() > 1:
            self.unify(flat[1:], flat[:1].expand(flat.numel() - 1))

    def keep_all(self, ids: torch.Tensor) -> None:
        """Mark every atom of `ids` kept (ops that mix all of them, or fix their count)."""
        self.forced.update(ids.flatten().tolist())

    def unify_along(self, ids: torch.Tensor, axis: int) -> None:
        """Join atoms that differ only in their index along `axis` of the `ids` array."""
        moved = ids.movedim(axis, 0).reshape(ids.shape[axis], -1)
        for row in moved[1:]:
            self.unify(row, moved[0])

    def _roots(self) -> list[int]:
        return [self.find(a) for a in range(len(self.parent))]

    def _kept(self, decide: Callable[[list[int]], dict[int, bool]]) -> torch.Tensor:
        roots = self._roots()
        decided = decide(roots)
        forced = {roots[a] for a in self.forced}
        return torch.tensor([roots[a] in forced or decided.get(roots[a], False)
                             for a in range(len(roots))], dtype=torch.bool)  # fmt: skip

    def _failed_slice(self, kept: torch.Tensor) -> SliceCheck | None:
        for check in self.slices:
            flags = kept[check.ids]
            dense = list(range(flags.numel()))
            kept_pos = [p for p in dense if flags[p]]
            try:
                if isinstance(check.index, int):
                    ok = kept_pos[check.index] == dense[check.index]
                else:
                    chosen = set(dense[check.index])
                    ok = kept_pos[check.index] == [p for p in kept_pos if p in chosen]
            except IndexError:
                ok = False
            if not ok:
                return check
        return None

    def solve_prefix(self, keep: Callable[[int], int]) -> Structure:
        """Kept sets by the prefix rule: each layer, narrowest first (then in graph order),
        keeps the first keep(n) of the n classes its rows open (classes a narrower or earlier
        layer opened follow that layer, so a conv added to a concatenation keeps each segment's
        kept channels); inputs and outputs are kept. A constant channel slice that the slim
        net would not reproduce keeps all its input channels, and the rule runs again."""

        def decide(roots: list[int]) -> dict[int, bool]:
            decided: dict[int, bool] = {}
            for space in sorted(self.spaces, key=lambda s: s.size):
                opened = []
                for atom in range(space.start, space.start + space.size):
                    root = roots[atom]
                    if root not in decided:
                        decided[root] = False
                        opened.append(root)
                for rank, root in enumerate(opened):
                    decided[root] = rank < keep(len(opened))
            return decided

        while True:
            kept = self._kept(decide)
            failed = self._failed_slice(kept)
            if failed is None:
                return self._structure(kept)
            self.keep_all(failed.ids)

    def solve_rows(self, rows_of: RowsOf) -> Structure:
        """Kept sets read from given rows: an atom is kept when its class representative's row
        is kept (`rows_of(space)`, a bool vector, for layer spaces); inputs and outputs are
        kept. Callers compare each layer's resulting rows with the rows they gave."""
        rows = {s.start: rows_of(s) for s in self.spaces if s.layer}

        def decide(roots: list[int]) -> dict[int, bool]:
            out = {}
            for root in set(roots):
                space = self.spaces[self.space_of[root]]
                if space.layer:
                    out[root] = bool(rows[space.start][root - space.start])
            return out

        kept = self._kept(decide)
        failed = self._failed_slice(kept)
        if failed is not None:
            raise KEStructureError(
                f"KELS cannot handle node '{failed.node}': the constant channel index "
                f"{failed.index!r} would pick other channels in the slim net than in the dense "
                "net (its input's kept channels do not start at the indexed ones)"
            )
        return self._structure(kept)

    def _structure(self, kept: torch.Tensor) -> Structure:
        out = Structure()
        roots = self._roots()
        outputs = {roots[a] for a in self.outputs}
        for name, use in self.layers.items():
            rows, cols = kept[use.outputs], kept[use.inputs]
            weight_cols, groups = _grouping(use, rows, cols)
            output = all(roots[a] in outputs for a in use.outputs.tolist())
            out.layers[name] = SplitLayer(name, use.module, positions(rows), positions(cols),
                                          weight_cols, groups, output)  # fmt: skip
        for name, ids in self.norms.items():
            out.norms[name] = positions(kept[ids])
        for name, (dim, ids) in self.params.items():
            out.params[name] = (dim, positions(kept[ids]))
        return out


def _grouping(use: LayerUse, rows: torch.Tensor, cols: torch.Tensor) -> tuple[tuple, int]:
    """(weight_cols, slim groups) of a layer with kept `rows` and input `cols`. A grouped conv
    keeps the groups with kept inputs and the input offsets of its first kept group: the
    analysis tied every group's offsets (depthwise: one channel per group, its rows repeat
    its input's atoms), so all kept groups share them and keep equally many rows."""
    if use.groups == 1:
        return positions(cols), 1
    blocks = cols.view(use.groups, -1)
    used = blocks.any(1)
    first = int(used.nonzero()[0])
    return positions(blocks[first]), int(used.sum())
