"""Strict JSON for every file the tool writes: no ``NaN``/``Infinity`` literals.

Python's ``json`` writes ``NaN`` by default, which is not JSON: ``jq``, browsers and most other
languages refuse such a file, and ``allow_nan=False`` alone turns a NaN into a crash (GUNW
chips have NaN nodata, an all-nodata band has a NaN mean). So non-finite floats are written
as ``null``, and readers that need a float back (nodata, a mean) use :func:`as_float`.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from m3leo_tiles.core.atomic import write_text


def _finite(value: Any) -> Any:
    """``value`` with every non-finite float (at any depth) replaced by None."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {key: _finite(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(item) for item in value]
    return value


def dumps(value: Any, **options: Any) -> str:
    """JSON text of ``value``; NaN and ±inf become ``null`` (``json.dumps`` options apply)."""
    return json.dumps(_finite(value), allow_nan=False, **options)


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def loads(text: str) -> Any:
    """Parse strict JSON: a ``NaN``/``Infinity`` literal is a ValueError, as other tools see it."""
    return json.loads(text, parse_constant=_refuse_constant)


def write(path: Path, value: Any, **options: Any) -> None:
    """Write ``value`` to ``path`` as strict JSON with a final newline (a new file renamed
    over the target: never half-written, never through a planted link)."""
    write_text(Path(path), dumps(value, **options) + "\n")


def as_float(value: Any) -> float:
    """A number read back from strict JSON: ``null`` (a NaN when written) becomes NaN."""
    return math.nan if value is None else float(value)
