"""Exceptions with messages a user can act on.

Every error caused by a file names that file, so a bad image among thousands
can be found without a debugger.

An error whose message advises an option (``pass skip_bad=True to leave bad
files out``) says so in Python terms, the terms of the API that raised it, and
names the option in :attr:`TabadError.options`. The ``tabad`` command then
rewrites each advised ``name=value`` into the flag that sets it
(``--skip-bad``) with :meth:`TabadError.render`, so the person at the terminal
is told what to type and the Python caller what to pass.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path


def python_spelling(name: str, value: object) -> str:
    """How a message advises keyword ``name`` set to ``value``: ``skip_bad=True``, ``image_size=64``."""
    return f"{name}={value!r}"


class TabadError(Exception):
    """Base class: the CLI prints these without a traceback.

    ``option`` names the keyword argument the message advises: a name (advised value ``True``)
    or ``{name: value}`` for several, or for another value. The message must spell each as
    :func:`python_spelling` does (``pass skip_bad=True``), which is what :meth:`render` rewrites.
    """

    def __init__(self, *args: object, option: str | Mapping[str, object] | None = None):
        super().__init__(*args)
        if option is None:
            self.options: dict[str, object] = {}
        elif isinstance(option, str):
            self.options = {option: True}
        else:
            self.options = dict(option)

    def render(self, spell: Callable[[str, object], str | None]) -> str:
        """The message with each advised ``name=value`` replaced by ``spell(name, value)``.

        ``spell`` returns ``None`` for an option it has no other words for (e.g. a command
        without that flag): the Python spelling then stays.
        """
        text = str(self)
        for name, value in self.options.items():
            other = spell(name, value)
            if other is not None:
                text = text.replace(python_spelling(name, value), other)
        return text


class DataError(TabadError):
    """A dataset file or folder is missing, unreadable or inconsistent."""

    def __init__(self, path: str | Path, problem: str, *, option: str | Mapping[str, object] | None = None):
        self.path = Path(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}", option=option)

    def __reduce__(self):  # the default would call DataError(message) and fail
        return (type(self), (self.path, self.problem), self.__dict__)


class WeightsError(TabadError):
    """Backbone weights cannot be found or do not fit the architecture."""


class ConfigError(TabadError, ValueError):
    """A method or run option has an invalid value."""
