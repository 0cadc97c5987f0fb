"""Where datasets live on disk, and the errors raised when they are missing or corrupt.

All of them are `DataError`s (user errors: the CLI prints one `error: …` line); each also keeps
the built-in type older callers catch (FileNotFoundError, ValueError, RuntimeError).
"""

from __future__ import annotations

import os
from pathlib import Path

from efficientdl.core.errors import DataError

ENV_VAR = "EFFICIENTDL_DATA"


class DatasetNotFoundError(DataError, FileNotFoundError):
    """A dataset file or folder is missing; the message names the path and the fix."""


class DatasetFormatError(DataError):
    """A dataset file exists but its content is not in the expected format."""


class FetchError(DataError, RuntimeError):
    """`efficientdl data fetch` could not download or unpack a dataset, or what it got is not the
    known-good file."""


def data_home() -> Path:
    """The data cache folder: `$EFFICIENTDL_DATA` if set, else `~/.cache/efficientdl`."""
    env = os.environ.get(ENV_VAR)
    if env:
        return Path(env).expanduser()
    return Path.home() / ".cache" / "efficientdl"


def search_dirs(root: str | os.PathLike | None, subdirs: tuple[str, ...]) -> list[Path]:
    """`root` itself then `root/<sub>` for each sub-folder name (root defaults to data_home())."""
    base = Path(root).expanduser() if root is not None else data_home()
    return [base, *(base / sub for sub in subdirs)]


def not_found(label: str, missing: str, dirs: list[Path], fix: str) -> DatasetNotFoundError:
    """The error for dataset `label` whose files (`missing`) are in none of `dirs`; `fix` says
    how to get them."""
    looked = ", ".join(str(d) for d in dirs)
    return DatasetNotFoundError(f"{label} not found: no {missing} in {looked}; {fix}")


def refetch_hint(name: str) -> str:
    """The standard 'how to fix it' sentence for a damaged file of a fetchable dataset."""
    return f"delete it and run `efficientdl data fetch {name}`"


def root_hint(name: str, *, fetchable: bool) -> str:
    """The standard 'how to fix it' sentence for a missing dataset."""
    fix = f"run `efficientdl data fetch {name}` or " if fetchable else ""
    return f"{fix}pass --set data_root=DIR (or root=DIR) pointing at the {name} files"
