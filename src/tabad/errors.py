"""Exceptions with messages a user can act on.

Every error caused by a file names that file, so a bad image among thousands
can be found without a debugger.
"""

from __future__ import annotations

from pathlib import Path


class TabadError(Exception):
    """Base class: the CLI prints these without a traceback."""


class DataError(TabadError):
    """A dataset file or folder is missing, unreadable or inconsistent."""

    def __init__(self, path: str | Path, problem: str):
        self.path = Path(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}")


class WeightsError(TabadError):
    """Backbone weights cannot be found or do not fit the architecture."""


class ConfigError(TabadError, ValueError):
    """A method or run option has an invalid value."""
