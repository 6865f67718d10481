"""Turning the tiles of a grid into chips: the run and its API (``api``), what is left to do
(``plan``), batches on dask workers (``dispatch``, ``worker``) and the cluster (``cluster``).

``fetch`` and ``fetch_tiles`` are what notebooks call; the CLI's ``fetch`` is a thin layer over
them.
"""

from m3leo_tiles.fetch.api import FetchReport, FetchRequest, fetch, fetch_tiles

__all__ = ["FetchReport", "FetchRequest", "fetch", "fetch_tiles"]
