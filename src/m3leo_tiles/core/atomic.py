"""Writing files in folders someone else may have planted links in: never through a symlink.

Output folders are shared (a cluster's scratch space, a dataset unpacked from an archive), so
a name the tool writes may already be a symbolic link to a file elsewhere. Opening it to write
(``open(path, "w")``, a FileHandler's append) would write into that other file. Two ways
avoid it, and every writer of the package uses one of them:

* whole files (chips, manifests after compaction, grids, statistics, checkpoints, plots):
  written to a fresh temporary file beside the target, created with ``O_EXCL`` (``mkstemp``:
  an existing name, a planted link included, is never opened), then renamed over the
  target. A rename replaces a link itself, never the file it points to; readers never see
  a half-written file either.
* appends (``fetch.log``, the manifest during a run, lock files): opened with
  ``O_NOFOLLOW``; a link there is refused with one line naming it.
"""

from __future__ import annotations

import contextlib
import errno
import io
import logging
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TextIO

from m3leo_tiles.core.errors import ConfigError

PARTIAL_SUFFIX = ".part"  # a chip's (or manifest's) partial file: a run removes those it finds
TEMPORARY_SUFFIX = ".tmp"  # other writers': never removed by a run in the same folder


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


# Read once: os.umask can only be read by setting it, which is not safe while writer threads
# create files.
FILE_MODE = 0o666 & ~_umask()
FOLDER_MODE = 0o777 & ~_umask()


def fsync_folder(folder: Path) -> None:
    """Make a rename in ``folder`` durable (POSIX: the entry lives in the folder's data)."""
    try:
        fd = os.open(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:  # a platform or file system without directory handles
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@contextmanager
def replacing(path: Path, *, durable: bool = False, suffix: str = TEMPORARY_SUFFIX,
              make_parent: bool = True) -> Iterator[Path]:  # fmt: skip
    """A new hidden file beside ``path`` (``.<name>.<pid>.<random><suffix>``) to write; on
    success it is renamed onto ``path``, on failure removed.

    ``durable`` fsyncs the file before the rename and the folder after it: without both a
    power cut may leave an empty or short file under the final name (ext4, XFS, btrfs).
    The file gets the permissions an ordinary ``open`` would give (0666 less the umask),
    not ``mkstemp``'s 0600.
    """
    path = Path(path)
    if make_parent:
        path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.{os.getpid()}.", suffix=suffix,
                                dir=path.parent)  # fmt: skip
    temporary = Path(name)
    try:
        os.fchmod(fd, FILE_MODE)
        os.close(fd)
        yield temporary
        if durable:
            descriptor = os.open(temporary, os.O_RDONLY | os.O_NOFOLLOW)
            try:
                os.fsync(descriptor)
            finally:
                os.close(descriptor)
        os.replace(temporary, path)
        if durable:
            fsync_folder(path.parent)
    finally:
        with contextlib.suppress(OSError):
            temporary.unlink()


@contextmanager
def replacing_folder(path: Path) -> Iterator[Path]:
    """A new hidden folder beside ``path`` (``.<name>.<pid>.<random>.tmp``) to fill; on success
    it takes ``path``'s place whole, on failure it is removed and ``path`` stays as it was.

    ``mkdtemp`` makes a fresh name, never one someone planted a link at; a link planted at
    ``path`` itself is replaced, not followed. An older folder is moved aside before the
    rename and removed after it. The folder gets an ordinary folder's permissions, not
    ``mkdtemp``'s 0700 (which would hide it from the group).
    """
    path = Path(path)
    staging = Path(tempfile.mkdtemp(prefix=f".{path.name}.{os.getpid()}.",
                                    suffix=TEMPORARY_SUFFIX, dir=path.parent))  # fmt: skip
    os.chmod(staging, FOLDER_MODE)
    try:
        yield staging
        old = staging.with_suffix(".old")  # as unique as the staging folder
        if path.is_symlink():
            path.unlink()
        elif path.exists():
            path.rename(old)
        staging.rename(path)
        shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def write_bytes(path: Path, payload: bytes, *, durable: bool = False,
                suffix: str = TEMPORARY_SUFFIX) -> None:  # fmt: skip
    """``payload`` as the whole new content of ``path`` (see ``replacing``)."""
    with replacing(path, suffix=suffix) as temporary, open(temporary, "wb") as handle:
        handle.write(payload)
        if durable:  # on the open handle: cheaper than replacing's reopen
            handle.flush()
            os.fsync(handle.fileno())
    if durable:
        fsync_folder(Path(path).parent)


def write_text(path: Path, text: str, *, durable: bool = False,
               suffix: str = TEMPORARY_SUFFIX) -> None:  # fmt: skip
    """``text`` (UTF-8) as the whole new content of ``path`` (see ``replacing``)."""
    write_bytes(path, text.encode("utf-8"), durable=durable, suffix=suffix)


def refuse_link(path: Path) -> ConfigError:
    """The one-line refusal for a symbolic link where the tool writes."""
    return ConfigError(f"{path} is a symbolic link; refusing to write through it (remove it)")


def open_no_follow(path: Path, flags: int, mode: int = 0o666) -> int:
    """``os.open`` with ``O_NOFOLLOW | O_CLOEXEC``: a symbolic link at ``path`` is refused."""
    try:
        return os.open(path, flags | os.O_NOFOLLOW | os.O_CLOEXEC, mode)
    except OSError as error:
        if error.errno == errno.ELOOP:
            raise refuse_link(path) from None
        raise


def open_append(path: Path, *, encoding: str = "utf-8", newline: str | None = None) -> TextIO:
    """``path`` opened to append text (created if missing), never through a symbolic link."""
    fd = open_no_follow(Path(path), os.O_WRONLY | os.O_APPEND | os.O_CREAT)
    return os.fdopen(fd, "a", encoding=encoding, newline=newline)


def ends_torn(path: Path) -> bool:
    """Whether an append log (manifest, input lists) exists, is not empty and does not end
    with a newline: a run died mid-line, and the next append must end that line first."""
    try:
        with Path(path).open("rb") as handle:
            handle.seek(-1, io.SEEK_END)
            return handle.read(1) != b"\n"
    except OSError:  # missing, or empty (no byte before the end)
        return False


class NoFollowFileHandler(logging.FileHandler):
    """A ``FileHandler`` whose file is opened with ``open_append``: a ``fetch.log`` planted
    as a link to another file is refused, not appended to."""

    def _open(self) -> TextIO:  # type: ignore[override]
        return open_append(Path(self.baseFilename), encoding=self.encoding or "utf-8")
