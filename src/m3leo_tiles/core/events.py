"""Word from the workers to the driver while a batch runs: each finished tile, and the first
sign that a host cannot be reached.

The driver learns a batch's rows when the whole batch is done; a batch of a remote source can
take minutes, during which the progress bar stood still and a network outage said nothing.
Workers therefore publish small events on a topic of the run (distributed's event log: it
works on our LocalCluster and on any ``--scheduler`` cluster), and the driver subscribes to it
(``fetch.dispatch._LiveTiles``). Outside a dask worker (a source used from Python), a warning is
logged in the process itself.
"""

from __future__ import annotations

import logging
from typing import Any

log = logging.getLogger("m3leo_tiles.fetch")

_channel: tuple[Any, str] | None = None  # (this process's dask worker, the run's topic)


def set_topic(topic: str) -> None:
    """Publish on ``topic`` from now on in this process ("" to stop); called by the task
    itself, where dask knows its worker (the source's own threads do not)."""
    global _channel
    worker = _worker() if topic else None
    _channel = (worker, topic) if worker is not None else None


def _worker() -> Any | None:
    try:
        from distributed import get_worker

        return get_worker()
    except (ImportError, ValueError):  # not running inside a dask worker
        return None


def publish(message: dict[str, Any]) -> bool:
    """Send ``message`` (msgpack-able) to the driver, from any thread (the worker hands it to
    its event loop); False when there is no one to tell."""
    channel = _channel
    if channel is None:
        return False
    worker, topic = channel
    worker.log_event(topic, message)
    return True


def warn(text: str) -> None:
    """A warning the user must see now (terminal and fetch.log), from wherever it arises."""
    if not publish({"kind": "warning", "text": text}):
        log.warning("%s", text)
