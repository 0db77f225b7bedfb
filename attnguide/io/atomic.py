"""The one atomic writer of attnguide.

Every file attnguide writes (checkpoints, configs, JSON, label PNGs, saved CAMs,
pictures) goes through :func:`atomic_write`: the content goes to a temporary file
in the destination's folder, which is then moved over the destination with
``os.replace``. A reader never sees half a file, and a run killed at any moment
leaves either the old file or the new one. Files get the permissions of a plain
``open()`` (``0666`` less the umask).

A process killed with SIGKILL (or a power loss) while writing cannot remove its
temporary file. Those files have recognisable names,
``.NAME.attnguide-HOST-PID-RANDOM.tmp`` (:func:`temp_name`), and
:func:`clean_stale` removes the ones whose writer is gone: a job that resumes into
its output folder (``train``/``segment`` run folders, ``pseudo-label --resume``) calls it
there first.
"""

from __future__ import annotations

import os
import re
import socket
import time
import uuid
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

# .NAME.attnguide-HOST-PID-RANDOM.tmp: HOST is 8 hex digits of the host name's CRC32
TEMP_RE = re.compile(r"^\.(?P<name>.+)\.attnguide-(?P<host>[0-9a-f]{8})-(?P<pid>\d+)-[0-9a-f]{12}\.tmp$")
# the names earlier versions gave: .NAME.PID.RANDOM.tmp (taken as this host's)
_OLD_TEMP_RE = re.compile(r"^\.(?P<name>.+)\.(?P<pid>\d+)\.[0-9a-f]{12}\.tmp$")
FOREIGN_AGE = 3600.0  # seconds: a temporary file of another host counts as stale after this


def _host() -> str:
    return f"{zlib.crc32(socket.gethostname().encode()):08x}"


def temp_name(path: str | os.PathLike) -> Path:
    """The temporary file :func:`atomic_write` writes before it becomes ``path``:
    ``.NAME.attnguide-HOST-PID-RANDOM.tmp`` next to it (HOST: a hash of the host name,
    PID: the writing process), so that :func:`clean_stale` can tell whether its writer
    still runs."""
    path = Path(path)
    return path.parent / f".{path.name}.attnguide-{_host()}-{os.getpid()}-{uuid.uuid4().hex[:12]}.tmp"


def atomic_write(path: str | os.PathLike, data: bytes | Callable[[BinaryIO], object], *,
                 durable: bool = True) -> Path:
    """Write ``data`` to ``path`` atomically and return the path.

    Args:
        path: the destination; missing parent folders are created.
        data: the bytes, or a function that writes them to the open binary stream
            it is given (``lambda f: image.save(f, format="PNG")``).
        durable: fsync the file and its folder before returning, so that the new
            content survives a power loss too (checkpoints, configs). Off for the
            many small files of a pseudo-label run or a picture, where a rename is enough.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_name(path)
    try:
        with open(tmp, "xb") as stream:  # "xb", not mkstemp: the umask's mode, not 0600
            if callable(data):
                data(stream)
            else:
                stream.write(data)
            if durable:
                stream.flush()
                os.fsync(stream.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    if durable:
        _fsync_dir(path.parent)
    return path


def _alive(pid: int) -> bool:
    """Whether process ``pid`` runs on this host (one we may not signal counts as running)."""
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # another user's process (PermissionError), or a platform without signals
        return True
    return True


def is_stale(path: str | os.PathLike, *, foreign_age: float = FOREIGN_AGE) -> bool:
    """Whether ``path`` is a temporary file of :func:`atomic_write` whose writer is gone:
    its process no longer runs on this host, or, written on another host (a shared
    file system), it has not changed for ``foreign_age`` seconds. Any other file: False."""
    path = Path(path)
    match = TEMP_RE.match(path.name)
    if match is None:
        match = _OLD_TEMP_RE.match(path.name)
        host = _host()
    else:
        host = match["host"]
    if match is None:
        return False
    if host == _host():
        return not _alive(int(match["pid"]))
    try:
        return time.time() - path.stat().st_mtime > foreign_age
    except FileNotFoundError:  # its writer has just renamed it
        return False


def clean_stale(folder: str | os.PathLike, *, recursive: bool = True,
                foreign_age: float = FOREIGN_AGE) -> list[Path]:
    """Remove the temporary files that killed writers left in ``folder`` and return them.

    Only files named by :func:`temp_name` (and the older ``.NAME.PID.RANDOM.tmp``) whose
    writer is gone (:func:`is_stale`) are removed; the destination files themselves are
    never touched, and neither is a temporary file a running process is writing. A job
    that resumes into its output folder calls this first. A missing folder holds nothing.

    Args:
        folder: the folder to clean.
        recursive: also its subfolders (a pseudo-label run writes into ``crf/`` and ``cams/``).
        foreign_age: seconds after which another host's temporary file counts as stale.
    """
    folder = Path(folder)
    if not folder.is_dir():
        return []
    removed = []
    for path in sorted(folder.rglob(".*.tmp") if recursive else folder.glob(".*.tmp")):
        if path.is_file() and not path.is_symlink() and is_stale(path, foreign_age=foreign_age):
            try:
                path.unlink()
            except FileNotFoundError:  # removed meanwhile
                continue
            removed.append(path)
    return removed


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # pragma: no cover - e.g. Windows
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover
        pass
    finally:
        os.close(fd)
