"""What users run on a finished dataset: ``status`` (counts, damaged chips), ``stats``
(per-band statistics), ``pack`` (an uncompressed copy for training) and ``quicklook`` (a PNG
mosaic)."""
