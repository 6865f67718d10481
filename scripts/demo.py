"""`make demo`: the main job end to end on the bundled demo AOI, with no account and no network.

It grids the `demo` AOI, fetches chips of three example recipes in `recipes/examples/` from the
sample rasters in ../shared/data (a DEM mosaic, Sentinel-2 bands, a Sentinel-1 scene), then
draws a quicklook PNG of every dataset with the tile grid over it and the run's map (every tile
in its status colour, `status --map`), and a STAC catalog sits in each dataset. Running it
twice shows resuming: the second run skips every finished chip.

It ends with a short CPU training run of the baseline UNet on the demo chips. That run is a
pipeline smoke test, not one of the paper's tasks: the bundled samples hold no land cover,
biomass or built-up map over the tiles of any Sentinel-1/2 sample, so it predicts Sentinel-2
B11 (SWIR) from B05 and B8A of the same chips (a real, if easy, relation between bands).
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

from m3leo_tiles.fetch.api import fetch
from m3leo_tiles.grid import make_grid
from m3leo_tiles.tools.quicklook import quicklook
from m3leo_tiles.tools.runmap import write_run_map

REPO = Path(__file__).resolve().parents[1]
OUT = Path(os.environ.get("M3LEO_DEMO_OUT", REPO / "demo-output"))
# The example recipes whose sample data lies inside the `demo` AOI. demo-landcover (São Tomé)
# does not: fetched over the demo grid it would only record 63 no-source tiles, so the demo
# leaves it out (README, "Example recipes", shows how to grid its own site).
DEMO_RECIPES = ("demo-dem", "demo-s2", "demo-s1")
RECIPES = [REPO / "recipes" / "examples" / f"{name}.yaml" for name in DEMO_RECIPES]


def main() -> int:
    started = time.perf_counter()
    grid = make_grid("demo", out_dir=OUT / "grids" / "demo")
    print(f"grid: {grid.tiles} tiles → {grid.path}")
    worst = 0
    datasets = []
    for recipe in RECIPES:
        report = fetch(recipe, grid=grid.path, out=OUT / "data", workers=2, progress=False)
        print(f"{recipe.stem:16s} {report.summary()}")
        worst = max(worst, report.exit_code)
        datasets.append(report.dataset_dir)
    picture = quicklook([d for d in datasets if any(d.glob("*.tif"))], OUT / "quicklook.png")
    print(f"quicklook: {picture}")
    page = write_run_map(OUT / "data", OUT / "map.html", grid=grid.path)
    print(f"run map: {page.path} ({page.tiles} tiles, {page.datasets} datasets)")
    train_smoke_test(grid.path)
    print(
        f"done in {time.perf_counter() - started:.1f} s; open {picture} to look at the chips, "
        f"{page.path} in a browser for the run's map"
    )
    return worst


def train_smoke_test(grid: Path) -> None:
    """Ten epochs of a narrow UNet on demo-s2: B05 + B8A in, B11 out (see the docstring)."""
    from m3leo_tiles.ml.train import TrainConfig, train

    run = OUT / "runs" / "demo-s2-swir"
    config = TrainConfig(
        out=str(run), target="demo-s2", target_type="continuous", target_bands=("B11",),
        inputs=("demo-s2",), bands={"demo-s2": ("B05", "B8A")}, root=str(OUT / "data"),
        grid=str(grid), grids_dir=str(OUT / "grids"), epochs=10, lr=0.01, batch_size=4, width=8,
        chip_size=112, threads=1, seed=0,
    )  # fmt: skip
    print(
        "training (pipeline smoke test, not a paper task: the samples have no target map over "
        "the Sentinel tiles): UNet width 8, demo-s2 B05+B8A → B11, 10 epochs on CPU"
    )
    resume = (run / "checkpoints" / "last.pt").exists()
    result = train(config, resume=resume, progress=False, log=lambda line: print(f"  {line}"))
    baseline = result["rmse_of_train_mean"]
    print(
        f"  {result['split']} RMSE {result['rmse']:.0f} (B11 reflectance × 10000) over "
        f"{result['tiles']} tiles; predicting the train mean scores {baseline:.0f}"
        f" → {run}/curves.png, predictions.png"
    )


if __name__ == "__main__":
    sys.exit(main())
