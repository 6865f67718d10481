"""PyTorch Dataset over the chips (needs the ``train`` extra); not built yet."""
