"""Progress of long stages: a bar on a terminal, a few plain lines in a log file or pipe.

:func:`progress` is the one way ``tabad`` shows progress. When standard error is a terminal it
returns a :mod:`tqdm` bar. When it is not (a log file, a pipe, a CI job), carriage-return
updates would fill the log with thousands of lines, so it returns a :class:`LogProgress`
that writes ``desc: n/total unit (rate, elapsed)`` at most once every
:data:`DEFAULT_INTERVAL` seconds (environment variable ``TABAD_PROGRESS_INTERVAL`` to
change it) and one line when the stage finishes. With ``disable=True`` nothing is shown.

Both kinds take the part of tqdm's interface that ``tabad`` uses: iteration, ``update``,
``set_postfix``, ``set_postfix_str``, ``close`` and ``with``. Importing this module
imports neither tqdm nor torch.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import IO, Any

#: Seconds between two lines of a :class:`LogProgress`, unless ``TABAD_PROGRESS_INTERVAL`` says otherwise.
DEFAULT_INTERVAL = 10.0
INTERVAL_ENV = "TABAD_PROGRESS_INTERVAL"


def progress(iterable: Iterable | None = None, total: float | None = None, desc: str = "", unit: str = "it",
             leave: bool = True, initial: float = 0, disable: bool = False, stream: IO[str] | None = None) -> Any:
    """A progress display for one stage: ``for x in progress(items, desc="loading", unit="img")``,
    or ``bar = progress(total=n, ...)`` with ``bar.update()`` and ``bar.close()``.

    ``stream`` defaults to :data:`sys.stderr` (looked up at each call). ``leave=False`` marks an
    inner stage: on a terminal its bar is erased when it ends; in a log its final line is written
    only when the stage ran long enough to write a line before.
    """
    stream = sys.stderr if stream is None else stream
    if disable:
        return NoProgress(iterable, total=total, initial=initial)
    if _isatty(stream):
        from tqdm.auto import tqdm

        return tqdm(iterable, total=total, desc=desc, unit=unit, leave=leave, initial=initial, file=stream)
    return LogProgress(iterable, total=total, desc=desc, unit=unit, leave=leave, initial=initial, stream=stream)


def _isatty(stream: Any) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError, OSError):  # no isatty, or a closed stream
        return False


def interval_from_env() -> float:
    """``TABAD_PROGRESS_INTERVAL`` in seconds (>= 0), or :data:`DEFAULT_INTERVAL` when unset or not a number."""
    value = os.environ.get(INTERVAL_ENV, "").strip()
    try:
        seconds = float(value)
    except ValueError:
        return DEFAULT_INTERVAL
    return seconds if seconds >= 0 else DEFAULT_INTERVAL


def _total_of(iterable: Iterable | None, total: float | None) -> float | None:
    if total is None and iterable is not None:
        try:
            return len(iterable)  # type: ignore[arg-type]
        except (TypeError, AttributeError):
            return None
    return total


def _postfix_text(ordered_dict: Mapping | None, kwargs: Mapping) -> str:
    items = {**(ordered_dict or {}), **kwargs}
    return ", ".join(f"{k}={f'{v:.4g}' if isinstance(v, float) else v}" for k, v in items.items())


class NoProgress:
    """What a disabled stage returns: iterates and counts, shows nothing."""

    def __init__(self, iterable: Iterable | None = None, total: float | None = None, initial: float = 0):
        self.iterable = iterable
        self.total = _total_of(iterable, total)
        self.n = initial

    def __iter__(self) -> Iterator:
        for item in self.iterable or ():
            yield item
            self.n += 1

    def update(self, n: float = 1) -> None:
        self.n += n

    def set_postfix(self, ordered_dict: Mapping | None = None, refresh: bool = True, **kwargs: Any) -> None:
        pass

    def set_postfix_str(self, s: str = "", refresh: bool = True) -> None:
        pass

    def set_description(self, desc: str | None = None, refresh: bool = True) -> None:
        pass

    def close(self) -> None:
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def _number(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else f"{x:.4g}"


def format_seconds(seconds: float) -> str:
    """``42s``, ``3m05s``, ``2h07m``."""
    s = int(round(max(seconds, 0.0)))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"


class LogProgress(NoProgress):
    """Progress as plain lines for a log: one at most every ``interval`` seconds, and one at the end.

    A line reads ``benchmark: 12/40 pair (0.53 pair/s, 22s) tex/padim/random``: the count, the
    rate since the stage started, the time elapsed, and the postfix last set. The final line ends
    in ``done`` when the count reached the total. A stage that ends by an exception writes no
    final line: the error says what happened.
    """

    def __init__(self, iterable: Iterable | None = None, total: float | None = None, desc: str = "",
                 unit: str = "it", leave: bool = True, initial: float = 0, stream: IO[str] | None = None,
                 interval: float | None = None, clock: Callable[[], float] = time.monotonic):
        super().__init__(iterable, total=total, initial=initial)
        self.desc, self.unit, self.leave = desc, unit, leave
        self.stream = sys.stderr if stream is None else stream
        self.interval = interval_from_env() if interval is None else interval
        self.clock = clock
        self.initial = initial
        self.start = self.last = clock()
        self.postfix = ""
        self.lines = 0
        self.closed = False

    def __iter__(self) -> Iterator:
        for item in self.iterable or ():
            yield item
            self.update()
        self.close()

    def update(self, n: float = 1) -> None:
        self.n += n
        if self.closed:
            return
        if self.total is not None and self.n >= self.total:
            return  # the stage is complete: close() writes its line
        now = self.clock()
        if now - self.last >= self.interval:
            self._write(now)

    def set_postfix(self, ordered_dict: Mapping | None = None, refresh: bool = True, **kwargs: Any) -> None:
        self.postfix = _postfix_text(ordered_dict, kwargs)

    def set_postfix_str(self, s: str = "", refresh: bool = True) -> None:
        self.postfix = str(s)

    def set_description(self, desc: str | None = None, refresh: bool = True) -> None:
        self.desc = desc or ""

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        if self.leave or self.lines:
            self._write(self.clock(), final=True)

    def __exit__(self, exc_type: object, *exc_info: object) -> None:
        if exc_type is not None:
            self.closed = True  # no "done" line for a stage that failed
        self.close()

    def line(self, now: float, final: bool = False) -> str:
        """The text of one line at time ``now``."""
        count = _number(self.n) if self.total is None else f"{_number(self.n)}/{_number(self.total)}"
        elapsed = now - self.start
        done = self.n - self.initial
        if done <= 0 or elapsed <= 0:
            rate = f"? {self.unit}/s"
        elif done >= elapsed:
            rate = f"{done / elapsed:.3g} {self.unit}/s"
        else:
            rate = f"{format_seconds(elapsed / done)}/{self.unit}"
        text = f"{self.desc}: " if self.desc else ""
        text += f"{count} {self.unit} ({rate}, {format_seconds(elapsed)})"
        if self.postfix:
            text += f" {self.postfix}"
        if final and (self.total is None or self.n >= self.total):
            text += " done"
        return text

    def _write(self, now: float, final: bool = False) -> None:
        self.last = now
        self.lines += 1
        try:
            print(self.line(now, final), file=self.stream, flush=True)
        except (OSError, ValueError):  # a closed or broken stream must not stop the work
            pass
