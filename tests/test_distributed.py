"""One cell on two processes (gloo, CPU) gives the single-process result; each rank sees other examples."""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from harness import distributed
from harness.batching import Example
from harness.training import TrainConfig, train

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
    proc = subprocess.run([sys.executable, worker, str(one)], env=_env(), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return two, one


@pytest.mark.parametrize("method", ["ga", "npo", "graddiff"])
def test_two_processes_train_the_same_weights(two_and_one, method):
    two, one = two_and_one
    w2, w1 = torch.load(two / "weights.pt")[method], torch.load(one / "weights.pt")[method]
    start = {k: v for k, v in __import__("harness.models", fromlist=["x"]).build_tiny_random()[0].float().state_dict().items()}
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


def test_accelerate_launch_gives_the_single_process_records_and_weights(tmp_path):
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
    env["HARNESS_CACHE"] = str(tmp_path / "cache1")
    one = subprocess.run([sys.executable, "-m", "harness.cli"] + RUN + ["--results-dir", str(tmp_path / "r1"),
                         "--models-dir", str(tmp_path / "m1")], env=env, capture_output=True, text=True, timeout=900, cwd=REPO)
    assert one.returncode == 0, one.stderr[-3000:]
    records1 = sorted((tmp_path / "r1").glob("*/*/*/*.json"))
    assert len(records1) == 4
    for path in records1:
        r1 = json.loads(path.read_text())
        r2 = json.loads((tmp_path / "r2" / path.relative_to(tmp_path / "r1")).read_text())  # same cell id
        assert r2["status"] == r1["status"] == "ok"
        for key, value in r1["aggregates"].items():
            if isinstance(value, (int, float)):
                assert r2["aggregates"][key] == pytest.approx(value, abs=1e-4), (path.name, key)
        if r1["kind"] == "method":
            assert r2["processes"] == 2 and "processes" not in r1
            w1 = load_file(next((tmp_path / "m1").glob(f"**/{r1['method']}/*/model.safetensors")))
            w2 = load_file(next((tmp_path / "m2").glob(f"**/{r1['method']}/*/model.safetensors")))
            assert max((w1[k] - w2[k]).abs().max().item() for k in w1) <= 1e-5
    assert not list((tmp_path / "r2").glob("**/*.claim")), "claims are removed once records are written"
