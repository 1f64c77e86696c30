"""Progress that is never silent for minutes: tqdm bars on a terminal, timed lines elsewhere.

tqdm hides its bars when output is not a terminal (``make run | tee log``, CI), and a run then
prints nothing while it fine-tunes or evaluates for minutes. ``LineProgress`` has the part of
tqdm's interface the loop and the engine use (``update``, ``set_postfix``, ``close``) and prints
a line when the run has printed nothing for ``every`` seconds (counted from the run's last line,
its own or the runner's: a chain of short tasks is not silent either, and a line right after the
runner's says nothing new), and one when such a task ends. A line says how far its task is and,
from the rate so far, about how long it has left.

A whole run also says where it stands: ``RunProgress`` counts its cells and estimates the time
left from the finished cells' own times (``estimate_left``), and ``Heartbeat`` prints that, with
the task in hand, whenever the run has been silent for ``every`` seconds, also between the
updates of a slow step or while a model loads or saves.
"""
from __future__ import annotations

import functools
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import Callable

_last_line = [time.monotonic()]   # when the run last printed any line (ours or the runner's log)
_open_bars: list["LineProgress"] = []   # tasks in progress, innermost last: what a heartbeat line names
_run_status: list[Callable[[], str] | None] = [None]   # the whole run's position, while a run goes on


def note_output(at: float | None = None) -> None:
    """The run printed a line (at ``at``, default now): a progress line within ``every`` seconds of it
    would say nothing new."""
    _last_line[0] = time.monotonic() if at is None else at


def set_run_status(status: Callable[[], str] | None) -> None:
    """While a run goes on, progress lines end with ``status()`` (e.g. "cell 5/16, about 9 min left")."""
    _run_status[0] = status


def run_status() -> str:
    status = _run_status[0]
    return status() if status is not None else ""


def duration(seconds: float) -> str:
    """Seconds for a reader: "45 s", "9 min", "1 h 05 min"."""
    seconds = max(0.0, seconds)
    if seconds < 60:
        return f"{seconds:.0f} s"
    minutes = round(seconds / 60)
    if minutes < 60:
        return f"{minutes} min"
    return f"{minutes // 60} h {minutes % 60:02d} min"


class LineProgress:
    def __init__(self, total: int | None = None, desc: str = "", unit: str = "it", every: float = 20.0,
                 stream=None, clock: Callable[[], float] = time.monotonic, **_ignored):
        self.total, self.desc, self.unit, self.every = total, desc, unit, every
        self.stream, self.clock = stream or sys.stderr, clock
        self.n, self.postfix = 0, ""
        self.started = clock()
        self.last = 0.0   # silence is counted from the run's last line (``_last_line``), not from this task's start
        self.printed, self.printed_n = False, 0
        self.with_postfix = False   # set_postfix follows each update (the training loop): print there
        _open_bars.append(self)

    def left_s(self) -> float | None:
        """This task's time left at its rate so far; None before its first unit or without a total."""
        if not self.total or self.n <= 0 or self.n >= self.total:
            return None
        return (self.clock() - self.started) / self.n * (self.total - self.n)

    def line(self, state: str) -> str:
        of = f"/{self.total}" if self.total else ""
        parts = [duration(self.clock() - self.started)]
        left = self.left_s() if state == "done" else None
        if left is not None:
            parts.append(f"about {duration(left)} left")
        if self.postfix:
            parts.append(self.postfix)
        status = run_status()
        return f"  {self.desc}: {self.n}{of} {self.unit} {state} ({', '.join(parts)})" + (f" | {status}" if status else "")

    def _print(self, state: str) -> None:
        self.printed, self.printed_n = True, self.n
        note_output(self.clock())
        print(self.line(state), file=self.stream, flush=True)

    def _maybe_print(self) -> None:
        now = self.clock()
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
        if self in _open_bars:
            _open_bars.remove(self)
        if self.printed and self.n != self.printed_n:   # a last "N/N done" line already said it
            self._print("finished")

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def progress_factory(stream=None):
    """tqdm bars when ``stream`` (default stderr) is a terminal, timed progress lines otherwise."""
    stream = stream or sys.stderr
    if is_terminal(stream):
        from tqdm.auto import tqdm

        return functools.partial(tqdm, leave=False, dynamic_ncols=True, file=stream)
    return functools.partial(LineProgress, stream=stream)


def is_terminal(stream) -> bool:
    return bool(getattr(stream, "isatty", lambda: False)())


# --- the whole run ---------------------------------------------------------------------------


def estimate_left(finished: list[tuple[str, float]], pending: list[str],
                  current_s: float = 0.0) -> tuple[float, list[str]] | None:
    """Seconds a run has left, and why that is only a lower bound (empty: a plain estimate).

    Each pending cell (its kind, "reference" or "method") costs the mean time of the finished
    cells of its kind; the first pending cell is the current one, ``current_s`` into its work. A
    kind none of whose cells has finished yet is costed at the smallest mean known (a method cell
    evaluates like a reference cell, and trains first), and a current cell already past its
    estimate at nothing more: both make the sum a lower bound. None until a cell has finished
    (nothing to estimate from); (0.0, []) when nothing is pending.
    """
    if not pending:
        return 0.0, []
    if not finished:
        return None
    by_kind: dict[str, list[float]] = {}
    for kind, seconds in finished:
        by_kind.setdefault(kind, []).append(seconds)
    means = {kind: sum(times) / len(times) for kind, times in by_kind.items()}
    smallest = min(means.values())
    cost = [means.get(kind, smallest) for kind in pending]
    why = [f"no {kind} cell timed yet" for kind in sorted(set(pending) - set(means))]
    if current_s > cost[0]:
        why.append("this cell is past its estimate")
    return max(cost[0] - current_s, 0.0) + sum(cost[1:]), why


@dataclass
class RunProgress:
    """Where a run of cells stands: cells done of the total, time spent, an estimate of the time left.

    Only cells computed here count for the estimate (a skipped, already finished cell takes no
    time), and one-off work inside a cell that later cells do not repeat (preparing the target
    and retain models) is left out of that cell's time with ``exclude``.
    """

    cells: list[tuple[str, str]]                       # (name, kind) in run order
    clock: Callable[[], float] = time.monotonic
    started: float = field(default=0.0)
    done: list[str] = field(default_factory=list)
    timed: list[tuple[str, float]] = field(default_factory=list)   # (kind, seconds) of computed cells
    current: str | None = None
    current_started: float = 0.0
    excluded: float = 0.0                               # one-off seconds inside the current cell

    def __post_init__(self):
        self.started = self.clock()

    def start(self, name: str) -> None:
        self.current, self.current_started, self.excluded = name, self.clock(), 0.0

    def exclude(self, seconds: float) -> None:
        self.excluded += seconds

    def finish(self, name: str, computed: bool) -> None:
        kind = dict(self.cells)[name]
        if computed:
            self.timed.append((kind, max(self.clock() - self.current_started - self.excluded, 0.0)))
        self.done.append(name)
        self.current = None

    def left_s(self) -> tuple[float, list[str]] | None:
        """``estimate_left`` for the cells not done yet, the current one first."""
        pending = [kind for name, kind in self.cells if name not in self.done]
        if self.current in dict(self.cells) and self.current not in self.done:   # the current cell first
            pending.remove(dict(self.cells)[self.current])
            pending.insert(0, dict(self.cells)[self.current])
            spent = max(self.clock() - self.current_started - self.excluded, 0.0)
        else:
            spent = 0.0
        return estimate_left(self.timed, pending, spent)

    def status(self) -> str:
        """E.g. "run: 5/16 cells done, now ga, 6 min so far, about 9 min left"."""
        spent = duration(self.clock() - self.started)
        if len(self.done) == len(self.cells):
            return f"run: {len(self.done)}/{len(self.cells)} cells done in {spent}"
        left = self.left_s()
        if left is None:
            estimate = "time left known after the first computed cell"
        elif left[1] and left[0] < 1 and "this cell is past its estimate" in left[1]:   # no bound worth saying
            estimate = f"time left unknown ({'; '.join(left[1])})"
        elif left[1]:
            estimate = f"at least {duration(left[0])} left ({'; '.join(left[1])})"
        else:
            estimate = f"about {duration(left[0])} left"
        now = f", now {self.current}" if self.current and self.current not in self.done else ""
        return (f"run: {len(self.done)}/{len(self.cells)} cells done{now}, {spent} so far, "
                f"{estimate}")


class Heartbeat:
    """A line whenever the run has printed nothing for ``every`` seconds: the innermost task in
    progress (its line, as ``LineProgress`` writes it) or else the run's status. ``beat`` does one
    check (the tests call it with their own clock); ``start`` runs it every second in a daemon thread.
    """

    def __init__(self, every: float = 20.0, stream=None, clock: Callable[[], float] = time.monotonic):
        self.every, self.stream, self.clock = every, stream or sys.stderr, clock
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def beat(self) -> bool:
        now = self.clock()
        if now - _last_line[0] < self.every:
            return False
        bars = list(_open_bars)   # the main thread opens and closes bars meanwhile
        if bars:
            text = bars[-1].line("done")
        else:
            text = f"  {run_status() or 'still working'} ({duration(now - _last_line[0])} since the last line)"
        note_output(now)
        print(text, file=self.stream, flush=True)
        return True

    def start(self) -> "Heartbeat":
        def loop():
            while not self._stop.wait(1.0):
                self.beat()
        self._thread = threading.Thread(target=loop, daemon=True, name="progress-heartbeat")
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()
