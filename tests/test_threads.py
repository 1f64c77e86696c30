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


def test_a_cell_made_with_another_thread_count_is_computed_anew(tmp_path, capsys, monkeypatch):
    """1 and 2 threads round log-probs differently (README, reproduction check), so the count is part
    of a CPU cell: the same run at --threads 2 re-prepares, re-trains and re-scores instead of reusing
    the --threads 1 records, models or cached scores; at --threads 1 again everything is reused."""
    from harness.run.results import config_id

    monkeypatch.setenv("HARNESS_CACHE", str(tmp_path / "cache"))   # its own: no prepared model of another test
    results = tmp_path / "results"
    quick = ["run", "--methods", "ga", "--benchmark", "synthetic", "--model", "tiny-random", "--limit", "2",
             "--set", "finetune.epochs=1", "--set", "train.epochs=1", "--no-save-models", "--results-dir", str(results)]
    previous = torch.get_num_threads()

    def run(count: int) -> str:
        try:
            assert main([*quick, "--threads", str(count)]) == 0
        finally:
            torch.set_num_threads(previous)
        return capsys.readouterr().out

    def records() -> dict[tuple[str, int], dict]:
        found = [json.loads(p.read_text()) for p in results.glob("synthetic/tiny-random/*/*.json")]
        return {(r["method"], r["config"]["cpu_threads"]): r for r in found}

    first = run(1)
    assert first.count("done synthetic/tiny-random/") == 3 and "prepare: fine-tuning the target model" in first
    second = run(2)
    assert "skip synthetic/" not in second and second.count("done synthetic/tiny-random/") == 3
    assert "prepare: fine-tuning the target model" in second and "prepare: reusing" not in second
    made = records()
    assert sorted(made) == [(m, n) for m in ("ga", "retain", "target") for n in (1, 2)]
    for method in ("ga", "retain", "target"):
        one, two = made[(method, 1)], made[(method, 2)]
        assert one["threads"]["threads"] == 1 and two["threads"]["threads"] == 2
        assert one["config_id"] != two["config_id"]
        assert one["config_id"] == config_id(one["config"]) and two["config_id"] == config_id(two["config"])
        assert {k: v for k, v in one["config"].items() if k != "cpu_threads"} == \
            {k: v for k, v in two["config"].items() if k != "cpu_threads"}   # the count is the only difference
        assert one["settings"].endswith(", threads=1") and two["settings"].endswith(", threads=2")
        assert two["eval_counts"]["cache_hits"] == 0    # scored anew, not read from the threads-1 cache entries
    assert made[("target", 1)]["settings"] == "evaluation only, threads=1"
    board = (results / "LEADERBOARD.md").read_text()
    assert "threads=1" in board and "threads=2" in board   # the Settings column tells the two rows apart
    before = {p: p.stat().st_mtime_ns for p in results.glob("synthetic/**/*.json")}
    third = run(1)
    assert third.count("skip synthetic/tiny-random/") == 3 and "done synthetic/" not in third
    assert "prepare:" not in third
    assert {p: p.stat().st_mtime_ns for p in results.glob("synthetic/**/*.json")} == before


def test_the_thread_count_is_part_of_a_cpu_key_only():
    previous = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        assert threads.identity(torch.device("cpu")) == {"cpu_threads": 2}
        assert threads.identity(None) == {"cpu_threads": 2} and threads.identity("cpu") == {"cpu_threads": 2}
        assert threads.identity(torch.device("cuda", 1)) == {} and threads.identity("cuda:0") == {}
        assert threads.identity(torch.device("mps")) == {}
    finally:
        torch.set_num_threads(previous)
