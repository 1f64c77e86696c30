"""``executors.run_distributed`` by name: the driver's plan, its two stages, what it collects.

The scheduler is replaced by one that runs each task's ``execute_cell`` here, one after another,
so what is checked is the driver's own logic: the retain row alone first (it prepares the models
and gives the references), then every other cell; the plan names each cell's record path, which
is where the task writes it; the summary holds the records in plan order and every task's failures.
The real schedulers (Ray, submitit's local executor) run the same driver with 2 worker processes in
tests/test_scale_out.py.
"""
from __future__ import annotations

import json

import pytest
import torch

from harness.run import executors
from harness.run.executors import ExecutorOptions, execute_cell, run_distributed
from harness.run.runner import RunRequest, Runner


class InProcess:
    """A scheduler whose tasks run here: it records the stages and what each task was given."""

    def __init__(self, worker_threads: int | None = None, fail: dict[str, dict] | None = None):
        self.stages: list[list[str]] = []
        self.requests: list[dict] = []
        self.worker_threads, self.fail = worker_threads, fail or {}

    def run(self, cells, args, progress, poll_s):
        request, plugins, env = args
        self.stages.append(list(cells))
        self.requests.append(request)
        out = []
        for cell in cells:
            if cell in self.fail:
                out.append({"cell": cell, **self.fail[cell]})
                continue
            driver = torch.get_num_threads()
            if self.worker_threads:   # a worker process whose own default differs from the driver's choice
                torch.set_num_threads(self.worker_threads)
            try:
                out.append(execute_cell(request, cell, plugins, env, f"test task {cell}"))
            finally:
                torch.set_num_threads(driver)
        progress()
        return out


def _runner(results, methods="ga"):
    req = RunRequest(benchmark="synthetic", methods=methods, model="tiny-random", limit=2, results_dir=results,
                     overrides={"finetune.epochs": "1", "train.epochs": "1"}, save_models=False, eval_cache=False,
                     threads=torch.get_num_threads())
    return Runner(req, None, lambda *_: None)


@pytest.fixture
def scheduler(monkeypatch):
    monkeypatch.setenv("HARNESS_WORKER", "")   # execute_cell sets it for its process; keep this one's
    made = {}

    def use(**kwargs):
        made["s"] = InProcess(**kwargs)
        monkeypatch.setattr(executors, "_slurm_submitter", lambda opts, results_dir, log: made["s"])
        return made["s"]
    return use


def test_retain_first_then_the_rest_each_record_where_the_plan_says(tmp_path, scheduler):
    sched = scheduler(worker_threads=2)
    results = tmp_path / "r"
    runner = _runner(results)
    lines: list[str] = []
    summary = run_distributed(runner, ExecutorOptions(name="slurm", poll_s=0.0), [], log=lines.append)
    assert sched.stages == [["retain"], ["target", "ga"]]
    plans = list((results / ".plans").glob("*.json"))
    assert len(plans) == 1
    plan = json.loads(plans[0].read_text())
    assert plan["executor"] == "slurm" and list(plan["cells"]) == ["retain", "target", "ga"]
    for name, rel in plan["cells"].items():
        assert rel.startswith(f"synthetic/tiny-random/{name}/") and rel.endswith("-seed0.json")
        assert rel == runner.cell_path(name).relative_to(results).as_posix()
    # the task computed with the driver's thread count, whatever its own default: same cell, same path
    assert all(r["threads"] == 1 for r in sched.requests)
    assert [r["method"] for r in summary.records] == ["retain", "target", "ga"]
    for record, rel in zip(summary.records, plan["cells"].values()):
        assert record["status"] == "ok" and record["threads"]["threads"] == 1
        assert json.loads((results / rel).read_text())["config_id"] == record["config_id"]
    assert summary.failed == [] and summary.elsewhere == []
    assert summary.leaderboard == results / "LEADERBOARD.md" and "[GA](synthetic/tiny-random/ga/" in summary.leaderboard.read_text()
    assert lines[0].startswith("slurm: 3 cells (retain, target, ga); plan ")
    assert lines[-1] == "progress: 0 queued, 0 running, 3 done, 0 failed"


def test_failures_and_cells_running_elsewhere_are_collected_from_every_task(tmp_path, scheduler):
    """Tasks that report a failure or a cell held elsewhere write nothing: the summary says so, no record is made up."""
    sched = scheduler(fail={"retain": {"failed": ["retain: task failed: worker lost"]},
                            "target": {"elsewhere": ["target: host-b:12 (ray task target)"]},
                            "ga": {"failed": ["ga: job 7 failed: boom"]}})
    results = tmp_path / "r"
    lines: list[str] = []
    summary = run_distributed(_runner(results), ExecutorOptions(name="slurm", poll_s=0.0), [], log=lines.append)
    assert sched.stages == [["retain"], ["target", "ga"]]
    assert summary.records == []
    assert summary.failed == ["retain: task failed: worker lost", "ga: job 7 failed: boom"]
    assert summary.elsewhere == ["target: host-b:12 (ray task target)"]
    assert lines[-1] == "progress: 3 queued, 0 running, 0 done, 0 failed"


def test_a_run_without_a_retain_row_submits_one_stage(tmp_path, scheduler):
    """A given target and no retain model: no retain cell, so everything fans out at once."""
    sched = scheduler(fail={"target": {}, "ga": {}})
    req = RunRequest(benchmark="synthetic", methods="ga", model="tiny-random", target="tiny-random", limit=2,
                     results_dir=tmp_path / "r", save_models=False, eval_cache=False)
    summary = run_distributed(Runner(req, None, lambda *_: None), ExecutorOptions(name="slurm", poll_s=0.0), [],
                              log=lambda *_: None)
    assert sched.stages == [["target", "ga"]] and summary.records == [] and summary.failed == []
