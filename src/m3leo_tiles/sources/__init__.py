"""Source adapters: the contract and registry (``base``), the shared download cache
(``download``) and GDAL helpers (``_gdal``), and one package per built-in source (``raster``,
``earthengine``, ``gunw``), each registered by an entry point as a third party's would be."""
