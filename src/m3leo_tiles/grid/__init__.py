"""The global 4480 m UTM tile lattice: tiles, gridding an AOI, band splits, grid files."""

from m3leo_tiles.grid.tile import (
    TILE_SIZE_M,
    BoxTile,
    GridTile,
    PixelGrid,
    Tile,
    pixels_per_side,
)

__all__ = ["TILE_SIZE_M", "BoxTile", "GridTile", "PixelGrid", "Tile", "pixels_per_side"]
