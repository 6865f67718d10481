"""The global 4480 m UTM tile lattice: tiles, gridding an AOI, band splits, grid files."""

from m3leo_tiles.grid.aois import Aoi, AoiInfo, aois_dir, list_aois, load_aoi
from m3leo_tiles.grid.build import ensure_grid, make_grid
from m3leo_tiles.grid.files import (
    Grid,
    GridResult,
    default_grid_path,
    list_grids,
    read_grid,
)
from m3leo_tiles.grid.lattice import LatticeCells, grid_geometry, lattice_cells
from m3leo_tiles.grid.seams import seam_overlap_km2, seam_report
from m3leo_tiles.grid.splits import assign_bands, assign_splits, parse_ratios
from m3leo_tiles.grid.tile import (
    TILE_SIZE_M,
    BoxTile,
    GridTile,
    PixelGrid,
    Tile,
    parse_tile_id,
    pixels_per_side,
)

__all__ = [
    "TILE_SIZE_M",
    "Aoi",
    "AoiInfo",
    "BoxTile",
    "Grid",
    "GridResult",
    "GridTile",
    "LatticeCells",
    "PixelGrid",
    "Tile",
    "aois_dir",
    "assign_bands",
    "assign_splits",
    "default_grid_path",
    "ensure_grid",
    "grid_geometry",
    "lattice_cells",
    "list_aois",
    "list_grids",
    "load_aoi",
    "make_grid",
    "parse_ratios",
    "parse_tile_id",
    "pixels_per_side",
    "read_grid",
    "seam_overlap_km2",
    "seam_report",
]
