"""Where a run's batches go (fetch/cluster.py): an existing cluster through its scheduler's
address (left running), an unreachable one refused, and our own LocalCluster from a user's
script (with and without a main guard, and from stdin)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from distributed import Client

from helpers.fake_runs import IDS, TILES, recipe, run_on
from m3leo_tiles.core.errors import ConfigError
from m3leo_tiles.fetch import cluster as cluster_module

HERE = Path(__file__).resolve().parents[1]  # tests/: helpers import from there


def test_existing_cluster_via_scheduler_address(external_cluster, tmp_path: Path) -> None:
    address, scheduler = external_cluster
    report = run_on(address, recipe(empty=[IDS[0]]), tmp_path / "out", tiles=TILES[:5])
    assert (report.ok, report.empty, report.exit_code) == (4, 1, 0)
    assert len(list(report.dataset_dir.glob("*.tif"))) == 4
    assert scheduler.poll() is None  # a cluster we did not start is left running
    with Client(address, timeout=20) as client:
        assert len(client.nthreads()) == 1


def test_unreachable_scheduler_is_a_config_error(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(cluster_module, "CLIENT_TIMEOUT_S", 2)
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with pytest.raises(ConfigError, match="cannot reach the dask scheduler"):
        run_on(f"tcp://127.0.0.1:{port}", recipe(), tmp_path / "out", tiles=TILES[:1])


SCRIPT = """
import distributed  # a user who has dask loaded already: its loggers exist
import helpers.fake_sources
from pathlib import Path
from m3leo_tiles.grid.tile import Tile
from m3leo_tiles.recipes import Recipe
from m3leo_tiles.fetch.api import fetch_tiles

def main():
    recipe = Recipe(name="fake", source="fake-synthetic", resolution=224.0, bands=("value",),
                    dtype="int16", nodata=-1)
    tiles = [Tile.from_id(i) for i in {ids!r}]
    report = fetch_tiles(recipe, tiles, aoi="testaoi", out=Path("out"), workers=1,
                         progress=False)
    print("ok", report.ok)
"""


def run_script(tmp_path: Path, body: str, *, stdin: bool = False) -> subprocess.CompletedProcess:
    """A user's Python script that calls the API with its own local cluster."""
    source = SCRIPT.format(ids=IDS[:2]) + body
    paths = [str(HERE), str(HERE / "helpers" / "site"), os.environ.get("PYTHONPATH", "")]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(paths))  # site: the fake sources' dist-info
    script = tmp_path / "user_script.py"
    script.write_text(source)
    command = [sys.executable, "-"] if stdin else [sys.executable, str(script)]
    return subprocess.run(
        command, input=source if stdin else None, capture_output=True, text=True, cwd=tmp_path,
        env=env, timeout=180, check=False,
    )  # fmt: skip


def test_script_with_main_guard_starts_its_own_cluster(tmp_path: Path) -> None:
    done = run_script(tmp_path, 'if __name__ == "__main__":\n    main()\n')
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["ok", "2"]


def test_script_without_main_guard_gets_one_line_per_worker_not_a_traceback_storm(
    tmp_path: Path,
) -> None:
    done = run_script(tmp_path, "main()\n")
    assert done.returncode != 0
    worker_says = "error: fetch() ran again while a dask worker process was starting"
    assert worker_says in done.stderr
    assert done.stderr.count("Traceback") == 1  # the script's own ConfigError, no other
    assert "Nanny failed to start" in done.stderr.splitlines()[-1]  # our ConfigError, last
    assert done.stderr.splitlines()[-1].startswith("m3leo_tiles.core.errors.ConfigError")


def test_script_from_stdin_is_a_config_error(tmp_path: Path) -> None:
    done = run_script(tmp_path, "main()\n", stdin=True)
    assert done.returncode != 0
    last = done.stderr.splitlines()[-1]
    assert last.startswith("m3leo_tiles.core.errors.ConfigError") and "<stdin>" in last


# --- our cluster or the user's -------------------------------------------------------------


def test_an_existing_scheduler_is_used_and_left_running(cluster) -> None:
    from m3leo_tiles.fetch.cluster import dask_client

    with dask_client(5, cluster.scheduler_address) as client:  # --workers: not ours to start
        assert len(client.nthreads()) == len(cluster.workers) == 2
    assert cluster.status.name == "running" and len(cluster.workers) == 2


def test_a_local_cluster_needs_a_worker() -> None:
    from m3leo_tiles.fetch.cluster import dask_client

    with (
        pytest.raises(ConfigError, match="--workers must be at least 1, got 0"),
        dask_client(0, None),
    ):
        pass


def test_a_worker_re_running_the_script_stops_in_one_line(monkeypatch) -> None:
    import multiprocessing

    from m3leo_tiles.fetch.cluster import refuse_in_starting_worker

    refuse_in_starting_worker()  # the driver itself: nothing happens
    monkeypatch.setattr(multiprocessing.current_process(), "_inheriting", True, raising=False)
    with pytest.raises(SystemExit, match=r"^error: fetch\(\) ran again while a dask worker"):
        refuse_in_starting_worker()


def test_no_budget_without_a_limit(cluster) -> None:
    from m3leo_tiles.fetch.cluster import request_budget

    with Client(cluster.scheduler_address, timeout=20) as client:
        assert request_budget(client, None, "unused") is None
        assert request_budget(client, 0, "unused") is None
