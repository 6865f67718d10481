"""The ``raster`` source: any raster GDAL can read, warped straight onto each tile's pixel grid.

Inputs are local files, globs, VRTs, ``zip://`` members, or http(s)/s3/gs URLs (read through
GDAL's ``/vsicurl/``, ``/vsis3/``, ``/vsigs/``), in any CRS. Two shapes of recipe ``params``:

* ``inputs: [paths...]`` — one mosaic; every file gives the same bands (``band_indexes``
  picks some of them). ``--source PATH`` on the command line replaces the list.
* ``layers: {band_name: [paths...]}`` — products stored one band per file (Sentinel-2 band
  files, a value and its uncertainty); each layer is its own mosaic and gives one band.
  ``--source NAME=PATH`` replaces one layer's inputs.

An input may be a *tile template* for global products split into lat/lon cells, e.g.
``.../{NS}{lat:02d}{EW}{lon:03d}_ESACCI-BIOMASS-...-{year}-fv5.0.tif`` with
``tile_degrees: 10`` (``tile_corner: upper-left`` or ``lower-left`` says which corner names a
cell). Planning then needs no request at all: a tile's inputs are the cells it touches, and a
cell the product does not have (open sea) counts as no data rather than as a failure.

Products stored as one file per (season, polarisation, metric...) in every cell (GSSIC) need
not list each layer: ``layer_grids`` generates them from ``axes`` (``{season}`` × ``{pol}`` ×
``{metric}`` substituted into ``path``; the band is ``band`` filled the same way, in lower
case). ``root: ...`` names the product's top folder or URL as ``{root}`` in paths, so that
``--source ROOT`` swaps a whole mirror in at once. ``band_metadata: {glob: {scale, offset,
units...}}`` gives bands their physical meaning without changing the stored values (``scale``
and ``offset`` become GDAL band scale/offset in the chip), ``band_resampling: {glob: method}``
overrides the recipe's resampling for some bands (nearest for a class mask beside bilinear
coherence), and ``remote: download`` copies remote files whole into the run's ``--cache``
(atomic, locked per file) instead of reading ranges through ``/vsicurl/``.

The cells one layer of a templated product needs are mosaicked first (an in-memory VRT over
the cells, which share one 3-arcsec or 1/N-degree grid) and warped once: a bilinear kernel
across a 1° line then sees both sides, exactly as ``reproject`` of the merged cells does,
where one warp per cell would leave a seam.

Paths: relative ones are the recipe file's; ``~``, ``$VAR`` and ``${VAR:-default}`` are
expanded (the example recipes use ``${M3LEO_SHARED_DATA:-../../../shared/data}``). Remote
inputs are not touched while planning: ``footprint: [west, south, east, north]`` says where
they have data (default: the world). ``src_nodata`` overrides the files' own nodata.

Each tile's chip is made by one GDAL warp per input, straight onto the tile's own grid (no
intermediate mosaic): that is what makes chips of every dataset align exactly, and it is the
same call a user would make with ``rasterio.warp.reproject``.

Why not warp a block of neighbouring tiles once and slice it (measured: ~0.3 ms a chip instead
of ~0.7)? Because the slices are not the per-tile warps. ``reproject`` always uses GDAL's
approximate transformer (0.125 px; rasterio 1.4 ignores ``tolerance`` there), which
interpolates coordinates linearly along each destination row of the region it warps, and GDAL
sizes resampling kernels per region: on the real SRTM tile around Clipperton Island a 16×16
tile block differed from the per-tile warps for nearest, bilinear, cubic, average, mode and sum
(values off by up to 5 m for nearest). An exact transformer (``WarpedVRT(tolerance=1e-9)``)
makes blocks equal to tiles but costs ~0.5 ms a chip in PROJ calls, more than it saves, and a
per-tile ``WarpedVRT`` is not ``reproject`` either (it differs for bilinear downsampling and
near edges). So every chip is its own ``reproject``, and the speed comes from elsewhere
(datasets kept open, a cheap encoder, batching in the runner).

``sum`` resampling is for extensive quantities (m² built, people per pixel): a tile's total
must not depend on the chip's pixel size. GDAL's ``sum`` weights each source pixel by the
fraction of it inside the target pixel, which conserves totals both when target pixels are
larger (89.6 m from 20 m: measured exact) and, since GDAL 3.6 (OSGeo/gdal#6560), when they are
smaller or the CRS changes (10 m from 20 m; 89.6 m UTM from 100 m Mollweide). Older GDALs gave
a small target pixel the whole value of the source pixel under it, inflating totals by the
pixel-area ratio; rather than correct for an old library's per-pixel area ratio, ``check``
refuses ``sum`` there (the pinned rasterio wheels carry GDAL 3.10). The tests check
conservation in both directions on real and on Mollweide data.
"""

from m3leo_tiles.sources.raster.adapter import RasterSource, gdal_version
from m3leo_tiles.sources.raster.paths import expand_vars, grid_layers

__all__ = ["RasterSource", "expand_vars", "gdal_version", "grid_layers"]
