"""Errors a user can act on.

Every error raised for bad input, bad configuration or a missing credential derives from
``M3leoError`` and carries a one-line message that says what is wrong and what to do. The CLI
turns these into that line and an exit code, never a traceback.
"""

import contextlib
import errno
from collections.abc import Iterator

from m3leo_tiles.core.redact import redact


class M3leoError(Exception):
    """Base class: a problem the user can fix; ``exit_code`` is what the CLI returns."""

    exit_code = 2


class ConfigError(M3leoError):
    """Bad usage or configuration: unknown AOI or recipe, invalid YAML, bad resolution."""


class GridError(ConfigError):
    """A geometry or grid that cannot be tiled (empty, outside UTM's latitude range...)."""


class CredentialsError(ConfigError):
    """A source needs credentials that are not where they are conventionally kept."""


class LockedError(ConfigError):
    """Another live run is writing to the same dataset folder."""


class SourceError(Exception):
    """A per-tile failure in a source (corrupt or vanished input): recorded, never fatal."""


class EmptyTileError(SourceError):
    """The source has no data for this tile (e.g. no image in a time window): recorded
    ``empty`` with this message as the reason, not ``failed``, and not retried."""


class TransientSourceError(SourceError):
    """A per-tile failure worth retrying with backoff (quota, timeout, 5xx)."""


class DiskFullError(M3leoError):
    """The output disk is full: fatal for the run (every further chip would fail too)."""


class NetworkUnreachable(M3leoError):
    """A host did not answer for longer than a run waits on it (``download.UNREACHABLE_S``):
    fatal, exit 2; every further download from it would wait and fail the same way."""


class SystematicFailure(M3leoError):
    """The first tiles of a run all failed the same way: the cause is the run's, not a tile's
    (a wrong year, a recipe that does not fit its files, no network). Fatal, exit 2."""


# Raised through every per-tile handler: the run stops, since every further tile would fail
# the same way (the worker re-raises them, the driver stops on them).
RUN_STOPPERS: tuple[type[M3leoError], ...] = (DiskFullError, NetworkUnreachable)


def first_line(error: BaseException, about: str | None = None) -> str:
    """The first line of an error's message (library errors can run to pages), or its type;
    credentials a library quoted (a request URL's ``key=``...) are redacted.

    ``about`` is the path the caller's own message already names: GDAL starts its messages
    with it (``PATH: No such file or directory``, ``'PATH' not recognized as ...``), and it is
    dropped so that the message does not name the file twice."""
    lines = str(error).strip().splitlines()
    text = redact(lines[0]) if lines else type(error).__name__
    if about:
        for prefix in (f"{about}: ", f"'{about}' ", f"{about} "):
            if text.startswith(prefix) and len(text) > len(prefix):
                return text[len(prefix) :]
    return text


@contextlib.contextmanager
def disk_full_as(message: str) -> Iterator[None]:
    """A full disk (``ENOSPC``) inside becomes ``DiskFullError(message)``: fatal for the run,
    since every further chip or download would fail the same way. Other errors pass."""
    try:
        yield
    except OSError as error:
        if error.errno == errno.ENOSPC:
            raise DiskFullError(message) from None
        raise
