"""The YAML recipes shipped inside the package (`efficientdl/configs/<method>/<name>.yaml`) and
how `--config NAME|FILE` finds one."""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from efficientdl.core.errors import ConfigError


def _root():
    return resources.files("efficientdl") / "configs"


def list_recipes(method: str | None = None) -> list[str]:
    """Packaged recipe names as `method/name`, sorted (only `method`'s when given)."""
    names = []
    for folder in sorted(_root().iterdir(), key=lambda p: p.name):
        if not folder.is_dir() or (method is not None and folder.name != method):
            continue
        names += [f"{folder.name}/{f.name[:-5]}" for f in folder.iterdir()
                  if f.name.endswith(".yaml")]  # fmt: skip
    return sorted(names)


def resolve_recipe(spec: str | Path, method: str) -> Path:
    """The file `--config spec` means for `method`: an existing file path, else a packaged recipe
    named `name`, `method/name` or `configs/method/name.yaml` (the repo layout of older READMEs)."""
    path = Path(spec)
    if path.is_file():
        return path
    name = str(spec).removesuffix(".yaml").removesuffix(".yml")
    name = name.removeprefix("configs/")
    *parents, leaf = (name if "/" in name else f"{method}/{name}").split("/")
    file = _root().joinpath(*parents, f"{leaf}.yaml")
    if file.is_file():
        return Path(str(file))
    known = ", ".join(n.split("/", 1)[1] for n in list_recipes(method))
    raise ConfigError(
        f"--config {spec}: no such file and no packaged {method} recipe of that name; "
        f"packaged: {known} (`efficientdl configs` lists them)"
    )
