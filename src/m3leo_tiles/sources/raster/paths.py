"""Where a raster recipe's inputs are: paths, URLs, archive members, tile templates, layers.

Pure text rules, no file opened and no GDAL imported, so that recipe checks stay cheap; they
are the raster source's own (the generic contract knows only plain local files).
"""

from __future__ import annotations

import itertools
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

RESERVED_FIELDS = {"lat", "lon", "NS", "EW", "year", "root"}
AXIS_FIELD = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}")
TEMPLATE_FIELDS = re.compile(r"\{(lat|lon|NS|EW)(:[^}]*)?\}")
URL_PREFIXES = {"http://": "/vsicurl/http://", "https://": "/vsicurl/https://",
                "s3://": "/vsis3/", "gs://": "/vsigs/"}  # fmt: skip
LAYER_SEPARATOR = "="
DEFAULT_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*):-([^}]*)\}")
ARCHIVE_SCHEMES = ("zip://", "tar://")
GDAL_ARCHIVES = ("/vsizip/", "/vsitar/", "/vsigzip/")
ARCHIVE_SUFFIXES = (".zip", ".tar", ".tgz", ".tar.gz", ".gz")


def grid_layers(grids: Sequence[Mapping[str, Any]]) -> dict[str, list[str]]:
    """Band name → [path] for every combination of each ``layer_grids`` entry's axes.

    ``{axis}`` fields are filled in ``path`` and ``band`` (the band in lower case, so GSSIC's
    ``COH12`` file is band ``winter_vv_coh12``); cell fields (``{lat:02d}``...), ``{year}``
    and ``{root}`` are left for later.
    """
    layers: dict[str, list[str]] = {}
    for grid in grids:
        names = list(grid["axes"])
        for combo in itertools.product(*(grid["axes"][name] for name in names)):
            values = dict(zip(names, map(str, combo), strict=True))
            band = fill_axes(grid["band"], values).lower()
            layers[band] = [fill_axes(grid["path"], values)]
    return layers


def fill_axes(text: str, values: Mapping[str, str]) -> str:
    return AXIS_FIELD.sub(lambda m: values.get(m.group(1), m.group(0)), text)


def as_list(value: Any) -> list[str]:
    return [value] if isinstance(value, str) else list(value)


def expand_vars(text: str) -> str:
    """``$VAR``/``${VAR}`` from the environment, and ``${VAR:-default}`` when VAR is unset.

    The default form lets a shared recipe point at a conventional place (the sample data
    beside the checkout) while any user redirects it with one environment variable.
    """
    text = DEFAULT_VAR.sub(lambda m: os.environ.get(m.group(1)) or m.group(2), text)
    return os.path.expandvars(text)


def gdal_path(text: str, folder: Path) -> str:
    """A recipe's input string as a path GDAL opens; relative local paths are the recipe's."""
    text = os.path.expanduser(expand_vars(text))
    for prefix, replacement in URL_PREFIXES.items():
        if text.startswith(prefix):
            return replacement + text[len(prefix) :]
    if text.startswith("/vsi"):
        return text
    if text.startswith(("zip://", "tar://")):  # rasterio's archive form: scheme://archive!member
        scheme, _, rest = text.partition("://")
        archive, separator, member = rest.partition("!")
        return f"{scheme}://{gdal_path(archive, folder)}{separator}{member}"
    path = Path(text)
    return os.path.normpath(path if path.is_absolute() else folder / path)


def from_command_line(path: str) -> str:
    """A ``--source`` path with a relative local path made absolute against the current folder.

    Paths typed on the command line are relative to where the command runs (as in every other
    tool); only paths written inside a recipe file are relative to that file. URLs and
    ``/vsi`` paths are kept; an archive member's archive (``zip://a.zip!b.tif``) is made
    absolute too.
    """
    return gdal_path(path, Path.cwd())


@dataclass(frozen=True)
class Layer:
    """One mosaic: where its files are and which output bands it fills."""

    name: str | None  # None: the plain ``inputs`` mosaic, all output bands
    specs: tuple[str, ...]


def cell_field(match: re.Match[str], lat: float, lon: float) -> str:
    field, spec = match.group(1), match.group(2) or ""
    values = {"lat": abs(round(lat)), "lon": abs(round(lon)),
              "NS": "N" if lat >= 0 else "S", "EW": "E" if lon >= 0 else "W"}  # fmt: skip
    return format(values[field], spec[1:])


def where_from(spec: str) -> str:
    """Why a path that uses ``${VAR:-default}`` was looked for where it was: the example
    recipes find the sample data beside a checkout; an installed package needs the variable."""
    unset = [m.group(1) for m in DEFAULT_VAR.finditer(spec) if not os.environ.get(m.group(1))]
    if not unset:
        return ""
    name = unset[0]
    return (
        f" (looked there because ${name} is not set; set {name} to the folder that holds "
        f"this data, e.g. `export {name}=/path/to/shared/data`)"
    )


def local_file(item: str) -> str | None:
    """The local file a planned input names, if any: a plain path, the path of a layer's
    ``LAYER=PATH``, or the archive of ``zip://ARCHIVE!MEMBER`` and ``/vsizip/ARCHIVE/MEMBER``
    (the archive is what a user replaces). The rules of every release since input
    identities were stored in manifests: they decide which digests a rerun compares."""
    candidates = [item]
    name, separator, rest = item.partition(LAYER_SEPARATOR)
    if separator and name and os.sep not in name:
        candidates.append(rest)
    for text in candidates:
        if text.startswith(ARCHIVE_SCHEMES):
            text = text.partition("://")[2].partition("!")[0]
        elif text.startswith(GDAL_ARCHIVES):
            inner = text.split("/", 2)[2]
            for suffix in ARCHIVE_SUFFIXES:
                at = inner.find(suffix)
                if at >= 0:
                    text = "/" + inner[: at + len(suffix)].lstrip("/")
                    break
        if not text.startswith("/vsi") and "://" not in text and os.path.isfile(text):
            return text
    return None
