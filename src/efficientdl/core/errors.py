"""The errors a user can cause. The CLI prints each as one `error: …` line and exits 2.

Everything raised for a user's mistake (a bad config value, a missing or corrupt file, a run
folder that cannot be used, a diverging run) derives from `UserError`, so the CLI can tell them
from bugs, which keep their traceback.
"""

from __future__ import annotations


class UserError(Exception):
    """A problem the user can fix; its message says what was wrong and what was expected."""


class ConfigError(UserError, ValueError):
    """A config file or override names an unknown key or gives a value of the wrong type."""


class RunFolderError(UserError, ValueError):
    """A run folder cannot be used as asked (holds a run, holds none, is a file, differs)."""


class DataError(UserError, ValueError):
    """A dataset or data file is missing, truncated or malformed."""


class UnsafeFileError(DataError):
    """A checkpoint or data file asks to run code or build objects other than plain data."""


class DivergenceError(UserError, FloatingPointError):
    """Training produced a non-finite or exploding loss; the last good checkpoint is kept."""
