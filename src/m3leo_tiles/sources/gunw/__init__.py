"""The ``gunw`` source: ARIA Sentinel-1 GUNW interferograms found with asf-search.

For each tile, every interferometric pair of the year whose temporal baseline is under the
recipe's ``max_baseline_days`` (M3LEO: 72): four bands per pair, named
``<reference>_<secondary>_<layer>`` (``20200117_20200105_unwrapped_phase``; ARIA's order,
reference = the later date), layers ``unwrapped_phase``, ``coherence``,
``connected_components`` and ``amplitude`` warped onto the tile's grid. Each band's GDAL
metadata carries the pair (reference and secondary dates, baseline in days, direction, track,
frame, product names and versions), so a consumer can pick pairs from the chip alone.

How a run goes, and why:

1. *Search once, on the driver* (``plan``). One asf-search query per 2° lon/lat cell the
   tiles touch, for ``ARIA S1 GUNW`` products of the year; each answer is saved as GeoJSON
   under the cache folder (``--cache``, default ``OUT/.cache``), so a rerun, or a run over any
   subset of the tiles, asks nothing (``--refresh-search`` asks again).
   ``--search-results FILE`` takes a saved search instead (``ASFSearchResults.geojson()`` or a
   Vertex export): cron jobs and offline runs use that.
2. *Pick pairs* (``_gunw_catalog``): baseline cut, year of the reference date, newest version
   of each (pair, frame), footprints against tiles.
3. *Credentials only when needed*: if a product is in no ``--source`` folder and not in the
   cache, Earthdata credentials must be present and accepted, checked before any tile is
   rendered (one line, exit 2). A run from local products needs none.
4. *Download safely* (worker): ``m3leo_tiles.sources.download.cached_download`` with asf-search's
   authenticated session: temp file then rename, size checked against the search, a per-file
   lock (two workers wanting one product make one download), bounded retries; a batch's
   downloads run on the threads of the run's request budget (``concurrency``).
5. *Read each product once*: tiles of the same frames share a batch (``batch_key``); a batch
   loops over its products, not its tiles: each is opened once and warped into every tile
   that needs it (``_gunw_read``), in memory-bounded chunks of tiles. Adjacent frames of one
   pair over a tile are painted into one band, in product-name order.

Modules: the adapter in ``adapter``; pairs and catalogue search in ``_gunw_catalog``, product
reads in ``_gunw_read``, Earthdata login in ``_earthdata``.
"""

from m3leo_tiles.sources.gunw.adapter import GunwSource

__all__ = ["GunwSource"]
