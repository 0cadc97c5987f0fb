"""The one registry of buildable things (timm style): generic models, spiking networks, AdaShare
backbones, heads and baselines, and datasets.

Each entry is registered with a decorator and carries its default config and an example input
shape, so tests and benchmarks sweep the registry instead of keeping their own lists:

    @register("model", "small_cnn", input_shape=(1, 28, 28), num_classes=10)
    def small_cnn(num_classes=10, in_channels=1, width=16): ...

    create("model", "small_cnn", num_classes=5)   # defaults, then the caller's overrides
    names("model")                                # sorted names of one kind

Entries live next to the code they build; `_PROVIDERS` names the modules that register each kind,
imported on the first look-up (never at `import efficientdl`).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from efficientdl.core.errors import ConfigError

KINDS = ("model", "snn", "backbone", "head", "baseline", "dataset")
_PROVIDERS: dict[str, tuple[str, ...]] = {
    "model": ("efficientdl.models",),
    "snn": ("efficientdl.snn.networks",),
    "backbone": ("efficientdl.adashare.model",),
    "head": ("efficientdl.adashare.model",),
    "baseline": ("efficientdl.adashare.phases",),
    "dataset": ("efficientdl.data",),
}
_ENTRIES: dict[str, dict[str, Entry]] = {kind: {} for kind in KINDS}


@dataclass(frozen=True)
class Entry:
    """One registered builder: `build(**{**defaults, **overrides})` makes the thing."""

    kind: str
    name: str
    build: Callable[..., Any]
    defaults: dict[str, Any] = field(default_factory=dict)
    input_shape: tuple[int, ...] | None = None
    doc: str = ""

    def create(self, **overrides: Any) -> Any:
        """The built object with the entry's defaults, then `overrides`."""
        return self.build(**{**self.defaults, **overrides})


def _check_kind(kind: str) -> None:
    if kind not in KINDS:
        raise ConfigError(f"unknown registry kind {kind!r}; expected one of {list(KINDS)}")


def register(
    kind: str,
    name: str,
    *,
    input_shape: tuple[int, ...] | None = None,
    doc: str | None = None,
    **defaults: Any,
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Decorator adding `fn` as `kind`/`name`, with its default config and example input shape
    (per sample, without the batch dimension); a second entry of the same name is an error."""
    _check_kind(kind)

    def wrap(fn: Callable[..., Any]) -> Callable[..., Any]:
        if name in _ENTRIES[kind]:
            raise ValueError(f"{kind} {name!r} registered twice")
        text = doc if doc is not None else (fn.__doc__ or "").strip().split("\n")[0]
        entry = Entry(kind, name, fn, dict(defaults), input_shape, text)
        _ENTRIES[kind][name] = entry
        return fn

    return wrap


def _load(kind: str) -> dict[str, Entry]:
    _check_kind(kind)
    for module in _PROVIDERS[kind]:
        importlib.import_module(module)
    return _ENTRIES[kind]


def names(kind: str) -> list[str]:
    """Sorted names of every entry of `kind`."""
    return sorted(_load(kind))


def entries(kind: str) -> list[Entry]:
    """Every entry of `kind`, sorted by name (what the registry sweep tests parametrize over)."""
    table = _load(kind)
    return [table[name] for name in sorted(table)]


def get(kind: str, name: str) -> Entry:
    """The entry `kind`/`name`; ConfigError listing the known names when there is none."""
    table = _load(kind)
    if name not in table:
        raise ConfigError(f"unknown {kind} {name!r}; registered: {', '.join(sorted(table))}")
    return table[name]


def create(kind: str, name: str, **overrides: Any) -> Any:
    """Build `kind`/`name` with its defaults and `overrides`."""
    return get(kind, name).create(**overrides)
