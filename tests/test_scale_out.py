"""Beyond one process: one cell on two processes (gloo, CPU) gives the single-process result, each rank
sees other examples; cells on Ray and on submitit's local executor give the serial run's records;
two concurrent runs on one results folder compute each cell once (claims)."""
from __future__ import annotations

import importlib.util
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from harness import distributed
from harness.models import build_tiny_random

REPO = Path(__file__).resolve().parent.parent
pytest.importorskip("accelerate")


def _env() -> dict[str, str]:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")])
    return env


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _seen(folder: Path, rank: int) -> dict:
    return json.loads((folder / f"seen-rank{rank}.json").read_text())


@pytest.fixture(scope="module")
def two_and_one(tmp_path_factory):
    """The worker's three trainings under torchrun with 2 processes, and in one plain process."""
    two, one = tmp_path_factory.mktemp("two"), tmp_path_factory.mktemp("one")
    worker = str(REPO / "tests" / "distributed_worker.py")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
           "--master_port", str(_free_port()), worker, str(two)]
    proc = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    spec = importlib.util.spec_from_file_location("distributed_worker", worker)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.run_all(one)   # the single-process reference, in this (plain) process
    return two, one


@pytest.mark.parametrize("method", ["ga", "npo", "graddiff"])
def test_two_processes_train_the_same_weights(two_and_one, method):
    two, one = two_and_one
    w2, w1 = torch.load(two / "weights.pt")[method], torch.load(one / "weights.pt")[method]
    start = build_tiny_random()[0].float().state_dict()
    moved = max((w1[k] - start[k]).abs().max().item() for k in w1)
    assert moved > 1e-4, "training must change the weights for the comparison to mean anything"
    diff = max((w2[k] - w1[k]).abs().max().item() for k in w1)
    assert diff <= 1e-5, f"{method}: max |w(2 processes) - w(1 process)| = {diff}"
    assert _seen(two, 0)[method]["losses"] == pytest.approx(_seen(one, 0)[method]["losses"], abs=1e-5)


@pytest.mark.parametrize("method", ["ga", "npo", "graddiff"])
def test_each_rank_sees_other_examples_and_together_the_single_order(two_and_one, method):
    two, one = two_and_one
    r0, r1, single = _seen(two, 0)[method], _seen(two, 1)[method], _seen(one, 0)[method]
    assert r0["forget"] and r1["forget"]
    # 10 items, 3 steps of 4, 4, 2 items in micro-batches of 2: rank 0 gets micro-batches 0 and 2 of
    # steps 1-2 (none in step 2's second half) and the only one of step 3.
    assert len(r0["forget"]) == 6 and len(r1["forget"]) == 4
    assert sorted(r0["forget"] + r1["forget"]) == sorted(single["forget"])
    interleaved = []   # micro-batch j of a step is rank j % 2's: rebuild the single order from the shards
    a, b = iter(r0["forget"]), iter(r1["forget"])
    for size_per_rank in ((2, 2), (2, 2), (2, 0)):
        interleaved += [next(a) for _ in range(size_per_rank[0])] + [next(b) for _ in range(size_per_rank[1])]
    assert interleaved == single["forget"]
    if method == "graddiff":  # retain pairing drawn once, globally: the shards are its parts
        assert r0["retain"] and r1["retain"] and r0["retain"] != r1["retain"]
        assert sorted(map(str, r0["retain"] + r1["retain"])) == sorted(map(str, single["retain"]))


def test_a_plain_process_is_single_and_untouched(tiny):
    assert distributed.launched_world_size() == 1
    ranks = distributed.current(torch.device("cpu"))
    assert (ranks.world_size, ranks.rank, ranks.is_main) == (1, 0, True)
    assert ranks.my_share([3, 1, 2]) == [3, 1, 2]
    assert ranks.sum_step(1.5, {"a": 2.0}, True) == (1.5, {"a": 2.0}, True)


def test_fsdp_launch_is_refused_with_the_reason(monkeypatch):
    from harness.errors import HarnessError

    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")
    with pytest.raises(HarnessError, match="FSDP is not supported yet.*--multi_gpu"):
        distributed.current(torch.device("cpu"))


RUN = ["run", "--methods", "ga,npo", "--benchmark", "synthetic", "--model", "tiny-random", "--limit", "4",
       "--set", "train.max_steps=3", "--set", "train.global_batch=4", "--set", "train.micro_batch=1"]


@pytest.fixture(scope="module")
def serial(tmp_path_factory):
    """The plain single-process run: 4 cells (retain, target, GA, NPO); records, weights and its cache."""
    root = tmp_path_factory.mktemp("serial")
    env = {**_env(), "HARNESS_CACHE": str(root / "cache")}
    one = subprocess.run([sys.executable, "-m", "harness.cli"] + RUN + ["--results-dir", str(root / "r"),
                         "--models-dir", str(root / "m")], env=env, capture_output=True, text=True, timeout=900, cwd=REPO)
    assert one.returncode == 0, one.stderr[-3000:]
    assert len(list((root / "r").glob("*/*/*/*.json"))) == 4
    return root


def assert_same_records(serial_dir: Path, other_dir: Path) -> None:
    """Every serial record has its twin (same cell id) with the same scores within 1e-4, and the same leaderboard."""
    for path in sorted(serial_dir.glob("*/*/*/*.json")):
        r1 = json.loads(path.read_text())
        r2 = json.loads((other_dir / path.relative_to(serial_dir)).read_text())
        assert r2["status"] == r1["status"] == "ok"
        for key, value in r1["aggregates"].items():
            if isinstance(value, (int, float)):
                assert r2["aggregates"][key] == pytest.approx(value, abs=1e-4), (path.name, key)
    table = lambda d: [line.rsplit("|", 2)[0] for line in (d / "LEADERBOARD.md").read_text().splitlines() if line.startswith("|")]  # noqa: E731
    assert table(other_dir) == table(serial_dir), "same leaderboard numbers (the commit column may differ)"
    assert not list(other_dir.glob("**/*.claim")), "claims are removed once records are written"


def test_accelerate_launch_gives_the_single_process_records_and_weights(tmp_path, serial):
    """`accelerate launch -m harness.cli run` with 2 processes = a plain run: scores 1e-4, weights 1e-5."""
    from safetensors.torch import load_file

    env = {**_env(), "HARNESS_CACHE": str(tmp_path / "cache2")}
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
              "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
              "--main_process_port", str(_free_port()), "-m", "harness.cli"]
    two = subprocess.run(launch + RUN + ["--results-dir", str(tmp_path / "r2"), "--models-dir", str(tmp_path / "m2")],
                         env=env, capture_output=True, text=True, timeout=900, cwd=REPO)
    assert two.returncode == 0, two.stderr[-3000:]
    assert two.stdout.count("leaderboard:") == 1, "only the main process reports and renders"
    assert_same_records(serial / "r", tmp_path / "r2")
    for path in sorted((serial / "r").glob("*/*/*/*.json")):
        r1 = json.loads(path.read_text())
        r2 = json.loads((tmp_path / "r2" / path.relative_to(serial / "r")).read_text())
        if r1["kind"] == "method":
            assert r2["processes"] == 2 and "processes" not in r1
            w1 = load_file(next((serial / "m").glob(f"**/{r1['method']}/*/model.safetensors")))
            w2 = load_file(next((tmp_path / "m2").glob(f"**/{r1['method']}/*/model.safetensors")))
            assert max((w1[k] - w2[k]).abs().max().item() for k in w1) <= 1e-5


def _executor_run(tmp_path, serial, *executor_args) -> subprocess.CompletedProcess:
    """A run of the same 4 cells through an executor; prepared models from the serial run's cache, no
    evaluation cache (every score is computed afresh by the workers)."""
    env = {**_env(), "HARNESS_CACHE": str(serial / "cache")}
    proc = subprocess.run([sys.executable, "-m", "harness.cli"] + RUN + [
        "--results-dir", str(tmp_path / "r"), "--no-save-models", "--no-eval-cache", "--poll-s", "1", *executor_args],
        env=env, capture_output=True, text=True, timeout=900, cwd=REPO)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    assert "progress: 0 queued, 0 running, 4 done, 0 failed" in proc.stdout
    return proc


def test_ray_with_two_workers_gives_the_serial_records_and_leaderboard(tmp_path, serial):
    pytest.importorskip("ray")
    proc = _executor_run(tmp_path, serial, "--executor", "ray", "--workers", "2")
    assert "each cell gets 1 CPU" in proc.stdout
    assert_same_records(serial / "r", tmp_path / "r")
    status = subprocess.run([sys.executable, "-m", "harness.cli", "status", "--results-dir", str(tmp_path / "r")],
                            env=_env(), capture_output=True, text=True, timeout=300, cwd=REPO)
    assert "(ray): 0 queued, 0 running, 4 done, 0 failed" in status.stdout


def test_submitit_local_executor_gives_the_serial_records_and_leaderboard(tmp_path, serial):
    pytest.importorskip("submitit")
    proc = _executor_run(tmp_path, serial, "--executor", "slurm", "--slurm-cluster", "local")
    assert "slurm: submitit local executor" in proc.stdout
    assert_same_records(serial / "r", tmp_path / "r")


def test_two_concurrent_runs_on_one_results_folder_compute_each_cell_once(tmp_path):
    """Started together, with no prepared models yet: each cell (and each prepared model) is built once."""
    env = {**_env(), "HARNESS_CACHE": str(tmp_path / "cache")}
    cmd = [sys.executable, "-m", "harness.cli"] + RUN + ["--results-dir", str(tmp_path / "r"), "--no-save-models"]
    procs = [subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=REPO)
             for _ in range(2)]
    outs = [p.communicate(timeout=900)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    both = "\n".join(outs)
    for cell in ("retain", "target", "ga", "npo"):
        assert both.count(f"done synthetic/tiny-random/{cell} seed 0:") == 1, (cell, both)
    for role in ("target", "retain"):
        assert both.count(f"prepare: fine-tuning the {role} model") == 1, both
    assert len(list((tmp_path / "r").glob("*/*/*/*.json"))) == 4
    assert not list((tmp_path / "r").glob("**/*.claim"))


# --- claims: unit tests ----------------------------------------------------------------------------
def test_a_live_claim_keeps_others_out_and_release_frees_the_cell(tmp_path):
    from harness.claims import Claims, claim_path

    record = tmp_path / "cell-seed0.json"
    first, second = Claims(worker="w1"), Claims(worker="w2")
    assert first.try_claim(record) is None
    owner = second.try_claim(record)
    assert owner is not None and owner["worker"] == "w1" and owner["pid"] == os.getpid()
    first.release(record)
    assert not claim_path(record).exists()
    assert second.try_claim(record) is None
    second.release_all()


def test_a_stale_claim_is_taken_over(tmp_path, monkeypatch):
    from harness.claims import Claims, claim_path, read_claim

    record = tmp_path / "cell-seed0.json"
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    claim_path(record).write_text(json.dumps({"host": socket.gethostname(), "pid": int(dead.stdout), "token": "old"}))
    claims = Claims()
    assert claims.try_claim(record) is None, "a claim whose process is gone on this host is stale"
    assert read_claim(claim_path(record))["pid"] == os.getpid()
    claims.release(record)
    # another host's claim: stale once its heartbeat (mtime) is older than HARNESS_CLAIM_STALE_S
    claim_path(record).write_text(json.dumps({"host": "elsewhere", "pid": 1, "token": "remote"}))
    assert claims.try_claim(record)["host"] == "elsewhere"
    monkeypatch.setenv("HARNESS_CLAIM_STALE_S", "0")
    os.utime(claim_path(record), (0, 0))
    assert claims.try_claim(record) is None
    claims.release(record)


def test_status_reads_queued_running_done_failed(tmp_path):
    from harness.claims import Claims
    from harness.results import write_record
    from harness.status import cell_states, summary_line

    paths = {n: tmp_path / "b" / "m" / n / "x-seed0.json" for n in ("a", "b", "c", "d")}
    write_record(paths["a"], {"schema": 1, "status": "ok"})
    write_record(paths["b"], {"schema": 1, "status": "failed", "error": "ValueError: boom"})
    claims = Claims(worker="gpu-7")
    assert claims.try_claim(paths["c"]) is None
    states = cell_states(paths)
    assert states["a"] == ("done", "") and states["b"] == ("failed", "ValueError: boom")
    assert states["c"][0] == "running" and f"{socket.gethostname()}:{os.getpid()} (gpu-7)" in states["c"][1]
    assert states["d"] == ("queued", "")
    assert summary_line(states).startswith("progress: 1 queued, 1 running, 1 done, 1 failed (c on ")
    claims.release_all()
