"""Reliability: SIGKILL at any point loses no finished cell and leaves no half-written record;
the same seed gives the same records."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from harness.cli import main

# No evaluation cache: these tests count engine calls and compare two genuinely computed runs.
QUICK = ["--benchmark", "synthetic", "--model", "tiny-random", "--limit", "2",
         "--set", "finetune.epochs=1", "--set", "train.epochs=2", "--no-save-models", "--no-eval-cache"]

# A plugin that stalls at a chosen point (when STALL_MARKER is set), so the test can kill the run there.
STALLING_PLUGIN = '''
import os, time
from pathlib import Path
from harness.engines.hf import HFEngine
from harness.training.losses import answer_ce
from harness.methods.base import UnlearningMethod
from harness.registry import register_method


def stall():
    Path(os.environ["STALL_MARKER"]).write_text("stalled")
    time.sleep(120)


@register_method()
class Sleepy(UnlearningMethod):
    name = "sleepy"
    description = "GA that stalls in its second step when STALL_AT=train"

    def loss(self, model, batch, ctx):
        if os.environ.get("STALL_AT") == "train" and ctx.step == 1:
            stall()
        return -answer_ce(model, batch.forget), {}


_original = HFEngine.logprobs
_calls = [0]


def logprobs(self, requests, progress=None):
    _calls[0] += 1
    if os.environ.get("STALL_AT") == "eval" and _calls[0] == int(os.environ["STALL_CALL"]):
        stall()
    return _original(self, requests, progress)


HFEngine.logprobs = logprobs
'''


def run_and_kill(results: Path, plugin: Path, methods: str, stall_at: str, marker: Path, stall_call: int = 0):
    env = {**os.environ, "STALL_AT": stall_at, "STALL_MARKER": str(marker), "STALL_CALL": str(stall_call)}
    cmd = [sys.executable, "-m", "harness.cli", "run", "--plugin", str(plugin), "--methods", methods,
           "--results-dir", str(results), *QUICK]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    deadline = time.time() + 240
    while not marker.exists():
        assert proc.poll() is None, proc.stdout.read().decode()
        assert time.time() < deadline, "the run never reached the stall point"
        time.sleep(0.2)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    return proc.returncode


def cells(results: Path) -> dict[str, dict]:
    out = {}
    for p in results.glob("synthetic/tiny-random/*/*"):
        assert p.suffix == ".json" or p.name.endswith((".tmp", ".claim")), p   # a killed run leaves its claim
        if p.suffix == ".json":
            out[p.parent.name] = json.loads(p.read_text())  # every record on disk parses
    return out


def finish(results: Path, plugin: Path, methods: str, capsys) -> str:
    assert main(["run", "--plugin", str(plugin), "--methods", methods, "--results-dir", str(results), *QUICK]) == 0
    return capsys.readouterr().out


def test_sigkill_during_training_keeps_finished_cells_and_resume_completes(tmp_path, capsys):
    plugin = tmp_path / "stalling.py"
    plugin.write_text(STALLING_PLUGIN)
    results = tmp_path / "results"
    assert run_and_kill(results, plugin, "ga,sleepy", "train", tmp_path / "marker") == -signal.SIGKILL
    before = cells(results)
    assert set(before) == {"retain", "target", "ga"} and all(r["status"] == "ok" for r in before.values())
    out = finish(results, plugin, "ga,sleepy", capsys)
    assert out.count("skip synthetic/tiny-random/") == 3
    after = cells(results)
    assert set(after) == {"retain", "target", "ga", "sleepy"} and after["sleepy"]["status"] == "ok"
    assert after["ga"] == before["ga"]
    assert not list(results.glob("**/*.claim")), "the resumed run took over the dead run's claim and released it"


def test_sigkill_during_evaluation_keeps_finished_cells_and_resume_completes(tmp_path, capsys):
    plugin = tmp_path / "stalling.py"
    plugin.write_text(STALLING_PLUGIN)
    results = tmp_path / "results"
    # log-prob stages run in order: retain (1), target (2), ga (3), graddiff (4): stall in graddiff's.
    run_and_kill(results, plugin, "ga,graddiff", "eval", tmp_path / "marker", stall_call=4)
    before = cells(results)
    assert set(before) == {"retain", "target", "ga"}
    out = finish(results, plugin, "ga,graddiff", capsys)
    assert out.count("skip synthetic/tiny-random/") == 3
    assert set(cells(results)) == {"retain", "target", "ga", "graddiff"}


def comparable(record: dict) -> dict:
    volatile = {"timings", "path", "versions", "commit"}
    out = {k: v for k, v in record.items() if k not in volatile}
    if out.get("training"):
        out["training"] = {k: v for k, v in out["training"].items() if k != "seconds"}
    return out


def test_same_seed_gives_identical_records(tmp_path, capsys):
    first, second = tmp_path / "a", tmp_path / "b"
    for results in (first, second):
        assert main(["run", "--methods", "ga,npo", "--results-dir", str(results), *QUICK, "--seed", "7"]) == 0
    a, b = cells(first), cells(second)
    assert set(a) == {"retain", "target", "ga", "npo"}
    for name in a:
        assert comparable(a[name]) == comparable(b[name]), name
    assert a["ga"]["per_sample"]["qa_forget"][0]["generation"] == b["ga"]["per_sample"]["qa_forget"][0]["generation"]
