"""Many cells at once: hand the cells of a run to an existing scheduler (Ray, or SLURM through submitit).

``harness run ... --executor local`` (the default) runs cells one after another in this process.
With ``ray`` or ``slurm`` this process becomes a driver:

1. it resolves and checks the plan (as a local run does) and writes it to
   ``<results>/.plans/<run>.json`` so ``harness status`` can say which cells are queued;
2. it runs the retain row as the first task: that task also prepares (or finds cached) the target
   and retain models, so they are built once, before the cells fan out;
3. it submits every other cell (target row, each method, each swept point of a method) as its own task
   (the target row first when the selection rule compares with it): one GPU each where the
   cluster has GPUs, one CPU otherwise. Each task builds the same ``Runner`` from the same request
   and runs ``Runner.run_cell``: the cell claims its record (harness/run/claims.py), writes it
   atomically into the shared results folder and releases the claim;
4. while tasks run it logs progress (queued / running where / done / failed) every few seconds,
   and at the end renders the leaderboard from the records.

Tasks need the results folder, ``$HARNESS_CACHE`` and the data on a file system every worker sees;
the driver passes its ``HARNESS_*`` variables on to them.
"""
from __future__ import annotations

import dataclasses
import os
import socket
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from harness.errors import HarnessError

EXECUTORS = ("local", "ray", "slurm")


@dataclass
class ExecutorOptions:
    name: str = "local"
    workers: int = 0                 # most cells at once (0: as many as the scheduler gives)
    ray_address: str | None = None   # an existing Ray cluster ("auto", "ray://host:10001"); None: start a local one
    slurm_folder: Path | None = None  # submitit's logs and pickles (default <results>/.submitit)
    slurm_partition: str | None = None
    slurm_time_min: int = 240
    slurm_gpus: int = 1
    slurm_cluster: str | None = None  # None: SLURM if available; "local"/"debug": submitit's local executors
    poll_s: float = 10.0             # seconds between progress lines


def check_available(name: str) -> None:
    """A clear error, before any work, when the executor's package is missing."""
    if name not in EXECUTORS:
        raise HarnessError(f"--executor must be one of {', '.join(EXECUTORS)}, got '{name}'.")
    package = {"ray": "ray", "slurm": "submitit"}.get(name)
    if package:
        try:
            __import__(package)
        except ImportError:
            raise HarnessError(
                f"--executor {name} needs the '{package}' package: pip install 'unlearning-harness[{name}]'."
            ) from None


# --- what every task runs ------------------------------------------------------------------------
def execute_cell(request: dict, cell: str, plugins: list[str], env: dict[str, str], worker: str) -> dict:
    """Run one cell in a worker; returns a small summary (the record itself is on disk)."""
    os.environ.update(env)
    os.environ["HARNESS_WORKER"] = worker
    from harness.registry import load_plugins
    from harness.runtime.quiet import quiet_libraries
    from harness.run.runner import RunRequest, Runner

    quiet_libraries()
    load_plugins(plugins)
    req = RunRequest(**{**request, **{k: Path(v) for k, v in request.items() if k in _PATH_FIELDS and v is not None}})
    runner = Runner(req, None, lambda msg: print(f"[{cell}] {msg}", flush=True))
    summary = runner.run_cell(cell)
    record = summary.records[-1] if summary.records else None
    return {
        "cell": cell, "host": socket.gethostname(), "pid": os.getpid(),
        "status": record.get("status") if record else "elsewhere",
        "failed": summary.failed, "elsewhere": summary.elsewhere,
    }


_PATH_FIELDS = ("data_dir", "results_dir", "models_dir")


def _request_dict(req) -> dict:
    return {k: (str(v) if isinstance(v, Path) else v) for k, v in dataclasses.asdict(req).items()}


def _forwarded_env() -> dict[str, str]:
    keep = ("HARNESS_", "HF_", "TRANSFORMERS_", "TOKENIZERS_")
    return {k: v for k, v in os.environ.items() if k.startswith(keep)}


# --- the driver ----------------------------------------------------------------------------------
def run_distributed(runner, opts: ExecutorOptions, plugins: list[str], log=print):
    """Run ``runner``'s plan on Ray or SLURM; returns a RunSummary like ``Runner.run``."""
    from harness.run.runner import RunSummary, render_results
    from harness.run.status import write_plan

    names = runner.cell_names()
    paths = {name: runner.cell_path(name) for name in names}
    plan_file = write_plan(runner.results_dir, {n: p for n, p in paths.items()}, opts.name)
    log(f"{opts.name}: {len(names)} cells ({', '.join(names)}); plan {plan_file}; see `harness status --results-dir {runner.results_dir}`")
    submit = _ray_submitter(opts, log) if opts.name == "ray" else _slurm_submitter(opts, runner.results_dir, log)
    args = (_request_dict(runner.req), plugins, _forwarded_env())
    first = [n for n in names if n == "retain"]       # prepares the models and gives the references
    # a rule that compares with the target's scores (utility_preserving), and a relearning grid whose points
    # are judged on the attacked target (attack.relearn_lr_grid), need its row before the methods
    target_first = runner.rule.needs_target or bool(runner.attacks and runner.attacks.needs_target_first)
    second = [n for n in names if n == "target"] if target_first else []
    rest = [n for n in names if n not in first and n not in second]
    results: list[dict] = []
    for stage in (first, second, rest):
        if stage:
            results += submit.run(stage, args, lambda: _progress_line(runner.results_dir, paths, log), opts.poll_s)
    summary = RunSummary()
    from harness.run.results import read_record

    for name in names:
        record = read_record(paths[name])
        if record is not None:
            summary.records.append(record)
    for r in results:
        summary.failed += r.get("failed", [])
        summary.elsewhere += r.get("elsewhere", [])
    runner.record_sweep_choices()   # the rule across each method's swept points, from the records just written
    summary.leaderboard = render_results(runner.results_dir)
    _progress_line(runner.results_dir, paths, log)
    return summary


def _progress_line(results_dir: Path, paths: dict[str, Path], log) -> None:
    from harness.run.status import cell_states, summary_line

    log(summary_line(cell_states(paths)))


class _RaySubmitter:
    def __init__(self, opts: ExecutorOptions, log):
        import ray

        self.ray = ray
        if not ray.is_initialized():
            kwargs: dict[str, Any] = {"include_dashboard": False, "log_to_driver": True}
            if opts.ray_address:
                kwargs["address"] = opts.ray_address
            else:  # a local cluster: workers import the same harness as this driver
                kwargs["num_cpus"] = opts.workers or os.cpu_count()
                source = str(Path(__file__).resolve().parent.parent)
                path = os.pathsep.join(p for p in (source, os.environ.get("PYTHONPATH")) if p)
                kwargs["runtime_env"] = {"env_vars": {"PYTHONPATH": path}}
            ray.init(**kwargs)
        self.gpus = 1 if ray.cluster_resources().get("GPU", 0) >= 1 else 0
        log(f"ray: cluster with {ray.cluster_resources().get('CPU', 0):g} CPUs, "
            f"{ray.cluster_resources().get('GPU', 0):g} GPUs; each cell gets {'1 GPU' if self.gpus else '1 CPU'}")
        self.task = ray.remote(num_cpus=1, num_gpus=self.gpus, max_retries=0)(execute_cell)

    def run(self, cells, args, progress: Callable[[], None], poll_s: float) -> list[dict]:
        request, plugins, env = args
        futures = {self.task.remote(request, c, plugins, env, f"ray task {c}"): c for c in cells}
        out, pending, last = [], list(futures), time.monotonic()
        while pending:
            done, pending = self.ray.wait(pending, num_returns=1, timeout=poll_s)
            for ref in done:
                try:
                    out.append(self.ray.get(ref))
                except Exception as exc:  # a task that died (worker lost, import error): its cell stays unfinished
                    out.append({"cell": futures[ref], "failed": [f"{futures[ref]}: task failed: {exc}"]})
            if time.monotonic() - last >= poll_s or not pending:
                progress()
                last = time.monotonic()
        return out


def _ray_submitter(opts, log):
    return _RaySubmitter(opts, log)


class _SlurmSubmitter:
    def __init__(self, opts: ExecutorOptions, results_dir: Path, log):
        import submitit

        folder = opts.slurm_folder or Path(results_dir) / ".submitit"
        self.executor = submitit.AutoExecutor(folder=str(folder) + "/%j", cluster=opts.slurm_cluster)
        params: dict[str, Any] = {"timeout_min": opts.slurm_time_min, "name": "harness-cell",
                                  "gpus_per_node": opts.slurm_gpus, "cpus_per_task": 1 if not opts.slurm_gpus else 8}
        if self.executor.cluster == "slurm":
            if opts.slurm_partition:
                params["slurm_partition"] = opts.slurm_partition
            if opts.workers:
                params["slurm_array_parallelism"] = opts.workers
        else:  # submitit's local executors: processes on this machine, no GPUs asked for
            params.update(gpus_per_node=0, cpus_per_task=1)
        self.executor.update_parameters(**params)
        log(f"slurm: submitit {self.executor.cluster} executor, job folder {folder}")

    def run(self, cells, args, progress, poll_s: float) -> list[dict]:
        request, plugins, env = args
        with self.executor.batch():  # one job array, one cell per task
            jobs = {c: self.executor.submit(execute_cell, request, c, plugins, env, f"slurm task {c}") for c in cells}
        out = []
        while True:
            if all(job.done() for job in jobs.values()):
                break
            progress()
            time.sleep(poll_s)
        for cell, job in jobs.items():
            try:
                out.append(job.result())
            except Exception as exc:
                out.append({"cell": cell, "failed": [f"{cell}: job {job.job_id} failed: {str(exc).splitlines()[0]}"]})
        return out


def _slurm_submitter(opts, results_dir, log):
    return _SlurmSubmitter(opts, results_dir, log)
