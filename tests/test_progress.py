"""Progress: a tqdm bar on a terminal, a few plain lines in a log, nothing when disabled."""

from __future__ import annotations

import io
import subprocess
import sys

import pytest

from tabad.progress import DEFAULT_INTERVAL, INTERVAL_ENV, LogProgress, NoProgress, format_seconds, progress


class FakeClock:
    """A clock that moves only when told: ``clock.t += 1.5``."""

    def __init__(self, t: float = 1000.0):
        self.t = t

    def __call__(self) -> float:
        return self.t


class Stream(io.StringIO):
    def __init__(self, tty: bool):
        super().__init__()
        self.tty = tty

    def isatty(self) -> bool:
        return self.tty


def _lines(stream: io.StringIO) -> list[str]:
    return stream.getvalue().splitlines()


def test_log_10000_updates_give_a_few_lines_and_a_final_one():
    clock, stream = FakeClock(), Stream(tty=False)
    bar = LogProgress(total=10_000, desc="loading", unit="img", stream=stream, interval=10.0, clock=clock)
    for _ in range(10_000):
        clock.t += 0.002  # 20 s in all: two periodic lines at most
        bar.update()
    bar.close()
    bar.close()  # a second close writes nothing
    lines = _lines(stream)
    assert 1 <= len(lines) <= 3, lines
    assert "\r" not in stream.getvalue()
    assert lines[-1] == "loading: 10000/10000 img (500 img/s, 20s) done"
    assert len(lines) == 2 and lines[0].startswith("loading: 500") and lines[0].endswith("/10000 img (500 img/s, 10s)")


def test_factory_on_a_pipe_gives_log_lines(monkeypatch):
    monkeypatch.delenv(INTERVAL_ENV, raising=False)  # 10 s: far longer than 10,000 quick steps
    stream = Stream(tty=False)
    bar = progress(range(10_000), desc="epochs", unit="epoch", stream=stream)
    assert isinstance(bar, LogProgress)
    assert sum(1 for _ in bar) == 10_000  # iterating to the end writes the final line
    lines = _lines(stream)
    assert 1 <= len(lines) <= 3 and lines[-1].startswith("epochs: 10000/10000 epoch") and lines[-1].endswith("done")


def test_factory_default_stream_is_stderr_at_call_time(capsys, monkeypatch):
    monkeypatch.delenv(INTERVAL_ENV, raising=False)
    with progress(total=3, desc="stage", unit="x") as bar:  # capsys: stderr is not a terminal
        bar.update(3)
    err = capsys.readouterr().err
    assert err.splitlines() == [err.splitlines()[0]] and err.startswith("stage: 3/3 x") and err.rstrip().endswith("done")


def test_tty_gets_a_tqdm_bar():
    from tqdm import tqdm

    stream = Stream(tty=True)
    bar = progress(total=5, desc="benchmark", unit="pair", stream=stream)
    try:
        assert isinstance(bar, tqdm)
        bar.set_postfix_str("tex/padim/random")
        bar.update(5)
    finally:
        bar.close()
    assert "benchmark" in stream.getvalue()


def test_disabled_prints_nothing_but_still_iterates(capsys):
    for tty in (False, True):
        stream = Stream(tty=tty)
        bar = progress(range(7), desc="x", disable=True, stream=stream)
        assert isinstance(bar, NoProgress) and not isinstance(bar, LogProgress)
        assert list(bar) == list(range(7))
        bar.update(3)
        bar.set_postfix(loss="0.1", refresh=False)
        bar.set_postfix_str("y")
        bar.close()
        with progress(total=4, disable=True, stream=stream) as other:
            other.update(4)
        assert stream.getvalue() == ""
    assert capsys.readouterr() == ("", "")


def test_inner_stage_writes_a_final_line_only_after_a_periodic_one():
    clock, stream = FakeClock(), Stream(tty=False)
    quick = LogProgress(total=3, desc="quick", leave=False, stream=stream, interval=10.0, clock=clock)
    quick.update(3)
    quick.close()
    assert stream.getvalue() == ""  # a transient stage that was over in seconds leaves no line
    slow = LogProgress(total=3, desc="slow", leave=False, stream=stream, interval=10.0, clock=clock)
    clock.t += 11
    slow.update()
    clock.t += 11
    slow.update(2)
    slow.close()
    # the update that completes the stage writes nothing: close() does, once
    assert [line.split(" (")[0] for line in _lines(stream)] == ["slow: 1/3 it", "slow: 3/3 it"]


def test_line_shows_postfix_initial_and_slow_rates():
    clock, stream = FakeClock(), Stream(tty=False)
    bar = LogProgress(total=40, desc="benchmark", unit="pair", initial=10, stream=stream, interval=10.0, clock=clock)
    bar.set_postfix_str("tex/padim/random")
    clock.t += 30
    bar.update()  # one pair in 30 s since the stage started (the 10 before were reused)
    assert _lines(stream) == ["benchmark: 11/40 pair (30s/pair, 30s) tex/padim/random"]
    bar.set_postfix({"loss": 0.123456, "epoch": 3})
    assert bar.line(clock.t).endswith("loss=0.1235, epoch=3")


def test_failed_stage_writes_no_done_line():
    clock, stream = FakeClock(), Stream(tty=False)
    with pytest.raises(RuntimeError):
        with LogProgress(total=5, desc="s", stream=stream, interval=10.0, clock=clock) as bar:
            bar.update()
            raise RuntimeError("boom")
    assert stream.getvalue() == ""


def test_interval_from_environment(monkeypatch):
    monkeypatch.setenv(INTERVAL_ENV, "0")
    clock, stream = FakeClock(), Stream(tty=False)
    bar = LogProgress(total=3, desc="s", stream=stream, clock=clock)
    assert bar.interval == 0
    for _ in range(3):
        bar.update()
    bar.close()
    assert len(_lines(stream)) == 3  # every update but the last, then the final line
    monkeypatch.setenv(INTERVAL_ENV, "often")
    assert LogProgress(total=1, stream=stream).interval == DEFAULT_INTERVAL


def test_format_seconds():
    assert [format_seconds(s) for s in (0.4, 42, 185, 7620)] == ["0s", "42s", "3m05s", "2h07m"]


def test_importing_progress_imports_neither_tqdm_nor_torch():
    code = "import sys, tabad.progress; heavy = [m for m in ('tqdm', 'torch') if m in sys.modules]; assert not heavy, heavy"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
