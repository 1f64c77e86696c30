"""When a claim counts as abandoned (``claims.is_stale``), case by case with a fixed clock."""
from __future__ import annotations

import os
import socket
import subprocess
import sys

import pytest

from harness.run.claims import is_stale

NOW = 1_000_000.0
HERE = socket.gethostname()


@pytest.fixture(scope="module")
def dead_pid() -> int:
    """The pid of a process that has exited (and been waited for)."""
    done = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    return int(done.stdout)


@pytest.fixture(autouse=True)
def default_stale_after(monkeypatch):
    monkeypatch.delenv("HARNESS_CLAIM_STALE_S", raising=False)   # 300 s


def test_this_host_a_gone_process_is_stale_even_with_a_fresh_heartbeat(dead_pid):
    assert is_stale({"host": HERE, "pid": dead_pid, "heartbeat": NOW}, now=NOW)


def test_this_host_a_live_process_is_stale_only_once_its_heartbeat_is_older_than_the_limit():
    live = {"host": HERE, "pid": os.getpid()}
    assert not is_stale({**live, "heartbeat": NOW}, now=NOW)
    assert not is_stale({**live, "heartbeat": NOW - 300.0}, now=NOW)      # exactly the limit: still live
    assert is_stale({**live, "heartbeat": NOW - 300.5}, now=NOW)


def test_another_host_is_judged_by_its_heartbeat_alone(dead_pid):
    """Its pid means nothing here: a pid that is dead on this host does not make it stale."""
    assert not is_stale({"host": HERE + "-elsewhere", "pid": dead_pid, "heartbeat": NOW - 10}, now=NOW)
    assert is_stale({"host": HERE + "-elsewhere", "pid": os.getpid(), "heartbeat": NOW - 301}, now=NOW)


def test_the_limit_comes_from_the_environment(monkeypatch):
    info = {"host": HERE + "-elsewhere", "pid": 1, "heartbeat": NOW - 11}
    monkeypatch.setenv("HARNESS_CLAIM_STALE_S", "10")
    assert is_stale(info, now=NOW)
    monkeypatch.setenv("HARNESS_CLAIM_STALE_S", "12")
    assert not is_stale(info, now=NOW)


def test_odd_claims(dead_pid):
    assert not is_stale({"host": HERE, "pid": str(dead_pid), "heartbeat": NOW}, now=NOW)  # not a pid: the clock decides
    assert is_stale({"host": HERE, "pid": os.getpid()}, now=NOW)   # no heartbeat at all: as old as the epoch
