"""Cell claims: a small file next to a record says "this cell is being computed, by whom, since when".

Several `harness run` processes, Ray tasks or SLURM array tasks may share one results folder. A
cell is claimed before it starts by creating ``<record>.claim`` with O_EXCL (atomic on local
and NFS file systems), holding the owner's host, pid and start time; the claim is removed once the
record is written. Whoever finds a live claim leaves the cell alone, so no cell is computed twice.

A claim is *stale* when its owner cannot still be working on it: on the same host, its process
is gone; on any host, its heartbeat (the file's mtime, touched every ``HEARTBEAT_S`` seconds by
the owner) is older than ``stale_after_s()``. A stale claim is taken over, and the take-over is
itself atomic (rename, then re-check), so two processes never both take one.
"""
from __future__ import annotations

import atexit
import json
import os
import socket
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

HEARTBEAT_S = 30.0


def stale_after_s() -> float:
    """Seconds without a heartbeat after which a claim counts as abandoned (HARNESS_CLAIM_STALE_S)."""
    return float(os.environ.get("HARNESS_CLAIM_STALE_S", "300"))


def claim_path(record: Path) -> Path:
    return Path(record).with_name(Path(record).name + ".claim")


def owner_label(info: dict) -> str:
    where = f"{info.get('host', '?')}:{info.get('pid', '?')}"
    if info.get("worker"):
        where += f" ({info['worker']})"
    return where


def read_claim(path: Path) -> dict | None:
    """The claim's owner info, or None if there is no (readable) claim."""
    try:
        info = json.loads(Path(path).read_text(encoding="utf-8"))
        info["heartbeat"] = Path(path).stat().st_mtime
        return info
    except (OSError, ValueError):
        return None


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def is_stale(info: dict, now: float | None = None) -> bool:
    now = time.time() if now is None else now
    if info.get("host") == socket.gethostname() and isinstance(info.get("pid"), int) and not _pid_alive(info["pid"]):
        return True
    return now - float(info.get("heartbeat", 0)) > stale_after_s()


@dataclass
class Outcome:
    """What became of an attempt to claim a cell."""

    state: str               # "claimed" (ours to run), "done" (finished meanwhile) or "elsewhere"
    owner: dict | None = None


class Claims:
    """The claims this process holds; heartbeats them while held and removes them on exit."""

    def __init__(self, worker: str = ""):
        self.worker = worker or os.environ.get("HARNESS_WORKER", "")
        self.held: dict[Path, str] = {}    # claim file -> our token
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        atexit.register(self.release_all)

    def try_claim(self, record: Path) -> dict | None:
        """Claim ``record``'s cell; None on success, else the live owner's info."""
        path = claim_path(record)
        path.parent.mkdir(parents=True, exist_ok=True)
        for _ in range(3):
            token = uuid.uuid4().hex
            info = {"host": socket.gethostname(), "pid": os.getpid(), "started": time.time(),
                    "worker": self.worker, "token": token}
            try:
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
            except FileExistsError:
                other = read_claim(path)
                if other is None:     # removed (or half-written) between our two calls: try again
                    time.sleep(0.05)
                    continue
                if not is_stale(other):
                    return other
                self._take_over(path, other)
                continue
            with os.fdopen(fd, "w", encoding="utf-8") as fh:
                json.dump(info, fh)
            with self._lock:
                self.held[path] = token
            self._start_heartbeat()
            return None
        return read_claim(path) or {"host": "?", "pid": "?"}

    def release(self, record: Path) -> None:
        path = claim_path(record)
        with self._lock:
            token = self.held.pop(path, None)
        if token is not None and (read_claim(path) or {}).get("token") == token:
            path.unlink(missing_ok=True)

    def release_all(self) -> None:
        for path in list(self.held):
            self.release(path.with_name(path.name[: -len(".claim")]))

    @staticmethod
    def _take_over(path: Path, stale: dict) -> None:
        """Move a stale claim aside; if someone replaced it with a live one meanwhile, put that back."""
        aside = path.with_name(f".{path.name}.{uuid.uuid4().hex}.stale")
        try:
            os.rename(path, aside)
        except FileNotFoundError:
            return
        moved = read_claim(aside) or {}
        if moved.get("token") != stale.get("token"):
            try:
                os.link(aside, path)   # fails if a third process already claimed: then theirs stands
            except OSError:
                pass
        aside.unlink(missing_ok=True)

    def _start_heartbeat(self) -> None:
        if self._thread is not None:
            return
        self._thread = threading.Thread(target=self._beat, name="claim-heartbeat", daemon=True)
        self._thread.start()

    def _beat(self) -> None:
        while True:
            time.sleep(HEARTBEAT_S)
            with self._lock:
                paths = list(self.held)
            for path in paths:
                try:
                    os.utime(path)
                except OSError:
                    pass


def claim_cell(claims: Claims, record: Path, finished: Callable[[], dict | None], wait: bool,
               log=print, poll_s: float = 2.0) -> Outcome:
    """Claim a cell that has no finished record yet.

    ``finished()`` reads the record; it is checked again once the claim is ours, since another
    process may have finished the cell in between. With ``wait`` (cells others depend on, such as
    the retain model's), a live claim elsewhere is waited out until its record appears or the
    claim goes stale.
    """
    announced = False
    while True:
        owner = claims.try_claim(record)
        if owner is None:
            done = finished()
            if done is not None:
                claims.release(record)
                return Outcome("done")
            return Outcome("claimed")
        if not wait:
            return Outcome("elsewhere", owner)
        if owner.get("host") == socket.gethostname() and owner.get("pid") == os.getpid():
            # our own claim, left by an earlier step of this process that failed: waiting would never end
            claim_path(record).unlink(missing_ok=True)
            continue
        if not announced:
            log(f"waiting for {record.name}: being computed by {owner_label(owner)}")
            announced = True
        time.sleep(poll_s)
        if finished() is not None:
            return Outcome("done")
