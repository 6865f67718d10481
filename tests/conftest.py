"""Shared fixtures: where the real sample data lives (``../shared/data`` beside the checkout)."""

from __future__ import annotations

import os
import sys
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
    from helpers.dask_cluster import dask_processes

    with dask_processes(tmp_path) as (address, processes):
        yield address, processes[0]
