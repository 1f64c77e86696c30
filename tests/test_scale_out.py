"""Beyond one process: one cell on two processes (gloo, CPU), data-parallel or FSDP-sharded, gives the
single-process result, each rank sees other examples (and under FSDP holds another shard); cells on
Ray and on submitit's local executor give the serial run's records; two concurrent runs on one
results folder compute each cell once (claims)."""
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

from harness.training import distributed
from harness.runtime.models import build_tiny_random

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


WORKER = str(REPO / "tests" / "distributed_worker.py")


def _torchrun_worker(out: Path, **env) -> None:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
           "--master_port", str(_free_port()), WORKER, str(out)]
    proc = subprocess.run(cmd, env={**_env(), **env}, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]


@pytest.fixture(scope="module")
def two_and_one(tmp_path_factory):
    """The worker's three trainings under torchrun with 2 processes, and in one plain process."""
    two, one = tmp_path_factory.mktemp("two"), tmp_path_factory.mktemp("one")
    worker = WORKER
    _torchrun_worker(two)
    spec = importlib.util.spec_from_file_location("distributed_worker", worker)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.run_all(one)   # the single-process reference, in this (plain) process
    return two, one


@pytest.fixture(scope="module")
def fsdp_and_one(tmp_path_factory, two_and_one):
    """The same trainings under torchrun with 2 FSDP-sharded processes (what `accelerate launch --use_fsdp` sets)."""
    fsdp = tmp_path_factory.mktemp("fsdp")
    _torchrun_worker(fsdp, ACCELERATE_USE_FSDP="true")
    return fsdp, two_and_one[1]


@pytest.fixture(params=["data-parallel", "fsdp"])
def launched_and_one(request, two_and_one):
    return two_and_one if request.param == "data-parallel" else request.getfixturevalue("fsdp_and_one")


@pytest.mark.parametrize("method", ["ga", "npo", "graddiff"])
def test_two_processes_train_the_same_weights(launched_and_one, method):
    two, one = launched_and_one
    w2, w1 = torch.load(two / "weights.pt")[method], torch.load(one / "weights.pt")[method]
    start = build_tiny_random()[0].float().state_dict()
    moved = max((w1[k] - start[k]).abs().max().item() for k in w1)
    assert moved > 1e-4, "training must change the weights for the comparison to mean anything"
    diff = max((w2[k] - w1[k]).abs().max().item() for k in w1)
    assert diff <= 1e-5, f"{method}: max |w(2 processes) - w(1 process)| = {diff}"
    assert _seen(two, 0)[method]["losses"] == pytest.approx(_seen(one, 0)[method]["losses"], abs=1e-5)


def test_two_processes_train_the_same_lora_weights(two_and_one):
    """GA with LoRA adapters, data-parallel: the merged weights match one process within the same 1e-5."""
    two, one = two_and_one
    w2, w1 = torch.load(two / "weights.pt")["ga_lora"], torch.load(one / "weights.pt")["ga_lora"]
    start = build_tiny_random()[0].float().state_dict()
    assert list(w1) == list(start)   # merged: plain state-dict names
    assert max((w1[k] - start[k]).abs().max().item() for k in w1) > 1e-4
    assert max((w2[k] - w1[k]).abs().max().item() for k in w1) <= 1e-5
    assert _seen(two, 0)["ga_lora"]["losses"] == pytest.approx(_seen(one, 0)["ga_lora"]["losses"], abs=1e-5)


@pytest.mark.parametrize("method", ["ga", "npo", "graddiff"])
def test_each_rank_sees_other_examples_and_together_the_single_order(launched_and_one, method):
    two, one = launched_and_one
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


@pytest.mark.parametrize("method", ["ga", "npo", "graddiff"])
def test_fsdp_ranks_hold_different_shards_and_pad_the_short_step(fsdp_and_one, two_and_one, method):
    fsdp = fsdp_and_one[0]
    r0, r1 = _seen(fsdp, 0)[method], _seen(fsdp, 1)[method]
    total = sum(p.numel() for p in build_tiny_random()[0].parameters())
    for rank in (r0, r1):
        assert rank["storage"]["sharded"] and rank["storage"]["total"] == total
        assert 0 < rank["storage"]["local"] < total, "a rank stores a strict part of the model"
    assert r0["storage"]["local"] + r1["storage"]["local"] == total, "the shards together are the whole model"
    # step 3 has one micro-batch: rank 1 joins FSDP's collectives with one weight-0 padding pass
    assert (r0["padding_passes"], r1["padding_passes"]) == (0, 1)
    dp = _seen(two_and_one[0], 0)[method]
    assert "padding_passes" in dp and dp["padding_passes"] == 0 and not dp["storage"]["sharded"]
    assert dp["storage"]["local"] == total, "data-parallel: every rank holds the whole model"


def test_sharded_passes_are_padded_to_the_same_count():
    ranks = [object.__new__(distributed.ShardedProcesses) for _ in range(3)]
    for rank, r in enumerate(ranks):
        r.rank, r.world_size = rank, 3
    assert [r.passes(4) for r in ranks] == [[(0, False), (3, False)], [(1, False), (0, True)], [(2, False), (0, True)]]
    assert [r.passes(3) for r in ranks] == [[(0, False)], [(1, False)], [(2, False)]]
    assert distributed.SINGLE.passes(3) == [(0, False), (1, False), (2, False)]


def test_a_plain_process_is_single_and_untouched(tiny):
    assert distributed.launched_world_size() == 1
    ranks = distributed.current(torch.device("cpu"))
    assert (ranks.world_size, ranks.rank, ranks.is_main) == (1, 0, True)
    assert ranks.my_share([3, 1, 2]) == [3, 1, 2]
    assert ranks.sum_step(1.5, {"a": 2.0}, True) == (1.5, {"a": 2.0}, True)


@pytest.mark.parametrize("env, message", [
    ({"ACCELERATE_USE_DEEPSPEED": "true"}, "DeepSpeed is not supported.*--use_fsdp"),
    ({"ACCELERATE_USE_FSDP": "true", "FSDP_OFFLOAD_PARAMS": "true"}, "parameter offloading .* not supported"),
    ({"ACCELERATE_USE_FSDP": "true", "FSDP_SHARDING_STRATEGY": "HYBRID_SHARD"}, "HYBRID_SHARD is not supported.*FULL_SHARD"),
])
def test_unsupported_launch_options_are_refused_with_the_fix(monkeypatch, env, message):
    from harness.errors import HarnessError

    monkeypatch.setenv("WORLD_SIZE", "2")
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    with pytest.raises(HarnessError, match=message):
        distributed.current(torch.device("cpu"))


def test_methods_that_cannot_shard_are_refused_before_any_work(monkeypatch, tmp_path):
    """Under FSDP, RMU and SGA's automatic r are refused when the run is set up; a fixed r and GA are not."""
    from harness.errors import HarnessError
    from harness.run.runner import RunRequest, Runner

    class FakeSharded(distributed.SingleProcess):
        sharded = True

    monkeypatch.setattr(distributed, "_CURRENT", FakeSharded(torch.device("cpu")))
    base = dict(benchmark="synthetic", model="tiny-random", limit=4, results_dir=tmp_path / "r", save_models=False)
    with pytest.raises(HarnessError, match="method 'rmu' cannot train under FSDP.*--multi_gpu"):
        Runner(RunRequest(methods="ga,rmu", **base))
    with pytest.raises(HarnessError, match="method 'sga' cannot train under FSDP: sga.r=auto.*fixed sga.r"):
        Runner(RunRequest(methods="sga", overrides={"sga.r": "auto"}, **base))
    Runner(RunRequest(methods="ga,npo,graddiff,sga", **base))   # sga with its default fixed r shards


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


@pytest.mark.parametrize("mode", ["--multi_gpu", "--use_fsdp"])
def test_accelerate_launch_gives_the_single_process_records_and_weights(tmp_path, serial, mode):
    """`accelerate launch -m harness.cli run` with 2 processes (data-parallel or FSDP) = a plain run:
    scores 1e-4, weights 1e-5; target and retain models are prepared the same way."""
    from safetensors.torch import load_file

    env = {**_env(), "HARNESS_CACHE": str(tmp_path / "cache2")}
    launch = [sys.executable, "-m", "accelerate.commands.launch", mode, "--num_processes", "2",
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
            assert r2.get("sharding") == ("fsdp" if mode == "--use_fsdp" else None)
            w1 = load_file(next((serial / "m").glob(f"**/{r1['method']}/*/model.safetensors")))
            w2 = load_file(next((tmp_path / "m2").glob(f"**/{r1['method']}/*/model.safetensors")))
            assert max((w1[k] - w2[k]).abs().max().item() for k in w1) <= 1e-5


def test_attacks_under_a_launch_relearn_on_the_main_process_alone(tmp_path):
    """The relearning attack trains on the main process while the other ranks wait: a launched run
    with attacks finishes (no collective waits for absent ranks) and scores them as a plain run does."""
    attacked = ["run", "--methods", "ga", "--benchmark", "synthetic", "--model", "tiny-random", "--limit", "4",
                "--set", "train.max_steps=2", "--set", "train.global_batch=4", "--set", "train.micro_batch=1",
                "--set", "eval.attacks=relearn", "--set", "attack.relearn_steps=2", "--no-save-models"]
    env = {**_env(), "HARNESS_CACHE": str(tmp_path / "cache")}
    one = subprocess.run([sys.executable, "-m", "harness.cli"] + attacked + ["--results-dir", str(tmp_path / "r1")],
                         env=env, capture_output=True, text=True, timeout=900, cwd=REPO)
    assert one.returncode == 0, one.stderr[-3000:]
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
              "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
              "--main_process_port", str(_free_port()), "-m", "harness.cli"]
    two = subprocess.run(launch + attacked + ["--results-dir", str(tmp_path / "r2"), "--no-eval-cache"],
                         env=env, capture_output=True, text=True, timeout=600, cwd=REPO)
    assert two.returncode == 0, two.stderr[-3000:]
    assert_same_records(tmp_path / "r1", tmp_path / "r2")
    compared = 0
    for path in sorted((tmp_path / "r1").glob("*/*/*/*.json")):
        a1 = json.loads(path.read_text()).get("attacks", {}).get("relearn-heldout", {})
        a2 = json.loads((tmp_path / "r2" / path.relative_to(tmp_path / "r1")).read_text())["attacks"]["relearn-heldout"]
        for key, value in a1.get("aggregates", {}).items():
            if isinstance(value, (int, float)):
                assert a2["aggregates"][key] == pytest.approx(value, abs=1e-4), (path.name, key)
                compared += 1
    assert compared > 0, "the relearning attack's scores were compared"


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
    from harness.run.claims import Claims, claim_path

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
    from harness.run.claims import Claims, claim_path, read_claim

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
    from harness.run.claims import Claims
    from harness.run.results import write_record
    from harness.run.status import cell_states, summary_line

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
