"""Parallel byte ranges of one file: ``connections`` threads take the file's pieces in order,
each writing in place into a sparse ``.part``; the sidecar records each piece's progress every
few seconds (never claiming bytes not yet on disk), so a killed transfer resumes every piece
where it stopped.

Pieces are taken in file order and are small beside the file (about :data:`PIECE` bytes, a
multiple of ``connections`` of them), so the bytes arrive close to in order: a hasher thread
follows the contiguous prefix as it fills, and when the last piece lands only the last few
pieces remain to be hashed, not the whole file.
"""

from __future__ import annotations

import itertools
import json
import os
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import requests

from .digests import CHUNK, Digester
from .http import (
    NETWORK_ERRORS,
    RateFloor,
    RemoteInfo,
    iter_body,
    parse_content_range,
    range_headers,
    short_exc,
    status_failure,
    validator,
)
from .progress import Progress, fmt_bytes
from .retry import AttemptFailed, RangesUnsupported
from .state import PartState

MIN_RANGE = 8 << 20  # smallest per-connection range in parallel mode
PIECE = 32 << 20  # about the bytes one range request asks for (more, smaller pieces: see above)
_SIDECAR_PERSIST_INTERVAL = 2.0


def prepare(state: PartState, url: str, info: RemoteInfo, connections: int) -> None:
    """Split the file ``info`` describes into ranges and prepare a sparse .part, keeping a
    single-stream prefix of the same file; RangesUnsupported if the file is too small to split."""
    size = info.size
    n = max(1, min(connections, size // MIN_RANGE))
    if n == 1:
        raise RangesUnsupported(f"the file is small ({fmt_bytes(size)})")
    new = {"url": url, "etag": info.etag, "last_modified": info.last_modified, "size": size}
    prefix = 0
    if state.meta and state.total == size and validator(state.meta) == validator(new):
        prefix = state.size()  # a single-stream .part of the same file: keep it
    # n pieces per round, so every connection has one in each round (no lone last piece)
    pieces = n * max(1, round(size / (n * PIECE)))
    step = -(-size // pieces)
    new["ranges"] = [
        [start, end, max(0, min(prefix - start, end - start))]
        for start, end in ((i * step, min(size, (i + 1) * step)) for i in range(pieces))
        if start < end
    ]
    if prefix:
        state.save(new)
    else:
        state.restart(new)
    with open(state.part, "r+b") as f:
        f.truncate(size)  # sparse; each range is written in place


class ParallelRun:
    """One parallel attempt over the pieces of ``state``: ``connections`` threads take the
    unfinished pieces in file order, each sending ``open_range(headers)`` and writing the body in
    place, while a :class:`PrefixHasher` extends ``state.digest`` over the contiguous prefix;
    ``fetched`` counts the bytes received."""

    def __init__(
        self,
        state: PartState,
        open_range: Callable[[dict[str, str]], requests.Response],
        prog: Progress,
        connections: int,
    ):
        self.state, self.open_range, self.prog = state, open_range, prog
        self.connections = connections
        self.meta = state.meta
        self.ranges = self.meta["ranges"]
        self.lock = threading.Lock()
        self.stop = threading.Event()
        self.progressed = threading.Event()  # set when a piece grows (wakes the hasher)
        self.errors: list[BaseException] = []
        self.done = sum(r[2] for r in self.ranges)
        self.fetched = 0
        self._first_open = 0  # index of the first unfinished piece (only moves forward)
        # prepare() tiles [0, size) with pieces in file order; a sidecar that does not is
        # fetched all the same, and hashed once complete instead of as it fills
        r = self.ranges
        self._tiled = bool(r) and r[0][0] == 0
        self._tiled &= all(a[1] == b[0] for a, b in itertools.pairwise(r))

    def frontier(self) -> int:
        """The end of the contiguous prefix of received bytes."""
        with self.lock:
            i, ranges = self._first_open, self.ranges
            while i < len(ranges) and ranges[i][2] >= ranges[i][1] - ranges[i][0]:
                i += 1
            self._first_open = i
            if not self._tiled:
                return 0
            return ranges[-1][1] if i == len(ranges) else ranges[i][0] + ranges[i][2]

    def fetch_all(self) -> None:
        todo = [r for r in self.ranges if r[2] < r[1] - r[0]]
        hasher = PrefixHasher(self.state, self.frontier, self.progressed)
        try:
            fd = os.open(self.state.part, os.O_WRONLY)
            try:
                workers = max(1, min(self.connections, len(todo)))
                with ThreadPoolExecutor(max_workers=workers) as pool:
                    futs = [pool.submit(self.run, r) for r in todo]  # taken in file order
                    next_persist = time.monotonic() + _SIDECAR_PERSIST_INTERVAL
                    while not all(f.done() for f in futs):
                        time.sleep(0.2)
                        self.prog.update(self.done)
                        if time.monotonic() >= next_persist:
                            next_persist = time.monotonic() + _SIDECAR_PERSIST_INTERVAL
                            self.persist(fd)
                self.persist(fd)
            finally:
                os.close(fd)
        finally:
            self.state.digest = hasher.finish()

    def persist(self, fd: int) -> None:
        # Snapshot (counts only bytes already pwritten), then fsync, then record: the sidecar
        # never claims bytes that are not on disk, even after a power loss.
        with self.lock:
            snapshot = json.loads(json.dumps(self.meta))
        os.fsync(fd)
        self.state.save_snapshot(snapshot)

    def raise_failure(self) -> None:
        """Raise what the ranges' failures mean together (nothing if none failed)."""
        errors = self.errors
        unsupported = [e for e in errors if isinstance(e, RangesUnsupported)]
        if unsupported:
            raise unsupported[0]
        if errors:
            fatal = any(getattr(e, "fatal", False) for e in errors)
            ras = [e.retry_after for e in errors if getattr(e, "retry_after", None) is not None]
            reason = "; ".join(getattr(e, "reason", None) or short_exc(e) for e in errors)
            raise AttemptFailed(reason, fatal=fatal, retry_after=max(ras) if ras else None)
        if any(r[2] < r[1] - r[0] for r in self.ranges):  # pragma: no cover - defensive
            raise AttemptFailed("some ranges are incomplete")

    def run(self, r: list[int]) -> None:
        if self.stop.is_set():
            return  # a fatal failure elsewhere: no new requests
        try:
            self.fetch(r)
        except BaseException as e:  # collected; the main thread decides
            with self.lock:
                self.errors.append(e)
            if isinstance(e, RangesUnsupported) or getattr(e, "fatal", False):
                self.stop.set()

    def fetch(self, r: list[int]) -> None:
        start, end, done = r
        pos = start + done
        if pos >= end:
            return
        headers = range_headers(self.meta, pos, end)
        fd = os.open(self.state.part, os.O_WRONLY)
        try:
            with self.open_range(headers) as resp:
                if resp.status_code == 200:
                    raise RangesUnsupported(
                        "the server answered a Range request with 200 (ranges ignored, or "
                        "the file changed)"
                    )
                if resp.status_code != 206:
                    raise status_failure(resp)
                cr = parse_content_range(resp.headers.get("Content-Range"))
                if (
                    cr is None
                    or cr[0] != pos
                    or cr[1] != end - 1
                    or cr[2] not in (None, self.state.total)
                ):
                    raise AttemptFailed(
                        f"range {pos}-{end - 1}: bad Content-Range "
                        f"{resp.headers.get('Content-Range')!r}"
                    )
                self.write_body(resp, r, fd, pos)
        finally:
            os.close(fd)

    def write_body(self, resp: requests.Response, r: list[int], fd: int, pos: int) -> None:
        """Write the body of range ``r`` in place from ``pos``, counting it into ``r[2]``."""
        start, end, _ = r
        got = 0
        floor = RateFloor()
        try:
            for chunk in iter_body(resp):
                if self.stop.is_set():
                    return
                if slow := floor.too_slow(got):
                    raise AttemptFailed(f"range {start}-{end - 1}: {slow} after {got} bytes")
                chunk = chunk[: end - pos]
                view = memoryview(chunk)
                while view:
                    k = os.pwrite(fd, view, pos)
                    view, pos = view[k:], pos + k
                got += len(chunk)
                with self.lock:
                    r[2] += len(chunk)
                    self.done += len(chunk)
                    self.fetched += len(chunk)
                self.progressed.set()
                if pos >= end:
                    break
        except NETWORK_ERRORS as e:
            raise AttemptFailed(
                f"range {start}-{end - 1}: {type(e).__name__}: {short_exc(e)} after {got} bytes"
            ) from e
        if pos < end:
            raise AttemptFailed(f"range {start}-{end - 1}: body ended at byte {pos}")


class PrefixHasher:
    """Extends the .part's digest over its contiguous prefix, in a thread, while later pieces
    still arrive: the digest ``state.digest`` had (a single-stream prefix, an earlier attempt),
    else a new one. ``frontier()`` says where the prefix ends; ``progressed`` wakes the thread.
    """

    def __init__(self, state: PartState, frontier: Callable[[], int], progressed: threading.Event):
        digest = state.digest
        if digest is None or digest.size > frontier():
            digest = Digester()
        self.digest, self.path = digest, state.part
        self.frontier, self.progressed = frontier, progressed
        self.ending = threading.Event()
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, name=f"hash {state.name}", daemon=True)
        self.thread.start()

    def finish(self) -> Digester | None:
        """Hash the rest of the prefix and stop; the digest, or None if reading failed (the
        .part is then hashed again when verified)."""
        self.ending.set()
        self.progressed.set()
        self.thread.join()
        return None if self.error is not None else self.digest

    def _run(self) -> None:
        d = self.digest
        try:
            fd = os.open(self.path, os.O_RDONLY)
            try:
                with d.in_two_threads():
                    while True:
                        last = self.ending.is_set()  # before frontier(): then it is the final one
                        end = self.frontier()
                        while d.size < end:
                            block = os.pread(fd, min(CHUNK, end - d.size), d.size)
                            if not block:
                                raise OSError(f"{self.path} ends at {d.size}, before {end}")
                            d.update(block)
                        if last:
                            return
                        self.progressed.wait(0.5)
                        self.progressed.clear()
            finally:
                os.close(fd)
        except BaseException as e:  # noqa: BLE001 - finish() reports it as "hash again"
            self.error = e
