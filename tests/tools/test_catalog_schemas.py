"""The catalog validates against the published STAC 1.1 and extension JSON schemas.

The schemas are bundled (stac_schemas/, README there says from where) and resolved through a
``referencing.Registry`` that refuses every URL it does not hold: no test fetches anything.
Each object is validated, as stac-validator does, against its core schema and the schema of
every extension it declares.
"""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import numpy as np
import pyarrow.parquet as pq
import pytest
import stac_geoparquet.arrow as sga
from referencing import Registry, Resource
from referencing.exceptions import NoSuchResource
from referencing.jsonschema import DRAFT7

from helpers.chip_tree import TILES, ChipTree, make_chip_tree
from m3leo_tiles.dataset.chipfile import write_chip
from m3leo_tiles.recipes import parse_recipe
from m3leo_tiles.sources.base import Chip
from m3leo_tiles.tools import stac
from m3leo_tiles.tools.catalog import write_catalog

SCHEMAS = Path(__file__).parent / "stac_schemas"
ITEM = "https://schemas.stacspec.org/v1.1.0/item-spec/json-schema/item.json"
COLLECTION = "https://schemas.stacspec.org/v1.1.0/collection-spec/json-schema/collection.json"


def _offline(uri: str) -> Resource:
    raise NoSuchResource(ref=uri)  # a schema not bundled: never fetched


def _registry() -> Registry:
    resources = []
    for path in sorted(SCHEMAS.rglob("*.json")):
        contents = json.loads(path.read_text(encoding="utf-8"))
        resource = Resource.from_contents(contents, default_specification=DRAFT7)
        uri = contents["$id"].rstrip("#")
        resources.append((uri, resource))
        if uri.endswith("/commonjson"):  # the published file's own $id misses its dot
            resources.append((uri.removesuffix("commonjson") + "common.json", resource))
    return Registry(retrieve=_offline).with_resources(resources)  # type: ignore[call-arg]


REGISTRY = _registry()


def validate(value: dict) -> None:
    """Raise ``ValidationError`` unless ``value`` is a valid Item or Collection."""
    core = ITEM if value["type"] == "Feature" else COLLECTION
    for uri in (core, *value.get("stac_extensions", ())):
        schema = REGISTRY.contents(uri)
        jsonschema.Draft7Validator(schema, registry=REGISTRY).validate(value)


@pytest.fixture(scope="module")
def tree(tmp_path_factory: pytest.TempPathFactory) -> ChipTree:
    tree = make_chip_tree(tmp_path_factory.mktemp("catalog-schemas"))
    _write_scaled(tree)
    return tree


def _write_scaled(tree: ChipTree) -> None:
    """A GSSIC-like dataset: uint16 DNs with band scale/offset and per-band formulas."""
    recipe = parse_recipe(
        {"name": "scaled", "source": "raster", "params": {"inputs": "/x.tif"},
         "resolution": 448, "bands": ["coh", "amp"], "dtype": "uint16", "nodata": 0,
         "description": "scaled"},
        "test",
    )  # fmt: skip
    folder = tree.folder("scaled")
    folder.mkdir(parents=True)
    metadata = ({"scale": "0.01"}, {"formula": "gamma0_db = 20 log10(DN) - 83"})
    for tile in TILES[:3]:
        grid = tile.pixel_grid(448)
        data = np.full((2, grid.height, grid.width), 55, dtype="uint16")
        chip = Chip(data, ("coh", "amp"), band_metadata=metadata)
        write_chip(folder / f"{tile.identifier}.tif", chip, grid, recipe, {})


def _catalog(tree: ChipTree, name: str) -> tuple[dict, list[dict]]:
    folder = tree.folder(name)
    write_catalog(folder, grids_dir=tree.grids_dir, json_items=True)
    collection = json.loads((folder / "collection.json").read_text())
    files = [json.loads(p.read_text()) for p in sorted((folder / "items").glob("*.json"))]
    from_parquet = list(sga.stac_table_to_items(pq.read_table(folder / "items.parquet")))
    assert len(files) == len(from_parquet) > 0
    return collection, files + from_parquet


@pytest.mark.parametrize("name", ["s2x", "esawc", "agb-2020", "gunw", "scaled"])
def test_collection_and_items_validate(tree: ChipTree, name: str) -> None:
    collection, items = _catalog(tree, name)
    validate(collection)
    for item in items:
        validate(item)
    declared = set(collection["stac_extensions"])
    assert {stac.PROJECTION, stac.FILE, stac.ML_AOI} <= declared
    assert all({stac.PROJECTION, stac.FILE, stac.ML_AOI} <= set(i["stac_extensions"])
               for i in items)  # fmt: skip


def test_scale_offset_and_band_metadata_are_described(tree: ChipTree) -> None:
    collection, items = _catalog(tree, "scaled")
    bands = collection["item_assets"]["chip"]["bands"]
    assert stac.RASTER in collection["stac_extensions"]
    assert [(b["raster:scale"], b["raster:offset"]) for b in bands] == [(0.01, 0.0), (1.0, 0.0)]
    assert bands[1]["m3leo:metadata"] == {"formula": "gamma0_db = 20 log10(DN) - 83"}
    assert all(stac.RASTER in item["stac_extensions"] for item in items)


def test_the_validator_refuses_what_the_schemas_forbid(tree: ChipTree) -> None:
    """The check above can fail: a wrong proj:shape, split or checksum is caught."""
    _, items = _catalog(tree, "s2x")
    good = items[0]
    validate(good)
    for key, value in (("proj:shape", ["50", "50"]), ("ml-aoi:split", "val")):
        broken = json.loads(json.dumps(good))
        broken["properties"][key] = value
        with pytest.raises(jsonschema.ValidationError):
            validate(broken)
    broken = json.loads(json.dumps(good))
    broken["assets"]["chip"]["file:size"] = -1
    with pytest.raises(jsonschema.ValidationError):
        validate(broken)
