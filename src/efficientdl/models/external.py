"""Classification models from torchvision and timm, named `torchvision:NAME` or `timm:NAME`.

`build_external("timm:resnet18", num_classes=10, in_channels=1, kwargs={"drop_rate": 0.1})`
builds an untrained model (no weights are downloaded): `num_classes` is passed to both libraries as
`num_classes`, the input channels to timm as `in_chans` (torchvision's classification models
take 3-channel images only), every other keyword as given. Neither package is imported before a
model of it is built; a missing one is a one-line ConfigError naming the extra to install.

torchvision wheels built for another torch build cannot load their C operators (`RuntimeError:
operator torchvision::nms does not exist`, raised while registering the operators' fake
kernels). Its classification models need none of them, so `torchvision_models` then imports
torchvision again without the module that registers those kernels (the detection operators stay
unavailable) and logs a warning saying so.
"""

from __future__ import annotations

import difflib
import importlib
import importlib.util
import sys
import types
from collections.abc import Callable, Mapping
from typing import Any

from torch import nn

from efficientdl.core.errors import ConfigError
from efficientdl.core.log import get_logger

SOURCES = ("torchvision", "timm")
"""The libraries an external model spec may name (`SOURCE:NAME`)."""
EXTRAS = {"torchvision": "vision", "timm": "timm"}
"""The efficientdl extra that installs each library."""
_FAKE_KERNELS = "torchvision._meta_registrations"

log = get_logger("models")


def parse_spec(spec: str) -> tuple[str | None, str]:
    """(source, name) of a model spec: ('timm', 'resnet18') for 'timm:resnet18', (None, spec) for a
    registry name (no colon). An unknown source or an empty name is a ConfigError."""
    if ":" not in spec:
        return None, spec
    source, name = spec.split(":", 1)
    if source not in SOURCES:
        raise ConfigError(
            f"model {spec!r}: unknown source {source!r}; expected a registry name or "
            f"{' or '.join(s + ':NAME' for s in SOURCES)}"
        )
    if not name or name != name.strip():
        raise ConfigError(f"model {spec!r}: expected {source}:NAME with a model name after ':'")
    return source, name


def is_external(spec: str) -> bool:
    """True for a `torchvision:NAME` / `timm:NAME` spec, False for a registry name."""
    return parse_spec(spec)[0] is not None


def _missing(source: str, err: BaseException) -> ConfigError:
    return ConfigError(
        f"{source}:NAME models need the {source} package ({_first_line(err)}); install it with "
        f"`pip install efficientdl[{EXTRAS[source]}]`"
    )


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


def _drop_modules(prefix: str) -> None:
    for name in [m for m in sys.modules if m == prefix or m.startswith(prefix + ".")]:
        del sys.modules[name]


def torchvision_models() -> types.ModuleType:
    """`torchvision.models`, imported without torchvision's operator fake kernels when its C
    operators cannot load (see the module docstring); ConfigError when it is missing or cannot be
    imported either way."""
    try:
        return importlib.import_module("torchvision.models")
    except ModuleNotFoundError as err:
        if (err.name or "").split(".")[0] == "torchvision":
            raise _missing("torchvision", err) from None
        first = err
    except Exception as err:  # a broken install raises anything from its import
        first = err
    _drop_modules("torchvision")
    sys.modules[_FAKE_KERNELS] = types.ModuleType(_FAKE_KERNELS)
    try:
        module = importlib.import_module("torchvision.models")
    except Exception as err:
        _drop_modules("torchvision")
        raise ConfigError(
            f"torchvision is installed but cannot be imported ({_first_line(first)}; without its "
            f"operator kernels: {_first_line(err)}); reinstall it for this torch "
            f"(`pip install efficientdl[vision]`)"
        ) from None
    log.warning(
        "torchvision's C operators do not load with this torch (%s); its models were imported "
        "without them (detection operators such as nms are unavailable)",
        _first_line(first),
    )
    return module


def _timm() -> types.ModuleType:
    """`timm`, imported after torchvision (which timm imports) was loaded by `torchvision_models`
    where it is installed, so a torchvision without working C operators does not break it."""
    if "timm" not in sys.modules and importlib.util.find_spec("torchvision") is not None:
        torchvision_models()
    try:
        return importlib.import_module("timm")
    except Exception as err:  # a broken install raises anything from its import
        if isinstance(err, ModuleNotFoundError) and (err.name or "").split(".")[0] == "timm":
            raise _missing("timm", err) from None
        raise ConfigError(
            f"timm is installed but cannot be imported ({_first_line(err)})"
        ) from None


def model_names(source: str) -> list[str]:
    """The classification model names `source` ('torchvision' or 'timm') can build."""
    if source == "torchvision":
        tv = torchvision_models()
        return sorted(tv.list_models(module=tv))
    if source == "timm":
        return sorted(_timm().list_models())
    raise ConfigError(f"unknown model source {source!r}; expected one of {list(SOURCES)}")


_HOW_TO_LIST = {
    "torchvision": "torchvision.models.list_models(module=torchvision.models) lists them",
    "timm": "timm.list_models('PATTERN*') lists them",
}


def _constructor(source: str, name: str) -> tuple[Callable[..., nn.Module], dict[str, Any]]:
    """The constructor of `source`:`name` and the keywords it always gets (no weights)."""
    known = model_names(source)
    if name not in known:
        close = difflib.get_close_matches(name, known, n=3)
        hint = f"did you mean {', '.join(close)}? " if close else ""
        raise ConfigError(
            f"model '{source}:{name}': {source} has no classification model {name!r}; "
            f"{hint}{_HOW_TO_LIST[source]}"
        )
    if source == "torchvision":
        return torchvision_models().get_model, {"name": name, "weights": None}
    return _timm().create_model, {"model_name": name, "pretrained": False}


RESERVED = ("num_classes", "in_channels", "in_chans", "weights", "pretrained")
"""Keywords `build_external` sets itself (a caller's kwargs may not hold them)."""


def build_external(
    spec: str,
    *,
    num_classes: int,
    in_channels: int = 3,
    kwargs: Mapping[str, Any] | None = None,
) -> nn.Module:
    """An untrained `torchvision:NAME` or `timm:NAME` model with `num_classes` outputs for
    `in_channels`-channel images, `kwargs` passed to its constructor. A registry name, a missing
    package, an unknown model name, a keyword in `RESERVED` or one the constructor rejects, or
    in_channels ≠ 3 for torchvision are ConfigErrors."""
    kwargs = dict(kwargs or {})
    source, name = parse_spec(spec)
    if source is None:
        raise ConfigError(f"model {spec!r} is not external; expected torchvision:NAME or timm:NAME")
    reserved = sorted(set(kwargs) & set(RESERVED))
    if reserved:
        raise ConfigError(
            f"model {spec!r}: keyword {reserved[0]!r} is set by efficientdl (classes and "
            f"channels from the data, never pretrained weights); remove it"
        )
    build, fixed = _constructor(source, name)
    if source == "torchvision" and in_channels != 3:
        raise ConfigError(
            f"model {spec!r}: torchvision's classification models take 3-channel images, got "
            f"in_channels={in_channels} (timm:NAME models take any channel count)"
        )
    options = {**fixed, "num_classes": num_classes, **kwargs}
    if source == "timm":
        options["in_chans"] = in_channels
    try:
        return build(**options)
    except (TypeError, ValueError) as err:
        raise ConfigError(f"model {spec!r} with keywords {kwargs!r}: {_first_line(err)}") from None
