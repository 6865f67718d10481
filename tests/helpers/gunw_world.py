"""A small GUNW world over the demo AOI's Los Angeles box: products, search items, saved search.

The demo AOI's Los Angeles box (lon -118.06..-117.94, lat 33.94..34.06) lies inside ARIA
track 64 ascending (RAiDER's real GUNW metadata in ../shared/data/asf covers it). The products
below are replicas (tests/helpers/gunw_netcdf.py) chosen so one run meets every rule:

* 20200117_20200105 in two adjacent frames (south and north halves, overlapping at 34.0°N)
  and an older v2_0_4 of the south frame (dropped for the v3_0_1);
* 20200129_20200117 (12 days) and 20200129_20200105 (24 days);
* 20200110_20191229: a 2020 pair whose secondary date is in 2019 (kept);
* 20200410_20200105 (96 days: over the baseline cut) and 20210104_20201223 (a 2021 pair);
* over the AOI's Virginia box, 20200210_20200129 from descending track 4. (Rome and the
  Camargue are outside ARIA's coverage: their tiles are ``no-source``.)

``search_items`` are CMR records derived from the real GUNW record (asf_loopback), so the real
asf-search client parses them; their sizes and checksums are the files'.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from helpers.asf_loopback import item_for_file
from helpers.gunw_netcdf import ProductSpec, write_product

D = dt.date
LA = (-118.15, 33.85, -117.85, 34.15)  # around the demo AOI's Los Angeles box
VIRGINIA = (-75.82, 37.5, -75.42, 37.85)  # around its Virginia box (-75.74..-75.50, 37.57..37.77)


def _spec(
    reference: D,
    secondary: D,
    south: float = LA[1],
    north: float = LA[3],
    version: str = "3_0_1",
    frame: int = 24900,
    seed: int = 0,
    inset_y: float = 0.1,
) -> ProductSpec:
    return ProductSpec(
        reference,
        secondary,
        64,
        "A",
        LA[0],
        south,
        LA[2],
        north,
        version=version,
        frame=frame,
        seed=seed,
        inset_y=inset_y,
    )


def demo_specs() -> list[ProductSpec]:
    return [
        _spec(D(2020, 1, 17), D(2020, 1, 5), north=34.01, frame=24900, seed=1, inset_y=0.0),
        _spec(D(2020, 1, 17), D(2020, 1, 5), south=33.99, frame=24901, seed=2, inset_y=0.0),
        _spec(
            D(2020, 1, 17),
            D(2020, 1, 5),
            north=34.01,
            frame=24900,
            seed=3,
            inset_y=0.0,
            version="2_0_4",
        ),
        _spec(D(2020, 1, 29), D(2020, 1, 17), seed=4),
        _spec(D(2020, 1, 29), D(2020, 1, 5), seed=5),
        _spec(D(2020, 1, 10), D(2019, 12, 29), seed=6),
        _spec(D(2020, 4, 10), D(2020, 1, 5), seed=7),
        _spec(D(2021, 1, 4), D(2020, 12, 23), seed=8),
        # the demo AOI's Virginia box, from a descending track
        ProductSpec(D(2020, 2, 10), D(2020, 1, 29), 4, "D", *VIRGINIA, frame=31000, seed=9),
    ]


@dataclass(frozen=True)
class World:
    products: dict[str, Path]  # file name -> path
    specs: dict[str, ProductSpec]  # file name -> spec
    items: list[dict[str, Any]]  # CMR records, the real one first


def make_world(
    folder: Path, template: dict[str, Any], specs: list[ProductSpec] | None = None
) -> World:
    """Write the products into ``folder`` and describe them as CMR items."""
    products, by_name, items = {}, {}, [template]
    for spec in specs or demo_specs():
        path = write_product(spec, folder)
        products[path.name] = path
        by_name[path.name] = spec
        items.append(item_for_file(template, path, spec.footprint(), spec.frame))
    return World(products, by_name, items)


def kept_2020(world: World) -> set[str]:
    """The products a 2020 run with a 72-day cut keeps, by the rules themselves."""
    kept = {}
    for name, spec in world.specs.items():
        if spec.reference.year != 2020 or (spec.reference - spec.secondary).days >= 72:
            continue
        key = (spec.reference, spec.secondary, spec.track, spec.direction, spec.frame)
        if key not in kept or spec.version > world.specs[kept[key]].version:
            kept[key] = name
    return set(kept.values())


def write_saved_search(specs: list[ProductSpec], paths: list[Path], target: Path) -> Path:
    """A saved search (GeoJSON FeatureCollection with asf-search's property names) of files."""
    import json

    import shapely.geometry

    features = [
        {
            "type": "Feature",
            "geometry": shapely.geometry.mapping(spec.footprint()),
            "properties": {
                "fileID": spec.name,
                "fileName": path.name,
                "frameNumber": spec.frame,
                "pathNumber": spec.track,
                "bytes": path.stat().st_size,
                "url": f"https://grfn.asf.alaska.edu/door/download/{path.name}",
            },
        }
        for spec, path in zip(specs, paths, strict=True)
    ]
    target.write_text(json.dumps({"type": "FeatureCollection", "features": features}))
    return target


def merge_saved_searches(cache: Path, target: Path) -> Path:
    """The per-cell search answers of a run as one saved search (as a user would keep it)."""
    import json

    features = {}
    for path in sorted((cache / "gunw-searches").rglob("*.geojson")):
        data = json.loads(path.read_text())
        assert data["type"] == "FeatureCollection"  # asf-search's geojson(), as Vertex writes
        for feature in data["features"]:
            features.setdefault(feature["properties"]["fileID"], feature)
    target.write_text(
        json.dumps({"type": "FeatureCollection", "features": list(features.values())})
    )
    return target


def fetch_in_child(args: tuple[str, str, str, str]) -> str:
    """A worker process's way to a product (for the one-download test): plan from the saved
    search, then ``_product_path``, with this process's sessions routed to the loopback."""
    from shapely.geometry import box

    from helpers.asf_loopback import route_asf_sessions
    from m3leo_tiles.grid.lattice import grid_geometry
    from m3leo_tiles.recipes import load_recipe
    from m3leo_tiles.sources.base import FetchOptions
    from m3leo_tiles.sources.gunw import GunwSource

    url, cache, name, search = args
    with route_asf_sessions(url):
        options = FetchOptions(year=2020, cache_dir=cache, extra={"search-results": search})
        source = GunwSource(load_recipe("gunw"), options)
        source.plan(grid_geometry(box(LA[0], LA[1], LA[2], LA[3])))
        return source._product_path(name, None)
