"""Atomic file writes and checksums: what every package that writes artifacts shares.

Every file is written to a temporary sibling and renamed, so a killed process leaves either
the old file or the new one, never half of one.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from core.errors import ArtifactError

DISK_FULL_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG})
"""``OSError`` numbers of a write that found no room: the disk or the quota is full, or the file
would pass the size limit (``ulimit -f``)."""


@contextmanager
def disk_full_as_error(path: Path) -> Iterator[None]:
    """Turn a write's "no space" :class:`OSError` (see :data:`DISK_FULL_ERRNOS`) into an
    :class:`~core.errors.ArtifactError` that names ``path`` and the fix; other errors pass through.

    Raises:
        ArtifactError: the disk or quota is full, or the file passed the size limit.
    """
    try:
        yield
    except OSError as exc:
        if exc.errno not in DISK_FULL_ERRNOS:
            raise
        raise ArtifactError(path, f"could not be written ({os.strerror(exc.errno)}); free space on its disk "
                                  f"(or raise the quota / ulimit -f) or set output_dir to a folder on a "
                                  f"larger disk, then rerun: finished files are kept") from None


def sha256_file(path: Path, chunk_bytes: int = 1 << 20) -> str:
    """Hex SHA-256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(chunk_bytes):
            digest.update(chunk)
    return digest.hexdigest()


@contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """Yield a temporary sibling of ``path`` to write; rename it onto ``path`` on success.

    On an exception the temporary file is removed and ``path`` is left as it was.

    Raises:
        ArtifactError: the write ran out of disk space (see :func:`disk_full_as_error`).
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with disk_full_as_error(path):
            yield tmp
            os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


@contextmanager
def atomic_dir(path: Path) -> Iterator[Path]:
    """Yield an empty temporary sibling folder to fill; on success it replaces ``path``.

    On an exception the temporary folder is removed and ``path`` is left as it was.

    Raises:
        ArtifactError: the write ran out of disk space (see :func:`disk_full_as_error`).
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        with disk_full_as_error(path):
            yield tmp
        shutil.rmtree(path, ignore_errors=True)
        os.replace(tmp, path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def atomic_write_text(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file and a rename (atomic on POSIX)."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def atomic_write_json(path: Path, payload: Any) -> None:
    """Write ``payload`` as indented JSON, atomically."""
    atomic_write_text(path, json.dumps(payload, indent=2, sort_keys=True, default=str) + "\n")


def read_json(path: Path) -> Any:
    """Read a JSON artifact; a missing or corrupt file is an :class:`ArtifactError`."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ArtifactError(path, "missing; run the stage that writes it first") from None
    except json.JSONDecodeError as exc:
        raise ArtifactError(path, f"not valid JSON ({exc}); delete it and rerun the stage") from None
