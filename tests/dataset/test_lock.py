"""One run per dataset folder; stale locks of dead processes are taken over."""

from __future__ import annotations

import json
import logging
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from m3leo_tiles.core.errors import LockedError
from m3leo_tiles.dataset.lock import LOCK_NAME, DatasetLock


def test_second_lock_on_same_folder_is_refused(tmp_path: Path) -> None:
    with DatasetLock(tmp_path):
        owner = json.loads((tmp_path / LOCK_NAME).read_text())
        assert owner["pid"] == os.getpid()
        with pytest.raises(LockedError, match=str(os.getpid())) as caught:
            DatasetLock(tmp_path).acquire()
        assert "\n" not in str(caught.value)
    assert not (tmp_path / LOCK_NAME).exists()


def _write_lock(folder: Path, pid: int, host: str, started: float) -> None:
    (folder / LOCK_NAME).write_text(json.dumps({"pid": pid, "host": host, "started": started}))


def test_lock_of_live_process_is_refused(tmp_path: Path) -> None:
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        _write_lock(tmp_path, sleeper.pid, socket.gethostname(), time.time())
        with pytest.raises(LockedError, match=f"kill {sleeper.pid}"):
            DatasetLock(tmp_path).acquire()
    finally:
        sleeper.kill()
        sleeper.wait(timeout=10)


def test_stale_lock_of_dead_process_is_taken_over(tmp_path: Path, caplog) -> None:
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait(timeout=30)
    _write_lock(tmp_path, dead.pid, socket.gethostname(), time.time() - 60)
    with caplog.at_level(logging.WARNING), DatasetLock(tmp_path):
        assert json.loads((tmp_path / LOCK_NAME).read_text())["pid"] == os.getpid()
    assert "stale lock" in caplog.text


def test_reused_pid_counts_as_stale(tmp_path: Path) -> None:
    # Our own pid, but a lock older than this process: a previous owner that died.
    _write_lock(tmp_path, os.getpid(), socket.gethostname(), time.time() - 10 * 86400)
    with DatasetLock(tmp_path):
        owner = json.loads((tmp_path / LOCK_NAME).read_text())
        assert owner["started"] > time.time() - 60  # taken over: the lock is ours, now
    assert not (tmp_path / LOCK_NAME).exists()


def test_lock_from_another_host_is_refused_with_advice(tmp_path: Path) -> None:
    _write_lock(tmp_path, 1, "some-other-host.example", time.time())
    with pytest.raises(LockedError, match="delete"):
        DatasetLock(tmp_path).acquire()
