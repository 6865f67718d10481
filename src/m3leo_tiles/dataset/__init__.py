"""The on-disk dataset: ``OUT/<aoi>/<dataset>/`` with one GeoTIFF chip per tile (``chipfile``,
``geotiff``), its ``manifest.csv`` (``manifest``), the run's lock (``lock``), where everything
lies (``layout``) and how consumers find chips, bands and splits (``chipsets``). Written by
``fetch``, read by ``tools`` and ``ml``."""
