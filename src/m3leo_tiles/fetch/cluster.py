"""The dask side of a run: our own LocalCluster or a client on an existing cluster.

Kept apart from the driver's bookkeeping because it is all about processes: starting workers
that do not slow the chips down, saying in one line why they did not start, killing them at
once on Ctrl-C, and the cluster-wide request budget that I/O-bound sources share.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import sys
from collections.abc import Iterator
from typing import TYPE_CHECKING

from m3leo_tiles.core.errors import ConfigError

if TYPE_CHECKING:
    from distributed import Client, LocalCluster

CLIENT_TIMEOUT_S = 20
GDAL_CACHE_MB = 256  # per local worker process


@contextlib.contextmanager
def quiet_dask_logs(level: int = logging.ERROR) -> Iterator[None]:
    """dask logs every worker start, loss and close at INFO; users need only its errors."""
    names = [
        name
        for name in list(logging.root.manager.loggerDict)
        if name.split(".")[0] in {"distributed", "dask", "tornado"}
    ] + ["distributed"]
    previous = {name: logging.getLogger(name).level for name in names}
    for name in names:
        logging.getLogger(name).setLevel(level)
    try:
        yield
    finally:
        for name, old_level in previous.items():
            logging.getLogger(name).setLevel(old_level)


@contextlib.contextmanager
def dask_client(workers: int | None, scheduler: str | None) -> Iterator[Client]:
    """A client on an existing cluster (never shut down by us) or on our own LocalCluster."""
    import dask
    from distributed import Client, LocalCluster

    cluster: LocalCluster | None = None
    if scheduler:
        try:
            client = Client(scheduler, timeout=CLIENT_TIMEOUT_S, set_as_default=False)
        except (OSError, TimeoutError) as error:
            raise ConfigError(
                f"cannot reach the dask scheduler at {scheduler} ({error}); start one with "
                "`dask scheduler` or leave out --scheduler to run locally"
            ) from None
        try:
            client.wait_for_workers(1, timeout=CLIENT_TIMEOUT_S)
        except TimeoutError:
            client.close()
            raise ConfigError(
                f"the dask scheduler at {scheduler} has no workers; start some with "
                f"`dask worker {scheduler}`"
            ) from None
    else:
        count = workers if workers is not None else (os.cpu_count() or 1)
        if count < 1:
            raise ConfigError(f"--workers must be at least 1, got {count}")
        # GDAL's block cache defaults to 5 % of RAM per process and fills up as inputs are
        # read: workers' memory would grow with the tile count. A fixed cache keeps it flat.
        os.environ.setdefault("GDAL_CACHEMAX", str(GDAL_CACHE_MB))
        # dask's statistical profiler samples every worker thread's stack every 10 ms: a
        # quarter of the CPU of small-chip work on a 2-core machine. Nobody reads it here.
        # dask also starts workers with MALLOC_TRIM_THRESHOLD_=65536, which makes glibc hand
        # memory back after nearly every GDAL call: 15 % slower chips, measured; our workers'
        # memory is bounded by GDAL's cache, not by what malloc keeps.
        environ = dict(dask.config.get("distributed.nanny.pre-spawn-environ", {}))
        environ.pop("MALLOC_TRIM_THRESHOLD_", None)
        # The scheduler and the nannies share the driver's process, and with the workers'
        # own event loops they take CPU from the chips on a small machine. Our tasks are
        # few, large and bounded in flight, and our workers' memory is bounded by GDAL's
        # cache, so slower monitors and no work stealing cost nothing here: 8 % more chips/s
        # on 2 cores, measured (bench/RESULTS.md). A cluster given with --scheduler keeps
        # its own settings.
        settings = {
            "distributed.worker.profile.enabled": False,
            "distributed.nanny.pre-spawn-environ": environ,
            "distributed.scheduler.work-stealing": False,
            "distributed.admin.tick.interval": "500ms",
            "distributed.worker.memory.monitor-interval": "1s",
            "distributed.admin.system-monitor.interval": "2s",
        }
        _check_main_can_be_respawned()
        # dask logs a worker that fails to start as a traceback; we say it in one line.
        with dask.config.set(settings), quiet_dask_logs(logging.CRITICAL + 1):
            try:
                cluster = LocalCluster(
                    n_workers=count,
                    threads_per_worker=1,
                    processes=True,
                    dashboard_address="127.0.0.1:0",  # never clash with another run's 8787
                    silence_logs=logging.CRITICAL,  # task errors are ours to report
                )
            except RuntimeError as error:  # "Nanny failed to start": the workers died at birth
                raise ConfigError(
                    f"the local dask workers did not start ({error}); if you call fetch from a "
                    'script, put the call under `if __name__ == "__main__":`, or use a running '
                    "cluster (scheduler=ADDRESS, --scheduler on the command line)"
                ) from None
        client = Client(cluster, set_as_default=False)
    try:
        yield client
    except KeyboardInterrupt:
        if cluster is not None:
            _kill_workers(cluster)
        raise
    finally:
        with contextlib.suppress(Exception):
            client.close(timeout=10)
        if cluster is not None:
            with contextlib.suppress(Exception):
                cluster.close(timeout=10)


def refuse_in_starting_worker() -> None:
    """Stop a script that calls ``fetch`` at import time from running again in each worker.

    dask starts local workers with multiprocessing's *spawn*, which re-imports the script that
    started them; an unguarded ``fetch(...)`` would then plan again and try to start a
    cluster inside every starting worker, which Python refuses with a long traceback. This
    ends such a worker with one line instead; the driver then reports a ConfigError.
    """
    import multiprocessing

    if getattr(multiprocessing.current_process(), "_inheriting", False):
        raise SystemExit(
            "error: fetch() ran again while a dask worker process was starting, because the "
            'script calls it at import time; put the call under `if __name__ == "__main__":`'
        )


def _check_main_can_be_respawned() -> None:
    """Workers re-import the driver's main script; a script read from stdin cannot be."""
    main = sys.modules.get("__main__")
    path = getattr(main, "__file__", None)
    if getattr(main, "__spec__", None) is None and path and not os.path.isfile(path):
        raise ConfigError(
            f"local dask workers re-import the script that starts them, and {path} cannot be "
            "re-imported; save the script to a file (the call under "
            '`if __name__ == "__main__":`) or use a running cluster (scheduler=ADDRESS)'
        )


def _kill_workers(cluster: LocalCluster) -> None:
    """On Ctrl-C, stop our own workers at once: a task can't be cancelled mid-tile, and a
    graceful close would wait for it and then print the worker's own KeyboardInterrupt.
    Chips they were writing stay hidden ``.part`` files, which the next run removes."""
    for nanny in list(getattr(cluster, "workers", {}).values()):
        pid = getattr(getattr(nanny, "process", None), "pid", None)
        if pid:
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)


def request_budget(client: Client, limit: int | None, name: str) -> str | None:
    """A cluster-wide bound on in-flight requests: a ``distributed.Semaphore`` named for the
    run, which every worker's threads acquire around each request; None when unbounded."""
    if not limit:
        return None
    from distributed import Semaphore

    Semaphore(max_leases=int(limit), name=name, scheduler_rpc=client.scheduler,
              loop=client.loop)  # fmt: skip
    return name
