"""Files that only ever appear whole: the one atomic write every stage uses."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

TEMPORARY_PREFIX = ".tmp-"


def atomic_write(
    path: Path, content: bytes | Callable[[BinaryIO], object], *, mode: int = 0o644
) -> None:
    """Write ``content`` (bytes, or a function writing to a binary stream) to ``path`` atomically.

    The data goes to ``.tmp-<name>.<random>`` in the same directory, is fsynced, and is then
    renamed over ``path`` (``os.replace``, atomic on one filesystem): readers see the old file
    or the new one, never a partial write. ``mode`` is set explicitly because ``mkstemp``
    creates files 0600: 0644 (the default) for shared caches and reference sets, 0600 for
    private data such as quarantined inputs.

    >>> import tempfile, pathlib
    >>> target = pathlib.Path(tempfile.mkdtemp()) / "a.bin"
    >>> atomic_write(target, b"hello"); target.read_bytes(), oct(target.stat().st_mode & 0o777)
    (b'hello', '0o644')
    """
    fd, name = tempfile.mkstemp(dir=path.parent, prefix=f"{TEMPORARY_PREFIX}{path.name}.")
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as stream:
            if isinstance(content, bytes):
                stream.write(content)
            else:
                content(stream)
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(name, path)
    except BaseException:
        Path(name).unlink(missing_ok=True)
        raise
