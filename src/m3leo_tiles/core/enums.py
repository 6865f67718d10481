"""String enums shared by the Python API and the CLI, so both accept the same words."""

from enum import StrEnum


class Split(StrEnum):
    TRAIN = "train"
    VAL = "val"
    TEST = "test"


class GridFormat(StrEnum):
    GEOJSON = "geojson"
    PARQUET = "parquet"


class TileStatus(StrEnum):
    """Outcome of one tile in one dataset; ``ok``/``empty``/``no-source`` count as done."""

    OK = "ok"
    EMPTY = "empty"
    NO_SOURCE = "no-source"
    FAILED = "failed"

    @property
    def is_done(self) -> bool:
        return self is not TileStatus.FAILED


class ResamplingMethod(StrEnum):
    """Resampling names a recipe may use; each maps to GDAL's warp method of that name."""

    NEAREST = "nearest"
    MODE = "mode"
    BILINEAR = "bilinear"
    CUBIC = "cubic"
    AVERAGE = "average"
    SUM = "sum"
    MIN = "min"
    MAX = "max"
    MED = "med"


class ChipCodec(StrEnum):
    """How a chip's pixels are stored (every one lossless): a recipe's ``compress`` key and
    ``fetch --compress``. How chips are stored, not what they hold, so it is no part of the
    recipe hash; ``dataset.geotiff.CODECS`` has each one's settings and why."""

    ZSTD = "zstd"
    DEFLATE = "deflate"
    LZW = "lzw"
    NONE = "none"
