"""Turning the tiles of a grid into chips: which tiles (``select``), what is left to do
(``plan``), batches on dask workers (``dispatch``, ``worker``), the cluster (``cluster``), the
run's log (``runlog``) and the run with its API (``api``).

``fetch`` and ``fetch_tiles`` are what notebooks call (``fetch_years`` for several years);
the CLI's ``fetch`` is a thin layer over them.
"""

from m3leo_tiles.fetch.api import (
    FetchReport,
    FetchRequest,
    YearsReport,
    fetch,
    fetch_tiles,
    fetch_years,
)

__all__ = ["FetchReport", "FetchRequest", "YearsReport", "fetch", "fetch_tiles", "fetch_years"]
