"""Digests of bytes: the sha256 of a file, of a file's prefix, and of a stream as it passes.

:class:`Digester` is the one hasher of the engine: it takes bytes in order and gives both digests
the DANDI Archive publishes for a file (docs/dandi.md §4), in the same pass: the sha256 and the
dandi-etag (the md5 of the concatenated md5s of 64 MiB parts, ``-<parts>``). Inside
:meth:`Digester.in_two_threads` the two run on two cores (md5, the slower, in a helper thread).
"""

from __future__ import annotations

import hashlib
import os
import queue
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

CHUNK = 1 << 20  # 1 MiB reads/writes
ETAG_PART = 64 << 20  # dandi-etag part size (docs/dandi.md §4)
ETAG_MAX_PARTS = 10_000  # beyond this the archive uses larger parts: a ~640 GB file, none here
_ETAG_QUEUE = 16  # blocks waiting for the md5 thread (bounded memory; the feeder waits beyond)


class Digester:
    """The digests of the bytes given to :meth:`update`, in order; ``size`` counts them."""

    def __init__(self) -> None:
        self._sha256 = hashlib.sha256()
        self._part = hashlib.md5()  # the dandi-etag's current part
        self._part_left = ETAG_PART
        self._parts: list[bytes] = []
        self.size = 0
        self._etag_q: queue.Queue[bytes | None] | None = None  # set inside in_two_threads

    @contextmanager
    def in_two_threads(self) -> Iterator[Digester]:
        """Within the block, :meth:`update` hashes the sha256 in the calling thread and hands
        the block to a helper thread for the dandi-etag's md5 (hashlib releases the GIL on large
        blocks, so the two digests use two cores: md5, ~2x slower than sha256 with SHA-NI, no
        longer adds to it). Both digests are complete when the block exits."""
        if self._etag_q is not None:  # already in two threads (a nested block): nothing to do
            yield self
            return
        q: queue.Queue[bytes | None] = queue.Queue(maxsize=_ETAG_QUEUE)
        error: list[BaseException] = []

        def run() -> None:
            while (block := q.get()) is not None:
                if not error:
                    try:
                        self._etag_update(block)
                    except BaseException as e:  # noqa: BLE001 - raised in the caller below
                        error.append(e)

        thread = threading.Thread(target=run, name="dandi-etag md5", daemon=True)
        thread.start()
        self._etag_q = q
        try:
            yield self
        finally:
            q.put(None)
            thread.join()
            self._etag_q = None
        if error:
            raise error[0]

    def update(self, data: bytes | bytearray | memoryview) -> None:
        self._sha256.update(data)
        self.size += len(data)
        if self._etag_q is None:
            self._etag_update(data)
        else:  # the md5 thread reads it later: it must not change, so bytes (or a copy)
            self._etag_q.put(data if isinstance(data, bytes) else bytes(data))

    def _etag_update(self, data: bytes | bytearray | memoryview) -> None:
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
        then sizes parts from the file's size, which a stream does not know in advance). Not
        inside :meth:`in_two_threads` (the helper may still be hashing)."""
        if self._etag_q is not None:
            raise RuntimeError("dandi_etag is complete only after in_two_threads() exits")
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
        with open(path, "rb", buffering=0) as f, d.in_two_threads():
            while length is None or d.size < length:
                want = CHUNK if length is None else min(CHUNK, length - d.size)
                block = f.read(want)  # a new bytes object: the md5 thread still reads the last
                if not block:
                    if length is not None:
                        raise OSError(f"{path} is shorter than {length} bytes")
                    break
                d.update(block)
                if progress is not None:
                    progress(d.size)
        return d


def sha256_file(path: str | os.PathLike, *, progress=None) -> tuple[int, str]:
    """(size, sha256 hex) of ``path``. ``progress``: an object with ``update(bytes_so_far)``."""
    d = Digester.of_file(Path(path), progress=progress.update if progress is not None else None)
    return d.size, d.sha256
