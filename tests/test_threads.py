"""The thread count: an explicit setting, then OMP_NUM_THREADS, then free cores; recorded."""
import json

import torch

from harness.runtime import threads
from harness.cli import main


def test_explicit_then_environment_then_free_cores(monkeypatch, tmp_path):
    assert threads.choose(3, {"OMP_NUM_THREADS": "1"}) == (3, "--threads")
    assert threads.choose(None, {"OMP_NUM_THREADS": "2"}) == (2, "OMP_NUM_THREADS")
    monkeypatch.setattr(threads, "usable_cores", lambda: (4, "4 cores available to this process"))
    assert threads.choose(None, {}, load=0.2)[0] == 4
    assert threads.choose(None, {}, load=2.6)[0] == 1            # three cores busy elsewhere
    assert threads.choose(None, {}, load=9.0)[0] == 1            # never below one
    assert "load average 2.6" in threads.choose(None, {}, load=2.6)[1]


def test_cgroup_quota_caps_the_cores(tmp_path):
    (tmp_path / "cpu.max").write_text("150000 100000\n")
    assert threads.cgroup_cpu_quota(tmp_path) == 1.5
    (tmp_path / "cpu.max").write_text("max 100000\n")
    assert threads.cgroup_cpu_quota(tmp_path) is None


def test_every_record_says_how_many_threads_and_why(tmp_path, monkeypatch):
    previous = torch.get_num_threads()
    try:
        assert main(["eval", "--benchmark", "synthetic", "--model", "tiny-random", "--limit", "2", "--threads", "1",
                     "--results-dir", str(tmp_path), "--no-eval-cache"]) == 0
    finally:
        torch.set_num_threads(previous)
    record = json.loads(next(tmp_path.rglob("*.json")).read_text())
    assert record["threads"] == {"threads": 1, "why": "--threads"}
    runtime = record["eval_runtime"]
    assert runtime["threads"] == 1 and runtime["memory_budget_gb"] == 1.5 and runtime["position_chunk"] > 0
    assert "memory_budget_gb" not in record["config"]["eval"]   # speed and memory only: not the cell's identity


def test_negative_threads_or_memory_budget_is_a_clear_error(capsys, tmp_path):
    base = ["eval", "--benchmark", "synthetic", "--model", "tiny-random", "--limit", "1", "--results-dir", str(tmp_path)]
    assert main(base + ["--threads", "-2"]) == 2
    assert "--threads must be at least 1, got -2" in capsys.readouterr().err
    assert main(base + ["--set", "eval.memory_budget_gb=-1"]) == 2
    assert "eval.memory_budget_gb must be 0" in capsys.readouterr().err
