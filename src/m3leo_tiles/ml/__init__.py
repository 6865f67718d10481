"""Training on the chips (the ``train`` extra: torch): the Dataset, the baseline, m3leo-train.

Nothing in the core package imports this subpackage, so ``m3leo-tiles`` works without torch.
"""

from m3leo_tiles.ml.dataset import (
    ESA_WORLDCOVER_CLASSES,
    IGNORE_INDEX,
    M3LEODataset,
    PairRule,
)

__all__ = ["ESA_WORLDCOVER_CLASSES", "IGNORE_INDEX", "M3LEODataset", "PairRule"]
