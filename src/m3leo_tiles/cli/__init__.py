"""The command-line layer, thin on top of the Python API: ``m3leo-tiles`` (``cli.tiles``) and
``m3leo-train`` (``cli.train``)."""

from typing import Any


def __getattr__(name: str) -> Any:
    """``m3leo_tiles.cli:main``, the entry point that installs made before the CLI became a
    package still name (their ``bin/m3leo-tiles`` imports it)."""
    if name in ("main", "app"):
        from m3leo_tiles.cli import tiles

        return getattr(tiles, name)
    raise AttributeError(name)
