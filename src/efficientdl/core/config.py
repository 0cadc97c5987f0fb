"""Experiment configs: dataclasses loaded from YAML, with validated `key=value` overrides.

Every experiment is a dataclass (nanoGPT style). A YAML file and `--set key=value` overrides fill
it; unknown keys and values of the wrong type are errors that name the key.
"""

from __future__ import annotations

import copy
import dataclasses
import re
import types
import typing
from pathlib import Path
from typing import Any, Literal, TypeVar, Union, get_args, get_origin, get_type_hints

import yaml

from efficientdl.core.errors import ConfigError

T = TypeVar("T")

# YAML 1.1 (PyYAML) reads `1e-3`, `1E6` and `5e-4` as strings; YAML 1.2 and Python read them as
# numbers. This resolver, tried before PyYAML's own, gives every float spelling Python accepts.
_FLOAT = re.compile(
    r"""^[-+]?(?:(?:[0-9][0-9_]*)(?:\.[0-9_]*)?(?:[eE][-+]?[0-9]+)?
    |\.[0-9][0-9_]*(?:[eE][-+]?[0-9]+)?
    |\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$""",
    re.X,
)
_INT = re.compile(r"^[-+]?(?:0|[1-9][0-9_]*)$")


class _Loader(yaml.SafeLoader):
    """PyYAML's safe loader with YAML 1.2 float spellings (`1e-3` is a float)."""


_Loader.yaml_implicit_resolvers = {
    key: list(value) for key, value in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
for _first in "-+0123456789.":
    _Loader.yaml_implicit_resolvers.setdefault(_first, []).insert(
        0, ("tag:yaml.org,2002:float", _FLOAT)
    )


def _construct_number(loader, node):
    text = loader.construct_scalar(node)
    return int(text.replace("_", "")) if _INT.match(text) else loader.construct_yaml_float(node)


_Loader.add_constructor("tag:yaml.org,2002:float", _construct_number)


def parse_yaml(text: str, *, source: str = "<string>") -> Any:
    """Parse YAML with every Python float spelling accepted; a syntax error becomes one
    ConfigError `SOURCE:LINE:COL: problem`."""
    try:
        return yaml.load(text, Loader=_Loader)  # noqa: S506 - a SafeLoader subclass
    except yaml.MarkedYAMLError as err:
        mark = err.problem_mark or err.context_mark
        where = f"{source}:{mark.line + 1}:{mark.column + 1}" if mark else source
        raise ConfigError(f"{where}: {err.problem or err.context}") from None
    except yaml.YAMLError as err:
        raise ConfigError(f"{source}: {err}") from None


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Check `value` against the annotation `tp` and return it (ints widen to floats)."""
    origin = get_origin(tp)
    if tp is Any:
        return value
    if origin in (Union, types.UnionType):
        options = get_args(tp)
        if value is None and type(None) in options:
            return None
        for option in options:
            if option is type(None):
                continue
            try:
                return _coerce(value, option, key)
            except ConfigError:
                continue
        raise ConfigError(f"config key '{key}': expected {_type_name(tp)}, got {value!r}")
    if origin is Literal:
        if value not in get_args(tp):
            raise ConfigError(
                f"config key '{key}': expected one of {list(get_args(tp))}, got {value!r}"
            )
        return value
    if origin in (list, tuple):
        if not isinstance(value, list | tuple):
            raise ConfigError(f"config key '{key}': expected a list, got {value!r}")
        args = get_args(tp)
        item_tp = args[0] if args else Any
        items = [_coerce(v, item_tp, f"{key}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"config key '{key}': expected a mapping, got {value!r}")
        return from_dict(tp, value, prefix=f"{key}.")
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(f"config key '{key}': expected float, got {value!r}")
        return float(value)
    if tp is int:
        if isinstance(value, float) and value.is_integer():
            return int(value)  # `1e4` for an int field
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"config key '{key}': expected int, got {value!r}")
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"config key '{key}': expected bool (true/false), got {value!r}")
        return value
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"config key '{key}': expected str, got {value!r}")
        return value
    if tp is dict or origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"config key '{key}': expected a mapping, got {value!r}")
        return dict(value)
    raise ConfigError(f"config key '{key}': unsupported type {_type_name(tp)}")


def from_dict(cls: type[T], data: dict[str, Any], *, prefix: str = "") -> T:
    """Build dataclass `cls` from a mapping, rejecting unknown keys and wrong types."""
    hints = get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names, key=str)  # YAML keys need not be strings (`1: x`)
    if unknown:
        raise ConfigError(
            f"unknown config key '{prefix}{unknown[0]}' for {cls.__name__}; "
            f"known keys: {', '.join(sorted(names))}"
        )
    values = {k: _coerce(v, hints[k], prefix + k) for k, v in data.items()}
    try:
        return cls(**values)
    except TypeError as err:
        raise ConfigError(f"{cls.__name__}: {err}") from err


def to_dict(config: Any) -> dict[str, Any]:
    """The config as plain YAML/JSON-serialisable data."""
    return dataclasses.asdict(config)


def parse_override(text: str) -> tuple[str, Any]:
    """Split `key=value`, parsing the value as YAML (so `1e-3`, `true`, `[1, 2]` work)."""
    if "=" not in text:
        raise ConfigError(f"override {text!r} must look like key=value")
    key, raw = text.split("=", 1)
    key = key.strip()
    if not key:
        raise ConfigError(f"override {text!r} has an empty key")
    value = parse_yaml(raw, source=f"--set {key}") if raw.strip() else ""
    return key, value


def apply_overrides(data: dict[str, Any], overrides: typing.Iterable[str]) -> dict[str, Any]:
    """Return a copy of `data` with dotted `key=value` overrides applied."""
    out = copy.deepcopy(data)
    for text in overrides:
        key, value = parse_override(text)
        node = out
        *parents, leaf = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override key '{key}': '{part}' is not a mapping")
        node[leaf] = value
    return out


def read_config_file(path: str | Path) -> dict[str, Any]:
    """The mapping in a YAML (or JSON) config file; errors name the file (and line, column)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist")
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as err:
        raise ConfigError(f"config file {path} cannot be read as text ({err})") from None
    data = parse_yaml(text, source=str(path)) or {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a mapping, got {type(data).__name__}")
    return data


def load_config(cls: type[T], path: str | Path | None = None, overrides=()) -> T:
    """Load dataclass `cls` from a YAML file (optional) plus `key=value` overrides."""
    data = read_config_file(path) if path is not None else {}
    return from_dict(cls, apply_overrides(data, overrides))


def add_config_args(parser, *, method: str, example: str, required: bool = True) -> None:
    """Add the `--config NAME|FILE` and repeatable `--set KEY=VALUE` options every sub-command
    shares (overrides land in `args.overrides`; unknown keys fail later in `config_from_args`)."""
    parser.add_argument(
        "--config",
        required=required,
        default=None,
        help=f"a packaged recipe name or a YAML file, e.g. {example} (`efficientdl configs`)",
    )
    parser.set_defaults(config_method=method)
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config field (repeatable); unknown keys are errors",
    )


def refuse_unread(overrides: typing.Iterable[str], *, reads: typing.Iterable[str], command: str):
    """ConfigError naming the first `--set` key that `command` does not read (a top-level key
    outside `reads`): an override a command cannot honour is never silently ignored."""
    reads = sorted(set(reads))
    for text in overrides:
        key, _ = parse_override(text)
        if key.split(".", 1)[0] not in reads:
            raise ConfigError(
                f"{command} cannot honour --set {key}: it reads only {', '.join(reads)}"
            )


def config_from_args(cls: type[T], args, *, stored: dict[str, Any] | None = None) -> T:
    """`cls` from a command's `--config NAME|FILE` (a packaged recipe of `args.config_method` or a
    file) and `--set` overrides; without `--config`, from `stored` (a resumed run's config)."""
    from efficientdl.core.recipes import resolve_recipe

    if args.config is not None:
        data = read_config_file(resolve_recipe(args.config, args.config_method))
    else:
        data = stored if stored is not None else {}
    return from_dict(cls, apply_overrides(data, args.overrides))
