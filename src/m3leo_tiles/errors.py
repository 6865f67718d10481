"""Errors a user can act on.

Every error raised for bad input, bad configuration or a missing credential derives from
``M3leoError`` and carries a one-line message that says what is wrong and what to do. The CLI
turns these into that line and an exit code, never a traceback.
"""

from m3leo_tiles.redact import redact


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


class SystematicFailure(M3leoError):
    """The first tiles of a run all failed the same way: the cause is the run's, not a tile's
    (a wrong year, a recipe that does not fit its files, no network). Fatal, exit 2."""


def first_line(error: BaseException) -> str:
    """The first line of an error's message (library errors can run to pages), or its type;
    credentials a library quoted (a request URL's ``key=``...) are redacted."""
    lines = str(error).strip().splitlines()
    return redact(lines[0]) if lines else type(error).__name__
