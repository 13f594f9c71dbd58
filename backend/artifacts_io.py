"""Files written whole: a temporary sibling, fsynced, then renamed onto the target.

The artifact root is shared between hosts (NFS or similar). A rename within one folder is
atomic there too, so a reader on another host sees the old file or the new one, never half of
one. The temporary name starts with "." and ends with ".tmp-<random>", so listings and globs
of the artifact folders pass over it.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
from collections.abc import Iterator
from pathlib import Path

__all__ = ["atomic_path", "copy_atomic", "write_bytes_atomic", "write_text_atomic"]


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """A temporary path beside `path` to write; renamed onto `path` on success, removed on error."""
    target = Path(path)
    # the caller creates the file itself, so it gets the usual umask permissions (mkstemp's
    # 0600 would hide it from a worker or API that runs as another user)
    temporary = target.with_name(f".{target.name}.tmp-{secrets.token_hex(8)}")
    try:
        yield temporary
        with open(temporary, "rb") as written:
            os.fsync(written.fileno())  # the data reaches the server before the name does
        os.replace(temporary, target)
    finally:
        temporary.unlink(missing_ok=True)


def write_bytes_atomic(path: str | os.PathLike[str], data: bytes) -> None:
    """Write `data` to `path` whole (atomic_path)."""
    with atomic_path(path) as temporary:
        temporary.write_bytes(data)


def write_text_atomic(path: str | os.PathLike[str], text: str, encoding: str = "utf-8") -> None:
    """Write `text` to `path` whole (atomic_path)."""
    with atomic_path(path) as temporary:
        temporary.write_text(text, encoding=encoding)


def copy_atomic(src: str | os.PathLike[str], dst: str | os.PathLike[str]) -> None:
    """Copy the file `src` to `dst` whole (atomic_path); the data only, like shutil.copyfile."""
    with atomic_path(dst) as temporary:
        shutil.copyfile(src, temporary)
