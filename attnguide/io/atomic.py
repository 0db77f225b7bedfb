"""The one atomic writer of attnguide.

Every file attnguide writes (checkpoints, configs, JSON, label PNGs, saved CAMs,
pictures) goes through :func:`atomic_write`: the content goes to a temporary file
in the destination's folder, which is then moved over the destination with
``os.replace``. A reader never sees half a file, and a run killed at any moment
leaves either the old file or the new one. Files get the permissions of a plain
``open()`` (``0666`` less the umask).
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO


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
    tmp = path.parent / f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:12]}.tmp"
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
