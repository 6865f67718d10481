"""Old module names keep importing, with a DeprecationWarning, after the modules moved into
the pipeline's folders (``m3leo_tiles.runner`` is ``m3leo_tiles.fetch.api`` now).

One table and one import hook instead of a shim file per old module: the old name gives the
very module object of the new one (``m3leo_tiles.runner.fetch is m3leo_tiles.fetch.fetch``),
so ``isinstance`` checks, monkeypatching and pickles agree whichever name was used. The hook
sits first on ``sys.meta_path`` and answers only the names in the table; without that, an old
package's submodule (``m3leo_tiles.torch.dataset``) would be found through the new package's
path and loaded a second time as another module.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import sys
import warnings
from types import ModuleType

MOVED = {
    "m3leo_tiles.runner": "m3leo_tiles.fetch.api",
    "m3leo_tiles.planning": "m3leo_tiles.fetch.plan",
    "m3leo_tiles.worker": "m3leo_tiles.fetch.worker",
    "m3leo_tiles.cluster": "m3leo_tiles.fetch.cluster",
    "m3leo_tiles.download": "m3leo_tiles.sources.download",
    "m3leo_tiles.io": "m3leo_tiles.dataset.chipfile",
    "m3leo_tiles.geotiff": "m3leo_tiles.dataset.geotiff",
    "m3leo_tiles.manifest": "m3leo_tiles.dataset.manifest",
    "m3leo_tiles.locking": "m3leo_tiles.dataset.lock",
    "m3leo_tiles.chipsets": "m3leo_tiles.dataset.chipsets",
    "m3leo_tiles.status": "m3leo_tiles.tools.status",
    "m3leo_tiles.stats": "m3leo_tiles.tools.stats",
    "m3leo_tiles.pack": "m3leo_tiles.tools.pack",
    "m3leo_tiles.quicklook": "m3leo_tiles.tools.quicklook",
    "m3leo_tiles.errors": "m3leo_tiles.core.errors",
    "m3leo_tiles.enums": "m3leo_tiles.core.enums",
    "m3leo_tiles.names": "m3leo_tiles.core.names",
    "m3leo_tiles.torch": "m3leo_tiles.ml",  # and every module below it
}


def new_name(old: str) -> str | None:
    """Where the module once called ``old`` lives now, or None when it did not move."""
    if old in MOVED:
        return MOVED[old]
    package, _, leaf = old.rpartition(".")
    moved = MOVED.get(package)
    if moved is not None and moved == "m3leo_tiles.ml":  # a package: its modules moved too
        return f"{moved}.{leaf}"
    return None


class _MovedModules(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    def find_spec(self, fullname: str, path: object, target: object = None):  # type: ignore[override]
        if new_name(fullname) is None:
            return None
        return importlib.util.spec_from_loader(fullname, self)

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType:
        new = new_name(spec.name)
        assert new is not None
        warnings.warn(
            f"{spec.name} has moved to {new}; import it from there (the old name will go)",
            DeprecationWarning,
            stacklevel=2,
        )
        return importlib.import_module(new)

    def exec_module(self, module: ModuleType) -> None:
        """Nothing to run: ``create_module`` gave the module that already ran."""


def install() -> None:
    if not any(isinstance(finder, _MovedModules) for finder in sys.meta_path):
        sys.meta_path.insert(0, _MovedModules())
