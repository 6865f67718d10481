"""Shared fixtures: where the real sample data lives (``../shared/data`` beside the checkout)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
REPO_ROOT = HERE.parent
SHARED_DATA = Path(os.environ.get("M3LEO_SHARED_DATA", REPO_ROOT.parent / "shared" / "data"))
# The test adapters are declared by a dist-info there (entry points), as CLI subprocesses see it.
SITE = str(HERE / "helpers" / "site")
if SITE not in sys.path:
    sys.path.insert(0, SITE)


@pytest.fixture(scope="session")
def cluster():
    """One LocalCluster of two single-threaded workers for every test that runs batches on
    dask (starting one costs seconds; the runner treats it as an existing cluster)."""
    from distributed import LocalCluster

    with LocalCluster(n_workers=2, threads_per_worker=1, dashboard_address="127.0.0.1:0",
                      silence_logs=40) as local:  # fmt: skip
        yield local


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.fail(f"sample data not found at {SHARED_DATA}; set M3LEO_SHARED_DATA")
    return SHARED_DATA


@pytest.fixture
def external_cluster(tmp_path: Path):
    """A real `dask scheduler` and `dask worker` as separate processes, torn down after."""
    bin_dir = Path(sys.executable).parent
    info = tmp_path / "scheduler.json"
    env = dict(
        os.environ, PYTHONPATH=os.pathsep.join([str(HERE), os.environ.get("PYTHONPATH", "")])
    )
    logs = (tmp_path / "scheduler.log").open("w"), (tmp_path / "worker.log").open("w")
    scheduler = subprocess.Popen(
        [bin_dir / "dask", "scheduler", "--host", "127.0.0.1", "--port", "0", "--no-dashboard",
         "--scheduler-file", info],
        stdout=logs[0], stderr=subprocess.STDOUT, env=env,
    )  # fmt: skip
    processes = [scheduler]
    try:
        deadline = time.monotonic() + 60
        while not info.exists() and time.monotonic() < deadline:
            assert scheduler.poll() is None, (tmp_path / "scheduler.log").read_text()
            time.sleep(0.1)
        address = json.loads(info.read_text())["address"]
        worker = subprocess.Popen(
            [bin_dir / "dask", "worker", address, "--nthreads", "1", "--no-dashboard", "--no-nanny",
             "--death-timeout", "60"],
            stdout=logs[1], stderr=subprocess.STDOUT, env=env, cwd=tmp_path,
        )  # fmt: skip
        processes.append(worker)
        yield address, scheduler
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
