"""A whole run says how far it is and about how long is left, and is never silent for long.

The estimates are checked with a hand-driven clock (no sleeps): each expected figure is
computed by hand from the cell times the clock was moved through.
"""
from __future__ import annotations

import io
import re
from pathlib import Path

import pytest

from harness.runtime import progress
from harness.runtime.progress import (
    Heartbeat,
    LineProgress,
    RunProgress,
    duration,
    estimate_left,
    note_output,
    set_run_status,
)

REPO = Path(__file__).resolve().parents[1]


class Clock:
    """A clock the test moves by hand."""

    def __init__(self, now: float = 1000.0):
        self.now = now

    def __call__(self) -> float:
        return self.now

    def tick(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture(autouse=True)
def clean_progress_state():
    """The module keeps the run's status and open bars between calls: start and end each test clean."""
    set_run_status(None)
    progress._open_bars.clear()
    yield
    set_run_status(None)
    progress._open_bars.clear()


def test_duration_reads_as_seconds_minutes_or_hours():
    assert [duration(s) for s in (0, 44.6, 59.4, 60, 89, 91, 3599, 3600, 3900, -3)] == [
        "0 s", "45 s", "59 s", "1 min", "1 min", "2 min", "1 h 00 min", "1 h 00 min", "1 h 05 min", "0 s"]


def test_estimate_uses_the_mean_of_finished_cells_of_the_same_kind():
    finished = [("reference", 10.0), ("reference", 20.0), ("method", 100.0), ("method", 60.0)]
    # pending: the current method cell 30 s in, then two methods and a reference cell
    # = (80 - 30) + 80 + 80 + 15
    assert estimate_left(finished, ["method", "method", "method", "reference"], current_s=30.0) == (225.0, [])


def test_a_kind_not_timed_yet_gives_a_lower_bound():
    # only reference cells finished (15 s mean): a method costs at least that (it evaluates, and trains)
    assert estimate_left([("reference", 10.0), ("reference", 20.0)], ["method", "method"]) == (30.0, ["no method cell timed yet"])
    # the smallest mean known, not the overall one: still a lower bound with slow cells of another kind
    finished = [("reference", 10.0), ("method", 100.0), ("method", 100.0)]
    assert estimate_left(finished, ["sweep", "method"]) == (110.0, ["no sweep cell timed yet"])


def test_a_cell_past_its_estimate_leaves_a_lower_bound():
    assert estimate_left([("method", 50.0)], ["method", "method"], current_s=200.0) == (
        50.0, ["this cell is past its estimate"])


def test_no_estimate_before_a_cell_finished_and_none_left_at_the_end():
    assert estimate_left([], ["reference", "method"]) is None
    assert estimate_left([("method", 5.0)], []) == (0.0, [])


def test_run_progress_counts_cells_and_estimates_from_their_times():
    clock = Clock()
    run = RunProgress([("retain", "reference"), ("target", "reference"), ("ga", "method"), ("npo", "method")], clock)
    run.start("retain")
    clock.tick(300)          # preparing the models: one-off, left out of the cell's time
    run.exclude(300)
    clock.tick(20)
    assert run.status() == "run: 0/4 cells done, now retain, 5 min so far, time left known after the first computed cell"
    run.finish("retain", computed=True)            # 20 s of evaluation
    assert run.timed == [("reference", 20.0)]
    assert run.left_s() == (60.0, ["no method cell timed yet"])      # 3 cells at the only mean known, 20 s: at least that
    assert run.status() == "run: 1/4 cells done, 5 min so far, at least 1 min left (no method cell timed yet)"
    run.start("target")
    run.finish("target", computed=False)           # skipped: a finished record, no time to learn from
    assert run.timed == [("reference", 20.0)] and run.done == ["retain", "target"]
    run.start("ga")
    clock.tick(100)
    run.finish("ga", computed=True)
    assert run.left_s() == (100.0, [])             # npo: as long as ga
    run.start("npo")
    clock.tick(40)
    assert run.left_s() == (60.0, [])              # 100 s estimated, 40 s of it spent
    assert run.status() == "run: 3/4 cells done, now npo, 8 min so far, about 1 min left"
    clock.tick(70)
    assert run.status() == ("run: 3/4 cells done, now npo, 9 min so far, time left unknown "
                            "(this cell is past its estimate)")
    run.finish("npo", computed=True)
    assert run.status() == "run: 4/4 cells done in 9 min"


def test_a_task_line_says_how_far_it_is_and_its_own_time_left():
    clock, stream = Clock(), io.StringIO()
    note_output(clock())
    bar = LineProgress(total=48, desc="train finetune", unit="step", every=20.0, stream=stream, clock=clock)
    clock.tick(10)
    bar.update(1)
    assert stream.getvalue() == ""                 # 10 s of silence: nothing to say yet
    clock.tick(20)
    bar.update(1)                                  # 2 of 48 steps in 30 s: 15 s a step, 46 steps left
    assert stream.getvalue() == "  train finetune: 2/48 step done (30 s, about 12 min left)\n"
    set_run_status(lambda: "run: 0/16 cells done")
    clock.tick(25)
    bar.set_postfix(loss="1.5000")
    assert stream.getvalue().splitlines()[-1] == ("  train finetune: 2/48 step done (55 s, about 21 min left, "
                                                  "loss=1.5000) | run: 0/16 cells done")
    bar.n = 48
    bar.close()                                    # the end line has no estimate
    assert stream.getvalue().splitlines()[-1].startswith("  train finetune: 48/48 step finished (55 s, loss=1.5000)")
    assert progress._open_bars == []


def test_heartbeat_speaks_only_after_the_silence_and_names_the_task_in_hand():
    clock, stream = Clock(), io.StringIO()
    beat = Heartbeat(every=20.0, stream=stream, clock=clock)
    note_output(clock())
    clock.tick(19)
    assert beat.beat() is False and stream.getvalue() == ""
    clock.tick(1)
    assert beat.beat() is True                     # no task open, no run: it says how long it has been
    assert stream.getvalue() == "  still working (20 s since the last line)\n"
    clock.tick(5)
    assert beat.beat() is False                    # its own line restarted the count
    bar = LineProgress(total=6, desc="train ga", unit="step", every=20.0, stream=io.StringIO(), clock=clock)
    bar.update(1)
    set_run_status(lambda: "run: 2/16 cells done, now ga")
    clock.tick(20)
    assert beat.beat() is True                     # one slow step: the heartbeat names it
    assert stream.getvalue().splitlines()[-1] == ("  train ga: 1/6 step done (20 s, about 2 min left) | "
                                                  "run: 2/16 cells done, now ga")
    bar.close()
    clock.tick(20)
    assert beat.beat() is True
    assert stream.getvalue().splitlines()[-1] == "  run: 2/16 cells done, now ga (20 s since the last line)"


def test_heartbeat_thread_starts_and_stops():
    with Heartbeat(every=1e9, stream=io.StringIO()) as beat:
        assert beat._thread is not None and beat._thread.is_alive()
    assert not beat._thread.is_alive()


def test_a_run_prints_its_cells_done_and_time_left(tmp_path, monkeypatch):
    """End to end on a tiny model: a line after each computed cell; a resumed run, all skipped, none."""
    from harness.run.runner import RunRequest, Runner

    monkeypatch.setenv("HARNESS_CACHE", str(tmp_path / "cache"))
    lines: list[str] = []
    req = RunRequest(benchmark="synthetic", methods="ga,npo", model="tiny-random", limit=1,
                     results_dir=tmp_path / "runs", save_models=False)
    Runner(req, None, lines.append).run()
    status = [line for line in lines if line.startswith("  run: ")]
    assert len(status) == 4
    for done, line in enumerate(status[:2], start=1):   # retain and target: unlearning not timed yet
        assert re.fullmatch(rf"  run: {done}/4 cells done, \d+ s so far, at least \d+ s left \(no method cell timed yet\)",
                            line), line
    assert re.fullmatch(r"  run: 3/4 cells done, \d+ s so far, about \d+ s left", status[2]), status[2]
    assert re.fullmatch(r"  run: 4/4 cells done in \d+ s", status[-1])
    assert progress.run_status() == ""             # the run's status ends with the run
    lines.clear()
    Runner(req, None, lines.append).run()
    assert [line for line in lines if line.startswith("skip ")] and not [l for l in lines if l.startswith("  run: ")]


def test_the_gguf_conversion_draws_no_bar_into_a_pipe(capsys):
    """tqdm reads TQDM_DISABLE at import, so setting it later drew the bar anyway (issue 25)."""
    from transformers import modeling_gguf_pytorch_utils as gguf_reader

    from harness.runtime.models import _no_bar_in_a_pipe

    with _no_bar_in_a_pipe():
        assert list(gguf_reader.tqdm(range(3), desc="Converting")) == [0, 1, 2]
    assert capsys.readouterr().err == ""
    list(gguf_reader.tqdm(range(3), desc="Converting"))   # restored afterwards: the bar draws again
    assert "Converting" in capsys.readouterr().err


def test_make_run_is_the_quick_job_and_make_results_the_full_one():
    makefile = (REPO / "Makefile").read_text()
    quick = re.search(r"(?m)^DEFAULT_JOB := (.+)$", makefile).group(1).strip()
    full = re.search(r"(?m)^FULL_JOB := (.+)$", makefile).group(1).strip()
    assert "--limit" in quick and "eval.attacks" not in quick
    assert "--limit" not in full and "eval.attacks=relearn-heldout,relearn-same-entity,relearn-openunlearning,int8,int4" in full
    readme = " ".join((REPO / "README.md").read_text().split())   # as read: line breaks are spaces
    assert f"`harness {quick}`" in readme and f"`harness {full}`" in readme   # the README names both exactly
