"""How many CPU threads torch computes with: chosen on purpose and recorded with every result.

More threads than free cores is much slower, not faster: HF generation on a 2-core machine
with other load took 283 s with 2 threads and 47 s with 1 for the same 2,048 tokens. The order:
an explicit ``--threads N``, else ``OMP_NUM_THREADS``, else the cores this process may run on
(CPU affinity, capped by a cgroup CPU quota) less the load other processes already put on
them (the 1-minute load average, rounded), and at least one.

On a CPU the count is also part of what a result is keyed by (``identity``): a cell's config id,
a prepared model's cache key and the evaluation cache's key.
"""
from __future__ import annotations

import math
import os
from pathlib import Path

import torch

_chosen: dict | None = None


def cgroup_cpu_quota(root: Path = Path("/sys/fs/cgroup")) -> float | None:
    """CPUs allowed by a cgroup quota (v2 ``cpu.max``, v1 ``cpu.cfs_quota_us``), None if unlimited."""
    try:
        quota, period = (root / "cpu.max").read_text().split()[:2]
        return None if quota == "max" else int(quota) / int(period)
    except (OSError, ValueError):
        pass
    try:
        quota = int((root / "cpu" / "cpu.cfs_quota_us").read_text())
        period = int((root / "cpu" / "cpu.cfs_period_us").read_text())
        return quota / period if quota > 0 and period > 0 else None
    except (OSError, ValueError):
        return None


def usable_cores() -> tuple[int, str]:
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    quota = cgroup_cpu_quota()
    if quota is not None and quota < cores:
        return max(1, math.floor(quota)), f"cgroup CPU quota {quota:g} of {cores} cores"
    return cores, f"{cores} cores available to this process"


def choose(explicit: int | None = None, environ=os.environ, load: float | None = None) -> tuple[int, str]:
    """(threads, why)."""
    if explicit:
        return explicit, "--threads"
    env = environ.get("OMP_NUM_THREADS", "").strip()
    if env.isdigit() and int(env) > 0:
        return int(env), "OMP_NUM_THREADS"
    cores, why = usable_cores()
    if load is None:
        load = os.getloadavg()[0] if hasattr(os, "getloadavg") else 0.0
    busy = min(cores - 1, round(load))
    return max(1, cores - busy), f"{why}, load average {load:.1f}"


def apply(explicit: int | None = None) -> dict:
    """Set torch's thread count and remember why (``describe``)."""
    global _chosen
    threads, why = choose(explicit)
    torch.set_num_threads(threads)
    _chosen = {"threads": threads, "why": why}
    return dict(_chosen)


def describe() -> dict:
    """The thread count torch uses now, and why (for records and bench reports)."""
    now = torch.get_num_threads()
    if _chosen is not None and _chosen["threads"] == now:
        return dict(_chosen)
    return {"threads": now, "why": "set by the caller (torch.set_num_threads)" if _chosen else "torch default"}


def identity(device) -> dict:
    """``{"cpu_threads": N}`` for results computed on a CPU, ``{}`` on a GPU: the part of a key the thread count is.

    On a CPU torch splits matrix products and reductions across its threads, and the split
    changes the rounding: evaluating the same weights with 2 threads instead of 1 gave the same
    greedy generations but log-prob scores that moved by up to 1.2e-6 (README, reproduction
    check), and training is made of the same operations. So a result made with one count is
    not reused for another. On a GPU (cuda, mps) the forward and backward passes, the
    log-softmax and the optimiser step run on the device, where torch's CPU thread count does
    not enter; the CPU only turns per-token values into Python floats, which Python, numpy and
    scipy aggregate without torch's thread pool. So the count is left out there, and GPU keys
    stay what they were.
    """
    kind = getattr(device, "type", None) or str(device or "cpu").split(":")[0]
    return {"cpu_threads": torch.get_num_threads()} if kind == "cpu" else {}
