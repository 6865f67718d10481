"""A real `dask scheduler` and `dask worker` processes on 127.0.0.1, as users start them.

The `--scheduler` path and the killed-worker tests need separate processes (not a
LocalCluster) so that a worker can be SIGKILLed; the test sources reach them through the
test site folder on PYTHONPATH. Teardown terminates, then kills what a busy machine has not
stopped in time, so a slow exit never fails a test that passed.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

TESTS = Path(__file__).resolve().parents[1]


@contextmanager
def dask_processes(folder: Path, workers: int = 1) -> Iterator[tuple[str, list[subprocess.Popen]]]:
    """(scheduler address, [scheduler, worker, ...]) while the context lasts; logs in
    ``folder/scheduler.log`` and ``folder/worker.log``."""
    bin_dir = Path(sys.executable).parent
    info = folder / "scheduler.json"
    path = [str(TESTS), str(TESTS / "helpers" / "site"), os.environ.get("PYTHONPATH", "")]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(path))
    logs = (folder / "scheduler.log").open("w"), (folder / "worker.log").open("w")
    processes = [subprocess.Popen(
        [bin_dir / "dask", "scheduler", "--host", "127.0.0.1", "--port", "0", "--no-dashboard",
         "--scheduler-file", info], stdout=logs[0], stderr=subprocess.STDOUT, env=env)]  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        while not info.exists() and time.monotonic() < deadline:
            assert processes[0].poll() is None, (folder / "scheduler.log").read_text()
            time.sleep(0.1)
        address = json.loads(info.read_text())["address"]
        for _ in range(workers):
            processes.append(subprocess.Popen(
                [bin_dir / "dask", "worker", address, "--nthreads", "1", "--no-dashboard",
                 "--no-nanny", "--death-timeout", "60"],
                stdout=logs[1], stderr=subprocess.STDOUT, env=env, cwd=folder))  # fmt: skip
        yield address, processes
    finally:
        for process in reversed(processes):
            process.terminate()
        for process in reversed(processes):
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=10)
        for handle in logs:
            handle.close()
