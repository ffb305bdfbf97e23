"""Digests of bytes: the sha256 of a file, of a file's prefix, and of a stream as it passes.

:class:`Digester` is the one hasher of the engine: it takes bytes in order and gives their
digests. It is the place where another digest (e.g. the DANDI etag) would be added, so every
caller gets it at once.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from pathlib import Path

CHUNK = 1 << 20  # 1 MiB reads/writes


class Digester:
    """The digests of the bytes given to :meth:`update`, in order; ``size`` counts them."""

    def __init__(self) -> None:
        self._sha256 = hashlib.sha256()
        self.size = 0

    def update(self, data: bytes | bytearray | memoryview) -> None:
        self._sha256.update(data)
        self.size += len(data)

    @property
    def sha256(self) -> str:
        return self._sha256.hexdigest()

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
