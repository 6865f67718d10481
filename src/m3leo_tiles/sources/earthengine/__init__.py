"""The ``earthengine`` source: server-side composites, fetched as pixels on each tile's grid.

Why it is built this way:

* Earth Engine computes the composite (filters, Cloud Score+ mask, seasonal means) where the
  data is, and ``ee.data.computePixels`` returns exactly the tile's pixels: ``grid`` is the
  tile's own CRS code, an affine transform at its corner with the recipe's pixel size, and its
  pixel count (448 at 10 m). No lon/lat box, no 8-bit visualisation, no reprojection on our
  side: a chip aligns pixel for pixel with every other source's chip of the tile, because the
  grid is the same ``tile.pixel_grid`` (lattice tiles and foreign lon/lat boxes alike).
* The speed limit is the project's concurrent-request quota, not our CPUs: a tile costs one
  request (or a few when a request would pass the service's 48 MiB / 1024-band limits), each
  waiting seconds on the server. Requests therefore run on threads inside each batch, each
  holding one unit of the run's cluster-wide budget (``--ee-concurrency``, the engine's
  semaphore) only while it is in flight, never while backing off.
* The client's own retries are switched off (``setMaxRetries(0)``): our ``retry_policy``
  (exponential backoff with jitter, bounded) governs 429 / RESOURCE_EXHAUSTED / 5xx /
  timeouts, outside the budget; anything else (400 INVALID_ARGUMENT, a band that does not
  exist) fails that tile at once with Earth Engine's message, and the run goes on.
* ``ee`` is imported only here, inside methods: ``m3leo-tiles --help`` stays fast, and the
  client is initialised once per worker process (``setup_worker``), not per tile, because
  initialising fetches the discovery document and the algorithm list.

Credentials are the conventional ones (see ``README``): ``M3LEO_EE_API_KEY`` (an API key, no
OAuth), else a service-account key file in ``GOOGLE_APPLICATION_CREDENTIALS``, else the
persistent credentials of ``earthengine authenticate``; the Cloud project comes from
``--project`` / ``EE_PROJECT`` (or the service account's own project). They are read where
they are used, from each process's environment, and never travel with the pickled adapter.

Answers are costly for the client too (16 MB for an s2srm tile): they are read in one call
(``_transport``), viewed in place as NPY and copied once into the chip's band planes
(``_answer``); bench/bench_ee_cpu.py measures the client's CPU per tile, stage by stage.

Modules: the adapter in ``adapter``; the recipe's ``params`` and the server-side expressions in
``_ee_recipe``; the answer's bytes to band planes in ``_answer``; the client's connections in
``_transport``.
"""

from m3leo_tiles.sources.earthengine.adapter import EarthEngineSource

__all__ = ["EarthEngineSource"]
