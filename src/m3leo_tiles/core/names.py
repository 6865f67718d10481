"""Names that become file or folder names: tile ids, recipe names, AOI names.

Every chip's path is built from strings a user or a foreign file supplies
(``OUT/<aoi>/<recipe>[-<year>]/<tile id>.tif``). A tile id of ``../../evil`` would write outside
the output folder, ``a/b`` into a folder that does not exist, and a missing id would become
``None.tif``. So such strings are checked where they enter (reading a grid, loading a recipe)
against one conservative character set that is a valid file name on every common file system
and never a path: ASCII letters, digits, ``_``, ``-`` and ``.``, starting with a letter or digit
(so never ``.``, ``..`` or a hidden file), at most ``MAX_NAME`` characters.
"""

from __future__ import annotations

import re

MAX_NAME = 128
SAFE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")
ALLOWED = "ASCII letters, digits, '_', '-' and '.', starting with a letter or digit"


def name_problem(value: object) -> str | None:
    """Why ``value`` cannot be a file name here, or None when it can."""
    if value is None:
        return "is empty (null)"
    if not isinstance(value, str | int) or isinstance(value, bool):
        return f"is a {type(value).__name__}, not text"
    text = str(value)
    if not text.strip():
        return "is empty"
    if "/" in text or "\\" in text:
        return "contains a path separator"
    if ".." in text:
        return "contains '..'"
    if len(text) > MAX_NAME:
        return f"is longer than {MAX_NAME} characters"
    if not SAFE_NAME.fullmatch(text):
        return f"is not a safe file name ({ALLOWED})"
    return None


def is_safe_name(value: object) -> bool:
    return name_problem(value) is None
