"""Training on the chips (the ``train`` extra: torch): the Dataset, the baseline, m3leo-train.

Nothing in the core package imports this subpackage, so ``m3leo-tiles`` works without torch.
Modules: ``dataset`` (``M3LEODataset``, samples and batches) built from ``pairs``
(``PairRule``), ``classes`` (class maps) and ``inputs`` (per-input specs, per-chip steps);
``batches`` (whole-batch loading); ``tasks``, ``unet``, ``train``, ``plots`` (the baseline and
its run; the command is ``m3leo_tiles.cli.train``).
"""

from m3leo_tiles.ml.classes import ESA_WORLDCOVER_CLASSES, IGNORE_INDEX
from m3leo_tiles.ml.dataset import M3LEODataset
from m3leo_tiles.ml.pairs import PairRule

__all__ = ["ESA_WORLDCOVER_CLASSES", "IGNORE_INDEX", "M3LEODataset", "PairRule"]
