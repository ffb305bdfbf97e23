"""Digests of bytes: the sha256 of a file, of a file's prefix, and of a stream as it passes.

:class:`Digester` is the one hasher of the engine: it takes bytes in order and gives both digests
the DANDI Archive publishes for a file (docs/dandi.md §4), in the same pass: the sha256 and the
dandi-etag (the md5 of the concatenated md5s of 64 MiB parts, ``-<parts>``).
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from pathlib import Path

CHUNK = 1 << 20  # 1 MiB reads/writes
ETAG_PART = 64 << 20  # dandi-etag part size (docs/dandi.md §4)
ETAG_MAX_PARTS = 10_000  # beyond this the archive uses larger parts: a ~640 GB file, none here


class Digester:
    """The digests of the bytes given to :meth:`update`, in order; ``size`` counts them."""

    def __init__(self) -> None:
        self._sha256 = hashlib.sha256()
        self._part = hashlib.md5()  # the dandi-etag's current part
        self._part_left = ETAG_PART
        self._parts: list[bytes] = []
        self.size = 0

    def update(self, data: bytes | bytearray | memoryview) -> None:
        self._sha256.update(data)
        self.size += len(data)
        view = memoryview(data)
        while len(view) >= self._part_left:  # close the parts this block completes
            self._part.update(view[: self._part_left])
            view = view[self._part_left :]
            self._parts.append(self._part.digest())
            self._part, self._part_left = hashlib.md5(), ETAG_PART
        if len(view):
            self._part.update(view)
            self._part_left -= len(view)

    @property
    def sha256(self) -> str:
        return self._sha256.hexdigest()

    @property
    def dandi_etag(self) -> str | None:
        """The DANDI Archive's etag of the bytes so far; None past 10,000 parts (the archive
        then sizes parts from the file's size, which a stream does not know in advance)."""
        parts = list(self._parts)
        if self._part_left < ETAG_PART:
            parts.append(self._part.digest())
        if len(parts) > ETAG_MAX_PARTS:
            return None
        return f"{hashlib.md5(b''.join(parts)).hexdigest()}-{len(parts)}"

    @classmethod
    def of_file(
        cls,
        path: str | os.PathLike,
        length: int | None = None,
        *,
        progress: Callable[[int], None] | None = None,
    ) -> Digester:
        """The digests of the first ``length`` bytes of ``path`` (all of it if None); OSError if
        the file is shorter. ``progress(bytes_so_far)`` is called after each chunk."""
        d = cls()
        buf = bytearray(CHUNK)
        view = memoryview(buf)
        with open(path, "rb", buffering=0) as f:
            while length is None or d.size < length:
                want = CHUNK if length is None else min(CHUNK, length - d.size)
                k = f.readinto(view[:want])
                if not k:
                    if length is not None:
                        raise OSError(f"{path} is shorter than {length} bytes")
                    break
                d.update(view[:k])
                if progress is not None:
                    progress(d.size)
        return d


def sha256_file(path: str | os.PathLike, *, progress=None) -> tuple[int, str]:
    """(size, sha256 hex) of ``path``. ``progress``: an object with ``update(bytes_so_far)``."""
    d = Digester.of_file(Path(path), progress=progress.update if progress is not None else None)
    return d.size, d.sha256
