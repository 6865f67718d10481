"""The module names the README documented before the folders (issue #18) still import: the
same module objects, with a DeprecationWarning that names the new place."""

from __future__ import annotations

import subprocess
import sys

import pytest

from m3leo_tiles._moved import MOVED, new_name

SCRIPT = """
import importlib, json, sys, warnings
old, new = sys.argv[1], sys.argv[2]
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    moved = importlib.import_module(old)
print(json.dumps({
    "same": moved is importlib.import_module(new),
    "warnings": [str(w.message) for w in caught if w.category is DeprecationWarning],
    "loaded_twice": sorted(n for n in sys.modules if n.startswith(old + ".")
                           and sys.modules[n] is not sys.modules.get(n.replace(old, new, 1))),
}))
"""


def _import(old: str, new: str) -> dict:
    import json

    done = subprocess.run([sys.executable, "-c", SCRIPT, old, new], capture_output=True,
                          text=True, timeout=120, check=True)  # fmt: skip
    return json.loads(done.stdout)


@pytest.mark.parametrize(
    ("old", "new"),
    [
        ("m3leo_tiles.runner", "m3leo_tiles.fetch.api"),
        ("m3leo_tiles.torch", "m3leo_tiles.ml"),
        ("m3leo_tiles.torch.dataset", "m3leo_tiles.ml.dataset"),
        ("m3leo_tiles.quicklook", "m3leo_tiles.tools.quicklook"),
        ("m3leo_tiles.download", "m3leo_tiles.sources.download"),
    ],
)
def test_an_old_name_is_the_new_module_with_a_warning(old: str, new: str) -> None:
    result = _import(old, new)
    assert result["same"]
    assert any(f"{old} has moved to {new}" in text for text in result["warnings"]), result
    assert result["loaded_twice"] == []


def test_documented_names_still_work() -> None:
    """What the README showed before: ``from m3leo_tiles.runner import fetch``,
    ``from m3leo_tiles.torch import M3LEODataset``."""
    code = (
        "import warnings; warnings.simplefilter('ignore')\n"
        "from m3leo_tiles.runner import fetch\n"
        "from m3leo_tiles.torch import M3LEODataset, PairRule\n"
        "import m3leo_tiles.fetch, m3leo_tiles.ml\n"
        "assert fetch is m3leo_tiles.fetch.fetch and M3LEODataset is m3leo_tiles.ml.M3LEODataset\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


def test_every_new_place_exists_and_unmoved_names_are_left_alone() -> None:
    import importlib.util

    for old, new in MOVED.items():
        assert importlib.util.find_spec(new) is not None, (old, new)
    assert new_name("m3leo_tiles.grid") is None
    assert new_name("m3leo_tiles.sources.base") is None
    assert new_name("m3leo_tiles.torch.batches") == "m3leo_tiles.ml.batches"
