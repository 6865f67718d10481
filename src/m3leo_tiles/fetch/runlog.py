"""A run's log: every line to the dataset's ``fetch.log``, the few that matter to the terminal.

The handlers are put on the package logger for the life of one run and removed after it, so
a notebook that calls ``fetch`` twice gets two logs, not one log per call stacking up. Per-tile
failures carry ``per_tile`` and go to the file only (the console would drown in them); every
record passes the redacting filter first, so no credential reaches either.
"""

from __future__ import annotations

import contextlib
import logging
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from m3leo_tiles.core.atomic import NoFollowFileHandler
from m3leo_tiles.core.redact import RedactingFilter
from m3leo_tiles.dataset.layout import LOG_NAME as LOG_NAME  # where callers looked for it

if TYPE_CHECKING:
    from m3leo_tiles.fetch.api import FetchRequest
    from m3leo_tiles.fetch.plan import Plan
    from m3leo_tiles.recipes import Recipe
    from m3leo_tiles.sources.base import FetchOptions

log = logging.getLogger("m3leo_tiles.fetch")


class TileFilter(logging.Filter):
    """Per-tile failures go to fetch.log only; the console would drown in them."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not getattr(record, "per_tile", False)


@contextlib.contextmanager
def run_logging(log_path: Path, console: bool) -> Iterator[None]:
    """Log the package's records to ``log_path`` (INFO and up) and the terminal (WARNING and
    up with ``console``, else only errors) until the block ends."""
    package = logging.getLogger("m3leo_tiles")
    file_handler = NoFollowFileHandler(log_path, encoding="utf-8")
    file_handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    file_handler.setLevel(logging.INFO)
    console_handler = logging.StreamHandler(sys.stderr)
    console_handler.setFormatter(logging.Formatter("%(levelname)s: %(message)s"))
    console_handler.setLevel(logging.WARNING if console else logging.ERROR)
    console_handler.addFilter(TileFilter())
    for handler in (file_handler, console_handler):  # no record carries a credential
        handler.addFilter(RedactingFilter())
    previous = package.level
    package.setLevel(logging.INFO)
    package.addHandler(file_handler)
    package.addHandler(console_handler)
    try:
        yield
    finally:
        package.removeHandler(file_handler)
        package.removeHandler(console_handler)
        package.setLevel(previous)
        file_handler.close()


def log_run_start(recipe: Recipe, dataset_dir: Path, tiles: int, request: FetchRequest,
                  options: FetchOptions) -> None:  # fmt: skip
    """The run's first lines: what, where and how; then how the tiles were chosen."""
    log.info(
        "fetch %s (hash %s) into %s: %d tiles, workers=%s, scheduler=%s, overwrite=%s, "
        "sources=%s, cache=%s, options=%s",
        recipe.name,
        recipe.recipe_hash,
        dataset_dir,
        tiles,
        request.workers,
        request.scheduler,
        request.overwrite,
        list(request.sources),
        options.cache_dir,
        sorted(request.options),  # names only: values may hold endpoints with keys
    )
    for note in request.notes:
        log.info("%s", note)
    for warning in request.warnings:
        log.warning("%s", warning)


def log_plan(plan: Plan, skipped: int, summary: str) -> None:
    """What the plan decided, and why finished tiles are made again (a damaged chip, or
    inputs that changed)."""
    if plan.damaged:
        first = ", ".join(f"{ident} ({why})" for ident, why in plan.damaged[:3])
        log.warning("%d finished chips are damaged and are made again: %s%s",
                    len(plan.damaged), first, ", ..." if len(plan.damaged) > 3 else "")  # fmt: skip
    if plan.inputs_changed:
        log.warning("%d finished tiles were made from other inputs (--source, files changed "
                    "since); they are made again", plan.inputs_changed)  # fmt: skip
    log.info(
        "plan: %d already done (%d adopted), %d no-source, %d to render",
        skipped,
        len(plan.adopted),
        len(plan.no_source),
        plan.to_render,
    )
    if summary:
        log.info("plan: %s", summary)


def log_stop(error: Exception) -> None:
    """A run stopped by a configuration error, an early stop or a full disk: the reason goes
    to fetch.log too (the CLI prints it once), not only "0 ok"."""
    text = str(error)
    log.error("%s", text if text.startswith("stopped") else f"stopped: {text}",
              extra={"per_tile": True})  # fmt: skip
