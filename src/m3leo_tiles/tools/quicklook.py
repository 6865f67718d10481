"""Quicklook pictures: a PNG mosaic of a dataset's chips with the tile grid drawn over it.

People check a dataset by looking at it: are the chips where the grid says, do neighbours
line up, did the right area come out empty. Chips are grouped by CRS (one panel per UTM zone
present), mosaicked with ``rasterio.merge`` (which places each chip by its own transform, so a
misaligned chip shows as a visible seam), stretched per band between the 2nd and 98th
percentile, and the tile outlines are drawn on top.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import rasterio
import rasterio.merge
from PIL import Image, ImageDraw, ImageFont
from rasterio.errors import RasterioError

from m3leo_tiles.core.atomic import replacing
from m3leo_tiles.core.errors import ConfigError, first_line
from m3leo_tiles.dataset.layout import DatasetLayout
from m3leo_tiles.dataset.nodata import valid_mask

GRID_COLOUR = (255, 210, 0)
NODATA_COLOUR = (40, 40, 40)
BACKGROUND = (255, 255, 255)
LABEL_HEIGHT = 22


@dataclass(frozen=True)
class Panel:
    """One picture of the chips of one dataset in one CRS."""

    title: str
    image: Image.Image


def _stretch(band: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """Linear 2–98 % stretch to 0..255; a constant band becomes mid-grey."""
    values = band[valid]
    if values.size == 0:
        return np.zeros(band.shape, dtype=np.uint8)
    low, high = np.percentile(values, [2, 98])
    if high <= low:
        return np.where(valid, 128, 0).astype(np.uint8)
    out = np.zeros(band.shape, dtype=np.uint8)  # only valid pixels: NaN (GUNW) cannot be cast
    out[valid] = (np.clip((values.astype("float64") - low) / (high - low), 0, 1) * 255).astype(
        np.uint8
    )
    return out


def _to_rgb(stack: np.ndarray, nodata: float | None) -> np.ndarray:
    """(bands, H, W) → (H, W, 3): three bands as RGB, otherwise the first band in grey."""
    bands = stack[:3] if stack.shape[0] >= 3 else stack[:1]
    valid = valid_mask(bands, nodata).all(axis=0)
    channels = [_stretch(band, valid) for band in bands]
    if len(channels) == 1:
        channels = channels * 3
    rgb = np.stack(channels, axis=-1)
    rgb[~valid] = NODATA_COLOUR
    return rgb


def _panel(title: str, chips: Sequence[Path], max_px: int) -> Panel:
    with rasterio.open(chips[0]) as first:
        nodata = first.nodata
    datasets = [rasterio.open(path) for path in chips]
    try:
        left = min(d.bounds.left for d in datasets)
        right = max(d.bounds.right for d in datasets)
        bottom = min(d.bounds.bottom for d in datasets)
        top = max(d.bounds.top for d in datasets)
        res = max(right - left, top - bottom) / max_px  # small mosaics are enlarged too
        mosaic, transform = rasterio.merge.merge(datasets, res=res, nodata=nodata)
        outlines = [d.bounds for d in datasets]
    finally:
        for dataset in datasets:
            dataset.close()
    image = Image.fromarray(_to_rgb(mosaic, nodata), mode="RGB")
    draw = ImageDraw.Draw(image)
    inverse = ~transform
    for bounds in outlines:
        col0, row0 = inverse @ (bounds.left, bounds.top)
        col1, row1 = inverse @ (bounds.right, bounds.bottom)
        draw.rectangle(
            [round(col0), round(row0), round(col1) - 1, round(row1) - 1], outline=GRID_COLOUR
        )
    return Panel(f"{title} · {len(chips)} chips", image)


def _readable(path: Path) -> tuple[str, str | None]:
    """(CRS, None) for a chip GDAL reads whole, else ("", why not)."""
    try:
        with rasterio.open(path) as dataset:
            dataset.read()  # every block: a truncated chip fails here, not half-drawn later
            return str(dataset.crs), None
    except (RasterioError, OSError) as error:
        return "", first_line(error)


def dataset_panels(
    dataset_dir: Path,
    max_px: int = 480,
    max_tiles: int = 400,
    warn: Callable[[str], None] | None = None,
) -> list[Panel]:
    """One panel per CRS found among the chips of ``dataset_dir`` (at most ``max_tiles``).

    A chip GDAL cannot read whole (damaged, truncated) is left out and reported through
    ``warn``, so one bad file never hides the rest of a dataset.
    """
    chips = sorted(DatasetLayout(dataset_dir).chips().values())[:max_tiles]
    by_crs: dict[str, list[Path]] = defaultdict(list)
    for path in chips:
        crs, problem = _readable(path)
        if problem is not None:
            if warn is not None:
                warn(f"skipped {path}: GDAL cannot read it ({problem}); rerun fetch to redo it")
            continue
        by_crs[crs].append(path)
    return [
        _panel(f"{dataset_dir.name} · {crs}", paths, max_px)
        for crs, paths in sorted(by_crs.items())
    ]


def compose(panels: Sequence[Panel], columns: int = 4) -> Image.Image:
    """Lay panels out in rows with their titles above them."""
    font = ImageFont.load_default(size=13)
    cell_w = max(panel.image.width for panel in panels)
    cell_h = max(panel.image.height for panel in panels) + LABEL_HEIGHT
    columns = min(columns, len(panels))
    rows = -(-len(panels) // columns)
    sheet = Image.new(
        "RGB", (columns * cell_w + (columns + 1) * 8, rows * cell_h + (rows + 1) * 8), BACKGROUND
    )
    draw = ImageDraw.Draw(sheet)
    for index, panel in enumerate(panels):
        x = 8 + (index % columns) * (cell_w + 8)
        y = 8 + (index // columns) * (cell_h + 8)
        draw.text((x, y + 3), panel.title, fill=(0, 0, 0), font=font)
        sheet.paste(panel.image, (x, y + LABEL_HEIGHT))
    return sheet


MIN_SIZE = 16


def quicklook(
    dataset_dirs: Sequence[Path],
    out: Path,
    max_px: int = 480,
    max_tiles: int = 400,
    warn: Callable[[str], None] | None = None,
) -> Path:
    """Write one PNG showing every given dataset folder's chips; returns its path.

    Bad arguments and an output path that cannot be written are ``ConfigError``s, checked
    before any chip is read; unreadable chips are skipped and reported through ``warn``.
    """
    out = Path(out)
    if max_px < MIN_SIZE:
        raise ConfigError(f"--size must be at least {MIN_SIZE} pixels, got {max_px}")
    if max_tiles < 1:
        raise ConfigError(f"--max-tiles must be at least 1, got {max_tiles}")
    if out.is_dir():
        raise ConfigError(f"--out {out} is a folder; give a file name such as {out / 'look.png'}")
    for folder in dataset_dirs:
        if not Path(folder).is_dir():
            raise ConfigError(f"{folder} is not a dataset folder; see `m3leo-tiles status`")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise ConfigError(
            f"cannot create the folder for --out {out}: {error.strerror or error}"
        ) from None
    panels = [
        panel
        for folder in dataset_dirs
        for panel in dataset_panels(Path(folder), max_px=max_px, max_tiles=max_tiles, warn=warn)
    ]
    if not panels:
        raise ConfigError(
            f"no chips (*.tif) that GDAL can read in {', '.join(map(str, dataset_dirs))}; "
            "run fetch first"
        )
    try:
        with replacing(out) as partial:  # never through a link planted at --out
            compose(panels).save(partial, format="PNG")
    except OSError as error:
        raise ConfigError(f"cannot write {out}: {error.strerror or error}") from None
    return out
