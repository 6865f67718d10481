"""SIGTERM handled like Ctrl-C: cron's timeouts, systemd, Kubernetes and batch schedulers stop
long runs with it, and a stopped run must keep what it finished and say how to resume.

Python's default for SIGTERM is to die on the spot: no ``finally`` runs, locks stay and
multiprocessing warns about leaked semaphores. ``fetch`` and ``m3leo-train`` both run their
work inside :func:`sigterm_as_interrupt`.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator


class Terminated(KeyboardInterrupt):
    """SIGTERM (cron's timeout, systemd, Kubernetes, batch schedulers) during a run."""


@contextlib.contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """Treat SIGTERM as Ctrl-C while a run holds its folder: stop the workers, keep finished
    chips, write the manifest, release the lock, and say so in one line (exit 143).

    Python's default for SIGTERM is to die on the spot: no ``finally`` runs, the lock stays
    and multiprocessing warns about leaked semaphores. Only the main thread may set a signal
    handler, so a run started from another thread keeps the default.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def terminate(signum: int, frame: object) -> None:
        raise Terminated()

    previous = signal.signal(signal.SIGTERM, terminate)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
