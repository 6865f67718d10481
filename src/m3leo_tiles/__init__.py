"""m3leo-tiles: ML-ready Earth-observation chips on an exact global UTM tile grid.

The package reads as the pipeline: ``grid`` (tiles and splits) → ``recipes`` (what a dataset
is) → ``fetch`` (the run: plan, batches on dask workers) → ``sources`` (one adapter per kind of
source, behind one contract) → ``dataset`` (the on-disk format: chips, manifest, lock) →
``tools`` (status, stats, pack, quicklook) and ``ml`` (the torch Dataset and ``m3leo-train``),
with ``cli`` thin on top and ``core`` holding the few helpers all of them share.
"""

from m3leo_tiles._moved import install as _install_moved_names

__version__ = "0.1.0"

_install_moved_names()
