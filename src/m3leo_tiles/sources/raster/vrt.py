"""In-memory VRTs over a raster layer's cells: one mosaic per layer, or one band per layer.

A templated product's cells share one grid; a VRT over them is warped once, so a kernel across
a cell boundary sees both sides (see the package docstring). Both shapes are written by one
builder (``_vrt_xml``): they differ only in which file and band feed each output band.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from xml.sax.saxutils import escape

import numpy as np
import rasterio
from rasterio.errors import RasterioError
from rasterio.warp import transform_bounds
from rasterio.windows import Window

from m3leo_tiles.grid.tile import PixelGrid
from m3leo_tiles.sources._gdal import OPEN_DATASETS_PER_WORKER, open_dataset

GDAL_TYPES = {"uint8": "Byte", "int8": "Int8", "uint16": "UInt16", "int16": "Int16",
              "uint32": "UInt32", "int32": "Int32", "float32": "Float32",
              "float64": "Float64"}  # fmt: skip

Opened = Sequence[tuple[str, rasterio.DatasetReader]]
# one source rectangle of a VRT band: (file, its band, x offset, y offset, width, height)
Placed = tuple[str, int, int, int, int, int]


def _offsets(corners: Sequence[tuple[float, float]], xres: float, yres: float
             ) -> tuple[float, float, list[tuple[int, int]]] | None:  # fmt: skip
    """(left, top, whole-pixel offset of each cell's upper-left corner), or None when a cell
    is not a whole number of pixels away from the others."""
    left, top = min(c[0] for c in corners), max(c[1] for c in corners)
    offsets = []
    for c_left, c_top in corners:
        x, y = (c_left - left) / xres, (c_top - top) / yres
        if abs(x - round(x)) > 1e-6 or abs(y - round(y)) > 1e-6:
            return None
        offsets.append((round(x), round(y)))
    return left, top, offsets


def _vrt_xml(wkt: str, origin: tuple[float, float, float, float], gdal_type: str,
             nodata: float, bands: Sequence[Sequence[Placed]]) -> str:  # fmt: skip
    """The VRT: ``origin`` is (left, x resolution, top, y resolution); each band is mosaicked
    from its placed sources in order, later ones over earlier ones, ``nodata`` leaving gaps."""
    left, xres, top, yres = origin
    xml_bands = []
    for number, placed in enumerate(bands, start=1):
        sources = "".join(
            f'<ComplexSource><SourceFilename relativeToVRT="0">{escape(path)}</SourceFilename>'
            f"<SourceBand>{band}</SourceBand>"
            f'<SrcRect xOff="0" yOff="0" xSize="{w}" ySize="{h}"/>'
            f'<DstRect xOff="{x}" yOff="{y}" xSize="{w}" ySize="{h}"/>'
            f"<NODATA>{nodata!r}</NODATA></ComplexSource>"
            for path, band, x, y, w, h in placed
        )
        xml_bands.append(
            f'<VRTRasterBand dataType="{gdal_type}" band="{number}">'
            f"<NoDataValue>{nodata!r}</NoDataValue>{sources}</VRTRasterBand>"
        )
    width = max(x + w for placed in bands for _, _, x, _, w, _ in placed)
    height = max(y + h for placed in bands for _, _, _, y, _, h in placed)
    return (
        f'<VRTDataset rasterXSize="{width}" rasterYSize="{height}">'
        f"<SRS>{escape(wkt)}</SRS>"
        f"<GeoTransform>{left!r}, {xres!r}, 0.0, {top!r}, 0.0, {yres!r}</GeoTransform>"
        f"{''.join(xml_bands)}</VRTDataset>"
    )


def mosaic(
    opened: Opened, src_nodata: float | None, keep: int = OPEN_DATASETS_PER_WORKER
) -> rasterio.DatasetReader | None:
    """One VRT over cells that share a grid (same CRS, pixel size, bands and dtype, offsets
    a whole number of pixels), later cells over earlier ones; None when they do not, or when
    there is no nodata to leave the gaps between cells empty (then each cell is warped alone).
    """
    first = opened[0][1]
    nodata = src_nodata if src_nodata is not None else first.nodata
    xres, yres = first.transform.a, first.transform.e
    if nodata is None or first.transform.b or first.transform.d:
        return None
    for _, dataset in opened:
        same = (dataset.crs == first.crs and dataset.count == first.count
                and dataset.dtypes == first.dtypes and dataset.transform.a == xres
                and dataset.transform.e == yres and not dataset.transform.b
                and not dataset.transform.d)  # fmt: skip
        if not same:
            return None
    placement = _offsets([(d.transform.c, d.transform.f) for _, d in opened], xres, yres)
    gdal_type = GDAL_TYPES.get(first.dtypes[0])
    if placement is None or gdal_type is None:
        return None
    left, top, offsets = placement
    bands = [[(d.name, band, x, y, d.width, d.height)
              for (_, d), (x, y) in zip(opened, offsets, strict=True)]
             for band in range(1, first.count + 1)]  # fmt: skip
    xml = _vrt_xml(first.crs.to_wkt(), (left, xres, top, yres), gdal_type, nodata, bands)
    return open_dataset(xml, keep)


def layout(opened: Opened) -> tuple | None:
    """Where a layer's cells lie: (crs, resolution, placements) when they share one grid
    (no rotation, one band, a nodata value), else None."""
    first = opened[0][1]
    xres, yres = first.transform.a, first.transform.e
    cells = []
    for _, dataset in opened:
        t = dataset.transform
        if (t.b or t.d or dataset.count != 1 or dataset.crs != first.crs or t.a != xres
                or t.e != yres or dataset.nodata is None):  # fmt: skip
            return None
        cells.append((t.c, t.f, dataset.width, dataset.height))
    return first.crs.to_wkt(), xres, yres, tuple(cells)


def stack(
    group: Sequence[tuple[str, Opened]], src_nodata: float | None, keep: int
) -> rasterio.DatasetReader | None:
    """One VRT band per layer, each the mosaic of that layer's cells, when every layer has
    the same cells (GSSIC: one file per layer and cell) and one nodata; else None."""
    if len(group) < 2:
        return None
    layouts = {layout(opened) for _, opened in group}
    nodatas = {src_nodata if src_nodata is not None else d.nodata
               for _, opened in group for _, d in opened}  # fmt: skip
    if len(layouts) != 1 or None in layouts or len(nodatas) != 1:
        return None
    (shared,), (nodata,) = layouts, nodatas
    wkt, xres, yres, cells = shared
    placement = _offsets([(c[0], c[1]) for c in cells], xres, yres)
    dtype = np.result_type(*[d.dtypes[0] for _, opened in group for _, d in opened]).name
    gdal_type = GDAL_TYPES.get(dtype)
    if placement is None or gdal_type is None:
        return None
    left, top, offsets = placement
    bands = [[(d.name, 1, x, y, w, h)
              for (_, d), (x, y), (_, _, w, h) in zip(opened, offsets, cells, strict=True)]
             for _, opened in group]  # fmt: skip
    return open_dataset(_vrt_xml(wkt, (left, xres, top, yres), gdal_type, nodata, bands), keep)


def readable_and_clean(stack: rasterio.DatasetReader, grid: PixelGrid) -> bool:
    """``clean_window``, where a read that fails counts as not clean: GDAL's "Read failed" of
    a stack names no file, and the per-layer warps that follow name the one at fault."""
    try:
        return clean_window(stack, grid)
    except (RasterioError, OSError):
        return False


def clean_window(stack: rasterio.DatasetReader, grid: PixelGrid, margin: int = 2) -> bool:
    """Whether every band of ``stack`` is valid wherever a kernel for ``grid`` can reach: the
    grid's bounds in the stack's CRS, widened by ``margin`` pixels, inside the raster and
    free of nodata."""
    west, south, east, north = transform_bounds(grid.crs, stack.crs, *grid.bounds,
                                                densify_pts=21)  # fmt: skip
    inverse = ~stack.transform
    cols, rows = zip(*(inverse * (x, y) for x in (west, east) for y in (south, north)),
                     strict=True)  # fmt: skip
    col0, row0 = math.floor(min(cols)) - margin, math.floor(min(rows)) - margin
    col1, row1 = math.ceil(max(cols)) + margin, math.ceil(max(rows)) + margin
    if col0 < 0 or row0 < 0 or col1 > stack.width or row1 > stack.height:
        return False
    data = stack.read(window=Window(col0, row0, col1 - col0, row1 - row0))
    nodata = stack.nodata
    invalid = np.isnan(data) if nodata is not None and np.isnan(nodata) else data == nodata
    return not invalid.any()
