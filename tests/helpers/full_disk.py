"""A stand-in for ``open`` on a full disk: the file is created, every write fails with ENOSPC.

Tests patch it in as the ``open`` of the one module that writes (``monkeypatch.setattr(module,
"open", FullDiskFile, raising=False)``), so the code under test meets a full disk exactly where
a real one would stop it.
"""

from __future__ import annotations

import builtins
import errno
from typing import Any


class FullDiskFile:
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.handle = builtins.open(*args, **kwargs)  # noqa: SIM115  (closed by __exit__)

    def __enter__(self) -> FullDiskFile:
        return self

    def __exit__(self, *exc: object) -> None:
        self.handle.close()

    def write(self, data: Any) -> int:
        raise OSError(errno.ENOSPC, "No space left on device")
