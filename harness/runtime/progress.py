"""Progress that is never silent for minutes: tqdm bars on a terminal, timed lines elsewhere.

tqdm hides its bars when output is not a terminal (``make run | tee log``, CI), and a run then
prints nothing while it fine-tunes or evaluates for minutes. ``LineProgress`` has the part of
tqdm's interface the loop and the engine use (``update``, ``set_postfix``, ``close``) and prints
a line when the run has printed nothing for ``every`` seconds (counted from the run's last line,
its own or the runner's: a chain of short tasks is not silent either, and a line right after the
runner's says nothing new), and one when such a task ends.
"""
from __future__ import annotations

import functools
import sys
import time


_last_line = [time.monotonic()]   # when the run last printed any line (ours or the runner's log)


def note_output() -> None:
    """The run printed a line: a progress line within ``every`` seconds of it would say nothing new."""
    _last_line[0] = time.monotonic()


class LineProgress:
    def __init__(self, total: int | None = None, desc: str = "", unit: str = "it", every: float = 20.0,
                 stream=None, **_ignored):
        self.total, self.desc, self.unit, self.every = total, desc, unit, every
        self.stream = stream or sys.stderr
        self.n, self.postfix = 0, ""
        self.started = time.monotonic()
        self.last = 0.0   # silence is counted from the run's last line (``_last_line``), not from this task's start
        self.printed, self.printed_n = False, 0
        self.with_postfix = False   # set_postfix follows each update (the training loop): print there

    def _print(self, state: str) -> None:
        self.printed, self.printed_n = True, self.n
        note_output()
        of = f"/{self.total}" if self.total else ""
        elapsed = time.monotonic() - self.started
        post = f", {self.postfix}" if self.postfix else ""
        print(f"  {self.desc}: {self.n}{of} {self.unit} {state} ({elapsed:.0f} s{post})", file=self.stream, flush=True)

    def _maybe_print(self) -> None:
        now = time.monotonic()
        if now - max(self.last, _last_line[0]) >= self.every:
            self.last = now
            self._print("done")

    def update(self, n: int = 1) -> None:
        self.n += n
        if not self.with_postfix:
            self._maybe_print()

    def set_postfix(self, **values) -> None:
        self.postfix = ", ".join(f"{k}={v}" for k, v in values.items())
        self.with_postfix = True
        self._maybe_print()

    def close(self) -> None:
        if self.printed and self.n != self.printed_n:   # a last "N/N done" line already said it
            self._print("finished")

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def progress_factory(stream=None):
    """tqdm bars when ``stream`` (default stderr) is a terminal, timed progress lines otherwise."""
    stream = stream or sys.stderr
    if getattr(stream, "isatty", lambda: False)():
        from tqdm.auto import tqdm

        return functools.partial(tqdm, leave=False, dynamic_ncols=True, file=stream)
    return functools.partial(LineProgress, stream=stream)
