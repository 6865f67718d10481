"""One run per dataset folder: a lock file that names its owner.

Why a file created with ``O_EXCL`` and not ``flock``: it works the same on network file systems
shared by a cluster, and it names who holds it (pid, host, start time), so the error can tell
the user what to do. A lock left by a process that died on this host is stale and is taken over
with a warning; a lock held on another host can't be checked from here, so the message says
how to remove it by hand.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import time
from dataclasses import dataclass
from pathlib import Path

import psutil

from m3leo_tiles.core import strict_json
from m3leo_tiles.core.atomic import open_no_follow, refuse_link
from m3leo_tiles.core.errors import LockedError
from m3leo_tiles.dataset.layout import LOCK_NAME as LOCK_NAME  # its old home: re-exported
from m3leo_tiles.dataset.layout import DatasetLayout

UNREADABLE_LOCK_GRACE_S = 30.0
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class LockOwner:
    pid: int
    host: str
    started: float  # unix time

    def describe(self) -> str:
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(self.started))
        return f"pid {self.pid} on {self.host} since {when}"


def _read_owner(path: Path) -> LockOwner | None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        return LockOwner(int(data["pid"]), str(data["host"]), float(data["started"]))
    except (OSError, ValueError, KeyError, TypeError):
        return None


def read_owner(path: Path) -> LockOwner | None:
    """Who holds the lock file ``path`` (None: missing, empty or torn)."""
    return _read_owner(path)


def is_live(owner: LockOwner) -> bool | None:
    """Whether the lock's process still runs; None when it is on another host."""
    if owner.host != socket.gethostname():
        return None
    return _is_alive(owner)


def _is_alive(owner: LockOwner) -> bool:
    """Alive means: that pid exists and was started before the lock (pids get reused)."""
    try:
        process = psutil.Process(owner.pid)
        return process.create_time() <= owner.started + 1.0
    except psutil.AccessDenied:
        return True
    except (psutil.NoSuchProcess, psutil.ZombieProcess):
        return False


class DatasetLock:
    """Context manager holding ``<folder>/.m3leo.lock`` for the life of one run."""

    def __init__(self, folder: Path) -> None:
        self.path = DatasetLayout(folder).lock
        self._held = False

    def acquire(self) -> None:
        for _ in range(3):
            if self._try_create():
                return
            self._take_over_if_stale()
        raise LockedError(f"could not take the lock {self.path}; remove it if no run is active")

    def _try_create(self) -> bool:
        me = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.time()}
        try:
            fd = open_no_follow(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            return False
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(strict_json.dumps(me))
            handle.flush()
            os.fsync(handle.fileno())
        self._held = True
        return True

    def _take_over_if_stale(self) -> None:
        if self.path.is_symlink():  # planted: neither someone's lock nor ours to remove
            raise refuse_link(self.path)
        owner = _read_owner(self.path)
        if owner is None:
            # Empty or torn: either being written this instant, or left by a crash mid-write.
            try:
                age = time.time() - self.path.stat().st_mtime
            except FileNotFoundError:
                return
            if age < UNREADABLE_LOCK_GRACE_S:
                raise LockedError(
                    f"{self.path} is being created by another run; wait, or remove it if none"
                )
            log.warning("taking over unreadable stale lock %s", self.path)
        elif owner.host != socket.gethostname():
            raise LockedError(
                f"{self.path.parent} is being written by {owner.describe()}; wait for that run, "
                f"or delete {self.path} if it is no longer running"
            )
        elif _is_alive(owner):
            raise LockedError(
                f"{self.path.parent} is being written by another run ({owner.describe()}); "
                f"wait for it to finish or stop it (kill {owner.pid}), then rerun"
            )
        else:
            log.warning("taking over stale lock of %s (process is gone)", owner.describe())
        self.path.unlink(missing_ok=True)

    def release(self) -> None:
        if self._held:
            owner = _read_owner(self.path)
            if owner is None or owner.pid == os.getpid():
                self.path.unlink(missing_ok=True)
            self._held = False

    def __enter__(self) -> DatasetLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()
