"""``m3leo-train``: the entry point reserved for training the paper's baseline models.

Training (the torch Dataset over chips, the half-width UNet, metrics, checkpoints) is not
built yet; until it is, the command says so in one line instead of pretending to train.
"""

from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> None:
    del argv
    print(
        "error: m3leo-train is not built yet: the torch Dataset and the baseline models are "
        "planned work; the chips made by `m3leo-tiles fetch` can already be read with rasterio",
        file=sys.stderr,
    )
    sys.exit(2)
