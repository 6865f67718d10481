"""A checkerboard of ``params.square`` pixels per tile: a whole m3leo-tiles source."""

import numpy as np

from m3leo_tiles.sources.base import Chip, PerTileSource


class Checkerboard(PerTileSource):
    name = "checkerboard"

    def plan(self, tiles):
        return {tile.identifier: ("checkerboard",) for tile in tiles}

    def render_tile(self, tile, inputs):
        grid = tile.pixel_grid(self.recipe.resolution)
        rows, cols = np.indices((grid.height, grid.width)) // self.recipe.params["square"]
        board = ((rows + cols) % 2 + 1).astype(self.recipe.dtype)
        return Chip(board[np.newaxis], self.recipe.bands)
