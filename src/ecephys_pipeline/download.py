"""One verified, resumable HTTP transfer, plus disk-space preflight and the lock file helpers.

``download_file(url, dest)`` is the only way bytes reach the cache. Guarantees:

* Nothing half-written is ever at ``dest``: bytes stream into ``dest.part`` next to a sidecar
  ``dest.part.json`` ({url, etag, last_modified, size}); the file is verified (byte count against
  Content-Length and the expected size, sha256 computed in the same pass, opened as HDF5) and only
  then renamed to ``dest``. A record ``dest.download.json`` ({path, size, sha256, url, etag,
  last_modified}) says what was verified.
* A ``.part`` left by a dropped connection, a stalled socket or a killed process is resumed with
  ``Range`` guarded by ``If-Range`` (or by the total size when the server sends no validator); a
  server that answers 200 instead of 206 restarts the file from zero. Resumed files are re-hashed
  in full (prefix from disk, then the hash continues over the streamed bytes).
* Each socket read has a timeout (a stalled transfer is noticed in seconds, not never), failed
  attempts back off exponentially with full jitter, ``Retry-After`` is honoured (capped), and the
  final ``DownloadError`` lists what happened on every attempt.
* A file that differs from the expected sha256 (lock file) is renamed to
  ``dest.mismatch-<sha8>`` and never used.

AllenSDK does none of this (W§1.6, W§3.2): it writes straight to the final path with no read
timeout, no resume and no checksum.
"""

from __future__ import annotations

import email.utils
import hashlib
import json
import logging
import math
import os
import queue
import random
import re
import shutil
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import requests
import urllib3

from . import __version__, layout
from .atomic import fsync_dir, write_json
from .lockfile import (  # noqa: F401  (re-exported: the contract puts the lock file here)
    LockError,
    LockMismatchError,
    check_against_lock,
    expected_for,
    read_lock,
    write_lock,
)

try:  # advisory inter-process lock on POSIX; elsewhere we rely on Snakemake's own locking
    import fcntl
except ImportError:  # pragma: no cover
    fcntl = None  # type: ignore[assignment]

log = logging.getLogger(__name__)

CHUNK = 1 << 20  # 1 MiB reads/writes
RETRY_STATUSES = frozenset({408, 429, 500, 502, 503, 504})
MAX_VERIFY_FAILURES = 3  # whole-file restarts after a failed verification (bad sha, not HDF5, ...)
MIN_RANGE = 8 << 20  # smallest per-connection range in parallel mode
PROGRESS_INTERVAL = 5.0  # seconds between progress lines
_SIDECAR_PERSIST_INTERVAL = 2.0
_PIPELINE_DEPTH = 8  # chunks between the receiving and the writing/hashing thread
# A connection that trickles (bytes keep arriving, so the read timeout never fires) is dropped and
# resumed when it delivers less than _LOW_RATE_BPS over _LOW_RATE_WINDOW seconds. The warehouse's
# worst reported rate is ~500 kB/s (AllenSDK #1505), far above this floor.
_LOW_RATE_BPS = 1024
_LOW_RATE_WINDOW = 120.0
_USER_AGENT = f"ecephys-pipeline/{__version__} (+requests {requests.__version__})"


# --------------------------------------------------------------------------- public types


class DownloadError(RuntimeError):
    """A download failed; the message names the file, the URL and every attempt."""


class ChecksumMismatchError(DownloadError):
    """The bytes are not the expected ones (size or sha256)."""


class InsufficientSpaceError(DownloadError):
    """Preflight: the plan does not fit on the cache's file system."""


@dataclass
class DownloadRecord:
    path: str
    size: int
    sha256: str
    url: str | None
    etag: str | None = None
    last_modified: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> DownloadRecord:
        return cls(
            path=str(d["path"]),
            size=int(d["size"]),
            sha256=str(d["sha256"]),
            url=d.get("url"),
            etag=d.get("etag"),
            last_modified=d.get("last_modified"),
        )


@dataclass
class RemoteInfo:
    size: int | None
    etag: str | None
    last_modified: str | None
    accepts_ranges: bool | None


# --------------------------------------------------------------------------- small helpers


def part_path(dest: str | os.PathLike) -> Path:
    return Path(str(dest) + ".part")


def sidecar_path(dest: str | os.PathLike) -> Path:
    return Path(str(dest) + ".part.json")


def record_path(dest: str | os.PathLike) -> Path:
    return Path(str(dest) + layout.RECORD_SUFFIX)


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        with open(path, encoding="utf-8") as f:
            obj = json.load(f)
    except (OSError, ValueError):
        return None
    return obj if isinstance(obj, dict) else None


def _unlink(path: Path) -> None:
    try:
        path.unlink()
    except FileNotFoundError:
        pass


def set_aside(path: Path, sha256: str, why: str, *, dest: Path | None = None) -> Path:
    """Rename a rejected file to ``<dest>.<why>-<sha8>`` (``dest`` defaults to ``path``) so it is
    never used again; return the new path."""
    path = Path(path)
    dest = Path(dest) if dest is not None else path
    aside = Path(f"{dest}.{why}-{sha256[:8]}")
    os.replace(path, aside)
    _unlink(record_path(dest))
    log.warning("moved rejected file %s to %s", path, aside)
    return aside


def sha256_file(path: Path, *, progress: _Progress | None = None) -> tuple[int, str]:
    h = hashlib.sha256()
    n = 0
    with open(path, "rb", buffering=0) as f:
        buf = bytearray(CHUNK)
        view = memoryview(buf)
        while True:
            k = f.readinto(buf)
            if not k:
                break
            h.update(view[:k])
            n += k
            if progress is not None:
                progress.update(n)
    return n, h.hexdigest()


def _hash_prefix(path: Path, length: int) -> hashlib._Hash:
    h = hashlib.sha256()
    left = length
    with open(path, "rb", buffering=0) as f:
        while left > 0:
            chunk = f.read(min(CHUNK, left))
            if not chunk:
                raise OSError(f"{path} is shorter than {length} bytes")
            h.update(chunk)
            left -= len(chunk)
    return h


def _fmt_bytes(n: float | None) -> str:
    if n is None:
        return "? bytes"
    for unit, scale in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if abs(n) >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{int(n)} B"


def _fmt_secs(s: float) -> str:
    if not math.isfinite(s):
        return "?"
    s = int(s)
    return f"{s // 3600}h{s // 60 % 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s"


def _expected_fields(expected: Any) -> dict[str, Any]:
    if expected is None:
        return {}
    d = expected.to_dict() if hasattr(expected, "to_dict") else dict(expected)
    return {k: d.get(k) for k in ("size", "sha256", "etag", "url") if d.get(k) is not None}


def parse_retry_after(value: str | None, *, now: float | None = None) -> float | None:
    """Seconds to wait from a Retry-After header (delta-seconds or an HTTP date); None if absent
    or unparseable."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    now_dt = datetime.fromtimestamp(time.time() if now is None else now, UTC)
    return max(0.0, (when - now_dt).total_seconds())


_CONTENT_RANGE = re.compile(r"^\s*bytes\s+(\d+)-(\d+)/(\d+|\*)\s*$", re.I)
_CONTENT_RANGE_UNSAT = re.compile(r"^\s*bytes\s+\*/(\d+)\s*$", re.I)


def _parse_content_range(value: str | None) -> tuple[int, int, int | None] | None:
    m = _CONTENT_RANGE.match(value or "")
    if not m:
        return None
    total = None if m.group(3) == "*" else int(m.group(3))
    return int(m.group(1)), int(m.group(2)), total


def _int_header(resp: requests.Response, name: str) -> int | None:
    v = resp.headers.get(name)
    try:
        return int(v) if v is not None else None
    except ValueError:
        return None


def _validator(meta: Mapping[str, Any]) -> str | None:
    """The If-Range value: a strong ETag, else Last-Modified (weak ETags never match If-Range)."""
    etag = meta.get("etag")
    if etag and not etag.startswith("W/"):
        return etag
    return meta.get("last_modified")


def _new_session(pool: int = 10) -> requests.Session:
    s = requests.Session()
    s.headers["User-Agent"] = _USER_AGENT
    adapter = requests.adapters.HTTPAdapter(pool_connections=4, pool_maxsize=max(10, pool))
    s.mount("http://", adapter)
    s.mount("https://", adapter)
    return s


# --------------------------------------------------------------------------- progress


class _Progress:
    """Logs "name: done/total (pct) at MB/s, ETA" at most every ``interval`` seconds.

    ``update`` is called per chunk and only compares a monotonic clock; formatting happens when a
    line is due. ``sink`` is a logger, or a callable ``sink(done_bytes, total_bytes)``.
    """

    def __init__(
        self,
        name: str,
        total: int | None,
        sink: Any,
        *,
        start: int = 0,
        interval: float | None = None,
        what: str = "downloaded",
    ):
        interval = PROGRESS_INTERVAL if interval is None else interval
        self.name, self.total, self.interval, self.what = name, total, interval, what
        self.sink = sink
        self.t0 = time.monotonic()
        self.next_at = self.t0 + interval
        self.start = start
        self.done = start

    def update(self, done: int) -> None:
        self.done = done
        now = time.monotonic()
        if now >= self.next_at:
            self.next_at = now + self.interval
            self.emit(now)

    def emit(self, now: float | None = None) -> None:
        now = time.monotonic() if now is None else now
        if callable(self.sink) and not isinstance(self.sink, logging.Logger):
            self.sink(self.done, self.total)
            return
        rate = (self.done - self.start) / max(now - self.t0, 1e-9)
        if self.total:
            eta = (self.total - self.done) / rate if rate > 0 else float("inf")
            self.sink.info(
                "%s: %s %s of %s (%.1f%%) at %.1f MB/s, ETA %s",
                self.name,
                self.what,
                _fmt_bytes(self.done),
                _fmt_bytes(self.total),
                100.0 * self.done / self.total,
                rate / 1e6,
                _fmt_secs(eta),
            )
        else:
            self.sink.info(
                "%s: %s %s at %.1f MB/s", self.name, self.what, _fmt_bytes(self.done), rate / 1e6
            )


# --------------------------------------------------------------------------- remote info


def remote_info(
    url: str, session: requests.Session | None = None, *, timeout: float | tuple = (10, 30)
) -> RemoteInfo:
    """Size and validators of ``url``: HEAD, falling back to ``GET Range: bytes=0-0``."""
    own = session is None
    session = session or _new_session()
    try:
        headers = {"Accept-Encoding": "identity"}
        try:
            r = session.head(url, headers=headers, timeout=timeout, allow_redirects=True)
            if r.status_code == 200 and _int_header(r, "Content-Length") is not None:
                return RemoteInfo(
                    _int_header(r, "Content-Length"),
                    r.headers.get("ETag"),
                    r.headers.get("Last-Modified"),
                    "bytes" in r.headers.get("Accept-Ranges", "").lower() or None,
                )
        except requests.RequestException:
            pass  # try the GET below, and let it raise if the server is really unreachable
        with session.get(
            url, headers={**headers, "Range": "bytes=0-0"}, timeout=timeout, stream=True
        ) as r:
            if r.status_code == 206:
                cr = _parse_content_range(r.headers.get("Content-Range"))
                size = cr[2] if cr else None
                return RemoteInfo(size, r.headers.get("ETag"), r.headers.get("Last-Modified"), True)
            if r.status_code == 200:
                return RemoteInfo(
                    _int_header(r, "Content-Length"),
                    r.headers.get("ETag"),
                    r.headers.get("Last-Modified"),
                    False,
                )
            raise DownloadError(f"cannot get the size of {url}: HTTP {r.status_code} {r.reason}")
    finally:
        if own:
            session.close()


def remote_size(url: str, session: requests.Session | None = None, **kw: Any) -> int | None:
    """Size in bytes of ``url`` (HEAD, else a one-byte Range GET); None if the server won't say."""
    return remote_info(url, session, **kw).size


# --------------------------------------------------------------------------- preflight


def existing_ancestor(path: Path) -> Path:
    path = Path(os.path.abspath(path))
    for p in (path, *path.parents):
        if p.exists():
            return p
    return path  # pragma: no cover - "/" always exists


def bytes_present(dest: str | os.PathLike, size: int | None) -> int:
    """Bytes of ``dest`` already on disk that a download will keep: the finished file, or what
    a resumable ``.part`` holds. A ``.part`` without a sidecar will be discarded (0); a parallel
    ``.part`` is preallocated (sparse), so its sidecar's per-range progress counts, not its size."""
    dest = Path(dest)
    if dest.exists():
        return dest.stat().st_size
    meta = _read_json(sidecar_path(dest))
    part = part_path(dest)
    if meta is None or not part.exists() or size is None:
        return 0
    if meta.get("ranges"):
        return min(sum(done for _start, _end, done in meta["ranges"]), size)
    return min(part.stat().st_size, size)


def check_free_space(
    paths_and_sizes: Iterable[tuple[str | os.PathLike, int | None]],
    cache_dir: str | os.PathLike,
    *,
    reserve_bytes: int = 1 << 30,
) -> int:
    """Refuse (InsufficientSpaceError) before any byte is fetched if the plan does not fit.

    ``paths_and_sizes``: final paths and their remote sizes. Files already at their path count 0;
    bytes already in ``.part`` files are subtracted. ``reserve_bytes`` is kept free on top.
    Returns the bytes still to fetch.
    """
    cache_dir = Path(cache_dir)
    need = 0
    in_parts = 0
    n = 0
    unknown = []
    for path, size in paths_and_sizes:
        path = Path(path)
        if path.exists():
            continue
        if size is None:
            unknown.append(path)
            continue
        n += 1
        have = bytes_present(path, size)
        in_parts += have
        need += size - have
    where = existing_ancestor(cache_dir)
    free = shutil.disk_usage(where).free
    if unknown:
        log.warning(
            "%d files have an unknown size and are not in the space check, e.g. %s",
            len(unknown),
            unknown[0],
        )
    if need + reserve_bytes > free:
        raise InsufficientSpaceError(
            f"the downloads need {need / 1e9:.1f} GB more ({n} files; "
            f"{in_parts / 1e9:.1f} GB already in .part files) plus a {reserve_bytes / 1e9:.1f} GB "
            f"reserve, but only {free / 1e9:.1f} GB is free in {where}; free space or point "
            f"cache_dir elsewhere (or select fewer sessions / set fetch_lfp: false)"
        )
    log.info("preflight: %.1f GB to fetch, %.1f GB free in %s", need / 1e9, free / 1e9, where)
    return need


# --------------------------------------------------------------------------- adopt / verify


def hdf5_problem(path: Path) -> str | None:
    """None if h5py opens ``path``; else a sentence saying what it is instead."""
    import h5py

    try:
        with h5py.File(path, "r") as f:
            list(f.keys())
        return None
    except Exception as e:  # h5py raises OSError, sometimes others; all mean "not usable"
        with open(path, "rb") as f:
            head = f.read(256)
        sniff = head.lstrip()[:1]
        if sniff in (b"<", b"{"):
            snippet = head.decode("utf-8", "replace").strip().replace("\n", " ")[:120]
            return (
                f"is not an HDF5 file: the server sent text instead ({snippet!r}), "
                "probably an error page"
            )
        return f"is not a readable HDF5 file (h5py: {e}); it is probably truncated or corrupt"


def write_record(dest: Path, rec: DownloadRecord) -> None:
    st = dest.stat() if dest.exists() else None
    d = rec.to_dict()
    # mtime_ns lets a rerun trust the file without hashing it again (size + mtime unchanged).
    d["mtime_ns"] = st.st_mtime_ns if st else None
    write_json(record_path(dest), d)


def read_record(dest: str | os.PathLike) -> DownloadRecord | None:
    d = _read_json(record_path(dest))
    try:
        return DownloadRecord.from_dict(d) if d else None
    except (KeyError, TypeError, ValueError):
        return None


def _record_is_fresh(dest: Path) -> DownloadRecord | None:
    """The record if ``dest`` still has the recorded size and mtime (cheap check, no hashing)."""
    d = _read_json(record_path(dest))
    if not d:
        return None
    try:
        st = dest.stat()
    except FileNotFoundError:
        return None
    if d.get("size") == st.st_size and d.get("mtime_ns") == st.st_mtime_ns:
        return read_record(dest)
    return None


def mismatches(size: int, sha: str, exp: Mapping[str, Any]) -> list[str]:
    out = []
    if exp.get("size") is not None and exp["size"] != size:
        out.append(f"size {size} bytes, expected {exp['size']}")
    if exp.get("sha256") and exp["sha256"] != sha:
        out.append(f"sha256 {sha}, expected {exp['sha256']}")
    return out


def adopt_existing(
    dest: str | os.PathLike,
    expected: Any = None,
    *,
    url: str | None = None,
    session: requests.Session | None = None,
    verify_hdf5: bool = True,
    progress: Any = None,
) -> DownloadRecord:
    """Take a file that is already at ``dest`` (e.g. an AllenSDK cache) into the cache: hash it,
    compare with ``expected`` (size/sha256), or, without one, with the remote size of ``url``;
    open it as HDF5; write its record. A mismatch moves the file aside and raises."""
    dest = Path(dest)
    exp = _expected_fields(expected)
    size = dest.stat().st_size
    prog = _Progress(dest.name, size, progress or log, what="hashed")
    n, sha = sha256_file(dest, progress=prog)
    problems = mismatches(n, sha, exp)
    etag = last_modified = None
    if url is not None and not problems:
        try:
            info = remote_info(url, session)
        except (requests.RequestException, DownloadError) as e:
            info = None
            log.warning("could not ask %s for its size (%s); adopting %s unchecked", url, e, dest)
        if info is not None:
            if not exp.get("size") and info.size is not None and info.size != n:
                problems.append(f"size {n} bytes, but the server has {info.size} bytes")
            etag, last_modified = info.etag, info.last_modified
    if not problems and verify_hdf5:
        p = hdf5_problem(dest)
        if p:
            problems.append(p)
    if problems:
        aside = set_aside(dest, sha, "mismatch")
        raise ChecksumMismatchError(
            f"existing file {dest} was not adopted: {'; '.join(problems)}. "
            f"It was moved to {aside}; re-run to download it again."
        )
    rec = DownloadRecord(
        path=str(Path(os.path.abspath(dest))),
        size=n,
        sha256=sha,
        url=url if url is not None else exp.get("url"),
        etag=etag if etag is not None else exp.get("etag"),
        last_modified=last_modified,
    )
    write_record(dest, rec)
    log.info("adopted existing %s (%s, sha256 %s)", dest, _fmt_bytes(n), sha[:12])
    return rec


# --------------------------------------------------------------------------- the transfer


class _AttemptFailed(Exception):
    def __init__(
        self,
        reason: str,
        *,
        retry_after: float | None = None,
        fatal: bool = False,
        verify: bool = False,
        bad_bytes: bool = False,
    ):
        super().__init__(reason)
        self.reason, self.retry_after, self.fatal = reason, retry_after, fatal
        self.verify = verify or bad_bytes  # counts toward MAX_VERIFY_FAILURES
        self.bad_bytes = bad_bytes  # the bytes (or their announced size) were wrong


class _RangesUnsupported(Exception):
    pass


class _RateFloor:
    """Says when a connection has been below _LOW_RATE_BPS for a whole _LOW_RATE_WINDOW."""

    def __init__(self) -> None:
        self.window = _LOW_RATE_WINDOW
        self.t = time.monotonic()
        self.n = 0

    def too_slow(self, n: int) -> str | None:
        now = time.monotonic()
        if now - self.t < self.window:
            return None
        rate = (n - self.n) / (now - self.t)
        self.t, self.n = now, n
        if rate < _LOW_RATE_BPS:
            return f"too slow: {rate:.0f} B/s over {self.window:.0f} s (a trickling connection)"
        return None


def _iter_body(resp: requests.Response):
    """The body as it arrives: each chunk is what one read returned (up to CHUNK).

    Not ``iter_content(CHUNK)``: that fills a whole CHUNK before yielding, so bytes that arrived
    before a reset or a read timeout would be lost with the exception (a server that drops every
    512 KiB would then never make progress). Bytes are taken raw: we ask for identity encoding.
    """
    read1 = resp.raw.read1
    while data := read1(CHUNK, decode_content=False):
        yield data


def _status_failure(resp: requests.Response, url: str) -> _AttemptFailed:
    code = resp.status_code
    ra = parse_retry_after(resp.headers.get("Retry-After")) if code in (429, 503) else None
    desc = f"HTTP {code} {resp.reason or ''}".rstrip()
    if ra is not None:
        desc += f" (Retry-After {resp.headers.get('Retry-After')})"
    if code in RETRY_STATUSES:
        return _AttemptFailed(desc, retry_after=ra)
    try:
        body = next(resp.iter_content(400), b"").decode("utf-8", "replace")
    except requests.RequestException:
        body = ""
    body = " ".join(re.sub(r"<[^>]*>", " ", body).split())[:160]  # a hint, not the page
    hint = " (the file does not exist at this URL)" if code in (404, 410) else ""
    return _AttemptFailed(
        f"{desc}{hint}" + (f": {body[:200]!r}" if body else "") + "; not retried", fatal=True
    )


class _Transfer:
    """State of one ``download_file`` call, carried across attempts."""

    def __init__(
        self,
        url: str,
        dest: Path,
        exp: dict[str, Any],
        session: requests.Session,
        timeout: tuple[float, float],
        progress: Any,
    ):
        self.url, self.dest, self.exp, self.session = url, dest, exp, session
        self.timeout = timeout
        self.part, self.sidecar = part_path(dest), sidecar_path(dest)
        self.meta: dict[str, Any] | None = None
        self.hasher: Any = None
        self.hashed = 0
        self.sink = progress or log
        self.prog: _Progress | None = None
        self.fetched = 0  # bytes received over the network in this call

    # -- .part state
    def part_size(self) -> int:
        try:
            return self.part.stat().st_size
        except FileNotFoundError:
            return 0

    def load(self) -> None:
        """Decide whether an existing .part can be resumed; make it a contiguous prefix."""
        meta = _read_json(self.sidecar)
        size = self.part_size()
        if not self.part.exists():
            self.meta = None
            _unlink(self.sidecar)
            return
        why = None
        if meta is None:
            why = "it has no readable sidecar"
        elif meta.get("url") != self.url and not _validator(meta):
            why = f"it came from another URL ({meta.get('url')}) that sent no ETag/Last-Modified"
        elif self.exp.get("size") is not None and meta.get("size") not in (None, self.exp["size"]):
            why = f"its remote size {meta.get('size')} differs from the expected {self.exp['size']}"
        elif (
            self.exp.get("etag")
            and meta.get("etag")
            and self.exp.get("url") == self.url
            and meta["etag"] != self.exp["etag"]
        ):
            why = f"its ETag {meta['etag']} differs from the expected {self.exp['etag']}"
        if not why and meta.get("url") != self.url:
            # Same file from another address (a new port, the S3 mirror of a warehouse file):
            # the stored validator goes out as If-Range, and a server whose copy differs answers
            # 200 with the whole file, which restarts the .part from zero. Nothing unsafe is kept.
            log.info(
                "%s: the .part came from %s; resuming from %s guarded by its validator",
                self.dest.name,
                meta.get("url"),
                self.url,
            )
        if why:
            log.warning(
                "%s: discarding %s (%s): %s", self.dest.name, self.part, _fmt_bytes(size), why
            )
            self.restart()
            return
        self.meta = meta  # with "ranges", a parallel call continues each range
        log.info(
            "%s: found %s with %s, will resume", self.dest.name, self.part.name, _fmt_bytes(size)
        )

    def to_single_stream(self) -> int:
        """Turn a parallel .part into a contiguous prefix; returns its length."""
        assert self.meta is not None
        if self.meta.get("ranges"):
            prefix = 0
            for start, end, done in sorted(self.meta["ranges"]):
                if start != prefix:
                    break
                prefix += done
                if done < end - start:
                    break
            with open(self.part, "r+b") as f:
                f.truncate(prefix)
            del self.meta["ranges"]
            write_json(self.sidecar, self.meta)
            self.hasher, self.hashed = None, 0
        return self.part_size()

    def restart(self, meta: dict[str, Any] | None = None) -> None:
        """Empty the .part (and sidecar); with ``meta``, write the new sidecar first."""
        self.hasher, self.hashed = hashlib.sha256(), 0
        self.meta = meta
        # Empty the .part BEFORE writing the new sidecar: a kill in between must never leave old
        # bytes described by new validators (a later resume would splice two versions).
        if meta is None:
            _unlink(self.part)
            _unlink(self.sidecar)
            return
        with open(self.part, "wb"):
            pass
        write_json(self.sidecar, meta)

    def ensure_hashed(self, upto: int) -> None:
        """Make the hasher cover exactly bytes [0, upto) of the .part."""
        if self.hasher is not None and self.hashed == upto:
            return
        if upto:
            log.info(
                "%s: hashing the %s already in %s", self.dest.name, _fmt_bytes(upto), self.part.name
            )
        self.hasher, self.hashed = _hash_prefix(self.part, upto), upto

    def check_remote_identity(self, total: int | None, etag: str | None) -> None:
        """Before streaming a fresh body: does the server describe the expected file?"""
        exp = self.exp
        if exp.get("etag") and etag and exp.get("url") == self.url and etag != exp["etag"]:
            raise _AttemptFailed(
                f"the server's ETag {etag} differs from the expected {exp['etag']}: the remote "
                "file changed since the lock file was written; if that is intended, delete its "
                "entry from the lock file and re-run",
                fatal=True,
            )
        if exp.get("size") is not None and total is not None and total != exp["size"]:
            raise _AttemptFailed(
                f"the server announces {total} bytes but {exp['size']} are expected",
                bad_bytes=True,
            )

    # -- one single-stream attempt
    def attempt_single(self) -> None:
        offset = self.to_single_stream() if self.meta else 0
        meta = self.meta
        total = meta.get("size") if meta else None
        if offset and total is not None:
            if offset == total:  # complete already: a Range would only get a 416
                self.ensure_hashed(offset)
                return
            if offset > total:
                self.restart()
                raise _AttemptFailed(
                    f".part is larger ({offset}) than the file ({total})", verify=True
                )
        headers = {"Accept-Encoding": "identity"}
        if offset:
            self.ensure_hashed(offset)  # before the request, not while the server waits
            headers["Range"] = f"bytes={offset}-"
            v = _validator(meta)
            if v:
                headers["If-Range"] = v
        resp = self.session.get(self.url, headers=headers, stream=True, timeout=self.timeout)
        with resp:
            code = resp.status_code
            if code == 416:
                m = _CONTENT_RANGE_UNSAT.match(resp.headers.get("Content-Range", ""))
                # complete only if the server's size is the .part's and the one it announced
                if m and offset and int(m.group(1)) == offset and total in (None, offset):
                    meta["size"] = offset
                    write_json(self.sidecar, meta)
                    self.ensure_hashed(offset)
                    return
                self.restart()
                raise _AttemptFailed(
                    f"HTTP 416 for a Range from byte {offset}; restarting at 0", verify=True
                )
            if code not in (200, 206):
                raise _status_failure(resp, self.url)
            etag, lm = resp.headers.get("ETag"), resp.headers.get("Last-Modified")
            length = _int_header(resp, "Content-Length")
            if code == 206:
                cr = _parse_content_range(resp.headers.get("Content-Range"))
                bad = None
                if not offset or cr is None:
                    bad = f"unexpected 206 (Content-Range {resp.headers.get('Content-Range')!r})"
                elif cr[0] != offset:
                    bad = f"Content-Range starts at {cr[0]}, not at the requested {offset}"
                elif total is not None and cr[2] is not None and cr[2] != total:
                    bad = f"the remote file is now {cr[2]} bytes, the .part was for {total}"
                elif meta.get("etag") and etag and etag != meta["etag"]:
                    bad = f"ETag changed from {meta['etag']} to {etag}"
                elif not _validator(meta) and (length is None or offset + length != total):
                    # no validator: the total size is the only guard that this is the same file
                    bad = f"no validator and the sizes disagree ({offset}+{length} != {total})"
                if bad:
                    self.restart()
                    raise _AttemptFailed(f"cannot resume: {bad}; restarting at 0", verify=True)
                if total is None:
                    total = cr[2]
                    meta["size"] = total
                    write_json(self.sidecar, meta)
                log.info(
                    "%s: resuming at %s of %s",
                    self.dest.name,
                    _fmt_bytes(offset),
                    _fmt_bytes(total),
                )
            else:
                if offset:
                    log.warning(
                        "%s: the server sent the whole file (HTTP 200) instead of the range from "
                        "byte %d (Range ignored or the file changed); restarting from zero",
                        self.dest.name,
                        offset,
                    )
                total = length
                self.check_remote_identity(total, etag)
                log.info("%s: fetching %s", self.dest.name, _fmt_bytes(total))
                self.restart({"url": self.url, "etag": etag, "last_modified": lm, "size": total})
                offset = 0
            self.ensure_hashed(offset)
            if self.prog is None:
                self.prog = _Progress(self.dest.name, total, self.sink, start=offset)
            self.prog.total = total
            got = self._stream(resp, offset, total)
        end = offset + got
        if total is None:  # no Content-Length: trust the close, verification decides
            self.meta["size"] = end
            write_json(self.sidecar, self.meta)
        elif end != total:
            raise _AttemptFailed(f"the body ended at byte {end} of {total} (short body)")

    def _stream(self, resp: requests.Response, offset: int, total: int | None) -> int:
        """Append the body to the .part, hashing it; returns the bytes written.

        Receiving runs here, writing + hashing in a helper thread (both release the GIL), so the
        socket, the disk and sha256 overlap; at most ``_PIPELINE_DEPTH`` chunks are in flight.
        The helper writes and hashes the same bytes in order, so the hasher always covers exactly
        the .part's bytes, whatever ends the attempt.
        """
        got = 0
        h, prog = self.hasher, self.prog
        limit = None if total is None else total - offset
        q: queue.Queue[bytes | None] = queue.Queue(maxsize=_PIPELINE_DEPTH)
        written = [0]
        write_error: list[BaseException] = []

        def sink() -> None:
            with open(self.part, "ab", buffering=0) as f:
                while (chunk := q.get()) is not None:
                    if write_error:
                        continue  # drain, so the receiver never blocks on a full queue
                    try:
                        view = memoryview(chunk)
                        while view:
                            view = view[f.write(view) :]
                        h.update(chunk)
                        written[0] += len(chunk)
                    except BaseException as e:  # noqa: BLE001 - reported by the receiver
                        write_error.append(e)

        writer = threading.Thread(target=sink, name=f"write {self.dest.name}", daemon=True)
        writer.start()
        net_error = None
        slow = None
        floor = _RateFloor()
        try:
            for chunk in _iter_body(resp):
                if write_error:
                    break
                if slow := floor.too_slow(got):
                    break
                if limit is not None and got + len(chunk) > limit:
                    chunk = chunk[: limit - got]
                q.put(chunk)
                got += len(chunk)
                self.fetched += len(chunk)
                prog.update(offset + got)
                if limit is not None and got >= limit:
                    break
        except (requests.RequestException, urllib3.exceptions.HTTPError) as e:
            net_error = e
        finally:
            q.put(None)
            writer.join()
            self.hashed += written[0]
        if write_error:
            e = write_error[0]
            raise _AttemptFailed(f"writing {self.part} failed: {e}", fatal=True) from e
        if net_error is not None:
            raise _AttemptFailed(
                f"{type(net_error).__name__}: {_short_exc(net_error)} after {got} bytes of this "
                "attempt"
            ) from net_error
        if slow:
            raise _AttemptFailed(f"{slow} after {got} bytes of this attempt")
        return written[0]

    # -- one parallel attempt
    def attempt_parallel(self, connections: int) -> None:
        meta = self.meta
        if not (meta and meta.get("ranges")):
            info = self._probe_ranges()
            size = info.size
            if not info.accepts_ranges or not size:
                raise _RangesUnsupported("the server does not answer Range requests with 206")
            self.check_remote_identity(size, info.etag)
            n = max(1, min(connections, size // MIN_RANGE))
            if n == 1:
                raise _RangesUnsupported(f"the file is small ({_fmt_bytes(size)})")
            prefix = 0
            if (
                meta
                and meta.get("size") == size
                and _validator(meta)
                == _validator({"etag": info.etag, "last_modified": info.last_modified})
            ):
                prefix = self.part_size()  # a single-stream .part of the same file: keep it
            step = -(-size // n)
            ranges = []
            for i in range(n):
                start, end = i * step, min(size, (i + 1) * step)
                ranges.append([start, end, max(0, min(prefix - start, end - start))])
            new = {
                "url": self.url,
                "etag": info.etag,
                "last_modified": info.last_modified,
                "size": size,
                "ranges": ranges,
            }
            if prefix:
                self.meta = new
                write_json(self.sidecar, new)
            else:
                self.restart(new)
            with open(self.part, "r+b") as f:
                f.truncate(size)  # sparse; each range is written in place
            meta = self.meta
        self.hasher = None  # bytes land out of order: hash the whole file once at the end
        size = meta["size"]
        ranges = meta["ranges"]
        lock = threading.Lock()
        stop = threading.Event()
        errors: list[BaseException] = []
        done_total = [sum(r[2] for r in ranges)]
        if self.prog is None:
            self.prog = _Progress(self.dest.name, size, self.sink, start=done_total[0])

        def worker(r: list[int]) -> None:
            start, end, _ = r
            pos = start + r[2]
            if pos >= end:
                return
            headers = {"Accept-Encoding": "identity", "Range": f"bytes={pos}-{end - 1}"}
            v = _validator(meta)
            if v:
                headers["If-Range"] = v
            fd = os.open(self.part, os.O_WRONLY)
            try:
                with self.session.get(
                    self.url, headers=headers, stream=True, timeout=self.timeout
                ) as resp:
                    if resp.status_code == 200:
                        raise _RangesUnsupported(
                            "the server answered a Range request with 200 (ranges ignored, or "
                            "the file changed)"
                        )
                    if resp.status_code != 206:
                        raise _status_failure(resp, self.url)
                    cr = _parse_content_range(resp.headers.get("Content-Range"))
                    if cr is None or cr[0] != pos or cr[1] != end - 1 or cr[2] not in (None, size):
                        raise _AttemptFailed(
                            f"range {pos}-{end - 1}: bad Content-Range "
                            f"{resp.headers.get('Content-Range')!r}"
                        )
                    got = 0
                    floor = _RateFloor()
                    try:
                        for chunk in _iter_body(resp):
                            if stop.is_set():
                                return
                            if slow := floor.too_slow(got):
                                raise _AttemptFailed(
                                    f"range {start}-{end - 1}: {slow} after {got} bytes"
                                )
                            chunk = chunk[: end - pos]
                            view = memoryview(chunk)
                            while view:
                                k = os.pwrite(fd, view, pos)
                                view = view[k:]
                                pos += k
                            got += len(chunk)
                            with lock:
                                r[2] += len(chunk)
                                done_total[0] += len(chunk)
                                self.fetched += len(chunk)
                            if pos >= end:
                                break
                    except (requests.RequestException, urllib3.exceptions.HTTPError) as e:
                        raise _AttemptFailed(
                            f"range {start}-{end - 1}: {type(e).__name__}: {_short_exc(e)} "
                            f"after {got} bytes"
                        ) from e
                    if pos < end:
                        raise _AttemptFailed(f"range {start}-{end - 1}: body ended at byte {pos}")
            finally:
                os.close(fd)

        def run(r: list[int]) -> None:
            try:
                worker(r)
            except BaseException as e:  # collected; the main thread decides
                with lock:
                    errors.append(e)
                if isinstance(e, _RangesUnsupported) or getattr(e, "fatal", False):
                    stop.set()

        todo = [r for r in ranges if r[2] < r[1] - r[0]]
        fd = os.open(self.part, os.O_WRONLY)
        try:
            with ThreadPoolExecutor(max_workers=len(todo) or 1) as pool:
                futs = [pool.submit(run, r) for r in todo]
                next_persist = time.monotonic() + _SIDECAR_PERSIST_INTERVAL
                while not all(f.done() for f in futs):
                    time.sleep(0.2)
                    self.prog.update(done_total[0])
                    if time.monotonic() >= next_persist:
                        next_persist = time.monotonic() + _SIDECAR_PERSIST_INTERVAL
                        self._persist_ranges(fd, lock)
            self._persist_ranges(fd, lock)
        finally:
            os.close(fd)
        if any(isinstance(e, _RangesUnsupported) for e in errors):
            raise next(e for e in errors if isinstance(e, _RangesUnsupported))
        if errors:
            fatal = [e for e in errors if getattr(e, "fatal", False)]
            ras = [e.retry_after for e in errors if getattr(e, "retry_after", None) is not None]
            reason = "; ".join(getattr(e, "reason", None) or _short_exc(e) for e in errors)
            raise _AttemptFailed(reason, fatal=bool(fatal), retry_after=max(ras) if ras else None)
        if any(r[2] < r[1] - r[0] for r in ranges):  # pragma: no cover - defensive
            raise _AttemptFailed("some ranges are incomplete")
        # All ranges are in: from here on this is a plain complete .part.
        del meta["ranges"]
        write_json(self.sidecar, meta)
        self.hasher, self.hashed = None, 0

    def _persist_ranges(self, fd: int, lock: threading.Lock) -> None:
        # Snapshot (counts only bytes already pwritten), then fsync, then record: the sidecar
        # never claims bytes that are not on disk, even after a power loss.
        with lock:
            snapshot = json.loads(json.dumps(self.meta))
        os.fsync(fd)
        write_json(self.sidecar, snapshot)

    def _probe_ranges(self) -> RemoteInfo:
        headers = {"Accept-Encoding": "identity", "Range": "bytes=0-0"}
        with self.session.get(self.url, headers=headers, stream=True, timeout=self.timeout) as r:
            if r.status_code == 206:
                cr = _parse_content_range(r.headers.get("Content-Range"))
                return RemoteInfo(
                    cr[2] if cr else None,
                    r.headers.get("ETag"),
                    r.headers.get("Last-Modified"),
                    cr is not None,
                )
            if r.status_code == 200:
                return RemoteInfo(
                    _int_header(r, "Content-Length"),
                    r.headers.get("ETag"),
                    r.headers.get("Last-Modified"),
                    False,
                )
            raise _status_failure(r, self.url)

    # -- verification and placement
    def finish(self, verify_hdf5: bool) -> DownloadRecord:
        meta = self.meta or {}
        size = self.part_size()
        if self.hasher is None or self.hashed != size:
            prog = _Progress(self.dest.name, size, self.sink, what="hashed")
            n, sha = sha256_file(self.part, progress=prog)
        else:
            n, sha = size, self.hasher.hexdigest()
        problems = []
        if meta.get("size") is not None and n != meta["size"]:
            problems.append(f"{n} bytes on disk but the server announced {meta['size']}")
        problems += mismatches(n, sha, self.exp)
        if not problems and verify_hdf5:
            p = hdf5_problem(self.part)
            if p:
                problems.append(f"the downloaded file {p}")
        if problems:
            why = "mismatch" if any("sha256" in p or "size" in p for p in problems) else "invalid"
            aside = set_aside(self.part, sha, why, dest=self.dest)
            _unlink(self.sidecar)
            self.meta, self.hasher, self.hashed = None, None, 0
            raise _AttemptFailed(
                "verification failed: " + "; ".join(problems) + f" (bad copy moved to {aside})",
                bad_bytes=True,
            )
        with open(self.part, "rb") as f:
            os.fsync(f.fileno())
        rec = DownloadRecord(
            path=str(Path(os.path.abspath(self.dest))),
            size=n,
            sha256=sha,
            url=self.url,
            etag=meta.get("etag"),
            last_modified=meta.get("last_modified"),
        )
        # Placement order: record first, then os.replace(part, dest), then drop the sidecar.
        # - os.replace, not os.link: with a hard link, a kill between link and unlink leaves
        #   dest and .part as ONE inode, and a later resume/truncate of the .part would corrupt
        #   dest in place. os.replace is one atomic rename and needs no hard-link support (some
        #   network/FUSE cluster file systems have none).
        # - rename keeps the inode and mtime, so the record's mtime_ns (taken from the .part)
        #   matches dest and a rerun adopts it without hashing. A kill after the record but before
        #   the rename leaves a complete, verified .part: the rerun skips the request, re-hashes and
        #   places it. A kill after the rename leaves dest + record: nothing is lost either way.
        st = self.part.stat()
        d = rec.to_dict()
        d["mtime_ns"] = st.st_mtime_ns
        write_json(record_path(self.dest), d)
        os.replace(self.part, self.dest)
        fsync_dir(self.dest.parent)
        _unlink(self.sidecar)
        return rec


def _short_exc(e: BaseException) -> str:
    s = str(e)
    # urllib3 wraps messages deeply; keep the informative tail
    m = re.search(r"(Read timed out|Connection broken: \w+\([^)]*\)|IncompleteRead\([^)]*\))", s)
    s = m.group(1) if m else s
    return s if len(s) <= 200 else s[:200] + "..."


class _DestLock:
    """Advisory lock so two processes never write the same .part (`dest.part.lock`)."""

    def __init__(self, dest: Path):
        self.path = Path(str(dest) + ".part.lock")
        self.fd: int | None = None

    def __enter__(self) -> _DestLock:
        if fcntl is None:  # pragma: no cover
            return self
        self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(self.fd)
            self.fd = None
            raise DownloadError(
                f"another process is downloading {self.path.name[: -len('.part.lock')]} "
                f"(lock {self.path} is held); wait for it or stop it"
            ) from None
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.fd is not None:
            _unlink(self.path)
            os.close(self.fd)


def download_file(
    url: str,
    dest: str | os.PathLike,
    *,
    expected: Any = None,
    session: requests.Session | None = None,
    read_timeout: float = 30,
    connect_timeout: float = 10,
    max_attempts: int = 8,
    backoff_base: float = 1.0,
    backoff_max: float = 60,
    connections: int = 1,
    verify_hdf5: bool = True,
    progress: Callable[[int, int | None], None] | logging.Logger | None = None,
) -> DownloadRecord:
    """Download ``url`` to ``dest`` (verified, atomic, resumable); return its record.

    ``expected``: a DownloadRecord or lock entry (size, sha256, etag, url) the bytes must match.
    ``max_attempts``: attempts that add no bytes; an attempt that makes progress is not counted
    (a server that drops every few hundred MB still finishes), but the total is bounded by
    ``4 * max_attempts`` plus the verification restarts.
    ``connections > 1``: fetch that many byte ranges in parallel (falls back to one stream when
    the server ignores ranges). ``progress``: a logger (default: this module's) or a callable
    ``(done_bytes, total_bytes)``, called at most every few seconds.
    Raises DownloadError (ChecksumMismatchError for wrong bytes) naming the file, the URL and
    every attempt.
    """
    dest = Path(dest)
    exp = _expected_fields(expected)
    own_session = session is None
    if own_session:
        session = _new_session(pool=connections)
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
        with _DestLock(dest):
            if dest.exists():
                rec = _present(dest, url, exp, session, verify_hdf5, progress)
                if rec is not None:
                    return rec
            return _download(
                url,
                dest,
                exp,
                session,
                read_timeout,
                connect_timeout,
                max_attempts,
                backoff_base,
                backoff_max,
                connections,
                verify_hdf5,
                progress,
            )
    finally:
        if own_session:
            session.close()


def _present(
    dest: Path,
    url: str,
    exp: dict[str, Any],
    session: requests.Session,
    verify_hdf5: bool,
    progress: Any,
) -> DownloadRecord | None:
    """``dest`` exists: return its record if it is the right file, else set it aside (None)."""
    rec = _record_is_fresh(dest)
    if rec is not None and not mismatches(rec.size, rec.sha256, exp):
        log.info("%s: already downloaded (record matches size and mtime; not re-hashed)", dest)
        _unlink(part_path(dest))
        _unlink(sidecar_path(dest))
        return rec
    old = read_record(dest)
    try:
        rec = adopt_existing(
            dest,
            exp or (old.to_dict() if old else None),
            url=url,
            session=session,
            verify_hdf5=verify_hdf5,
            progress=progress,
        )
    except ChecksumMismatchError as e:
        log.warning("%s; downloading it again", e)
        return None
    _unlink(part_path(dest))
    _unlink(sidecar_path(dest))
    return rec


def _download(
    url,
    dest,
    exp,
    session,
    read_timeout,
    connect_timeout,
    max_attempts,
    backoff_base,
    backoff_max,
    connections,
    verify_hdf5,
    progress,
) -> DownloadRecord:
    t = _Transfer(url, dest, exp, session, (connect_timeout, read_timeout), progress)
    t.load()
    log.info(
        "downloading %s from %s%s",
        dest.name,
        url,
        f" with {connections} connections" if connections > 1 else "",
    )
    history: list[str] = []
    t0 = time.monotonic()
    failures = 0  # consecutive attempts that did not take the .part past its best so far
    verify_failures = 0  # bad bytes, or a server contradicting itself (restarts from zero)
    bad_bytes = False

    def have() -> int:
        ranges = (t.meta or {}).get("ranges")
        return sum(r[2] for r in ranges) if ranges else t.part_size()  # parallel .part is sparse

    best = have()
    total_cap = 4 * max_attempts + MAX_VERIFY_FAILURES
    for attempt in range(1, total_cap + 1):
        try:
            if connections > 1:
                try:
                    t.attempt_parallel(connections)
                except _RangesUnsupported as e:
                    log.info("%s: %s; using a single connection", dest.name, e)
                    connections = 1
                    if t.meta and t.meta.get("ranges"):
                        t.to_single_stream()
                    t.attempt_single()
            else:
                t.attempt_single()
            rec = t.finish(verify_hdf5)
        except _AttemptFailed as e:
            fail = e
        except (requests.RequestException, urllib3.exceptions.HTTPError) as e:
            fail = _AttemptFailed(f"{type(e).__name__}: {_short_exc(e)}")
        else:
            if t.prog is not None and not isinstance(t.sink, logging.Logger):
                t.prog.update(rec.size)
                t.prog.emit()  # a callable gets a final (size, size)
            dt = time.monotonic() - t0
            log.info(
                "%s: done, %s in %.1f s (%.1f MB/s), sha256 %s",
                dest.name,
                _fmt_bytes(rec.size),
                dt,
                t.fetched / max(dt, 1e-9) / 1e6,
                rec.sha256,
            )
            return rec
        now = have()
        # Progress = the .part got further than ever before in this call. A server that sends
        # the same too-short body again and again (then forces a restart) makes none.
        progressed = now > best and not fail.verify
        best = max(best, now)
        tot = (t.meta or {}).get("size")
        history.append(
            f"attempt {attempt}: {fail.reason}; .part has {now}"
            + (f" of {tot}" if tot is not None else "")
            + " bytes"
        )
        if fail.verify:
            verify_failures += 1
        bad_bytes = bad_bytes or fail.bad_bytes
        failures = 0 if progressed else failures + 1
        if fail.fatal or failures >= max_attempts or verify_failures >= MAX_VERIFY_FAILURES:
            break
        if attempt == total_cap:
            break
        if fail.retry_after is not None:
            delay = min(fail.retry_after, backoff_max)
        elif progressed:
            delay = min(backoff_base, backoff_max) * random.random()
        else:
            delay = random.uniform(0, min(backoff_max, backoff_base * 2 ** (failures - 1)))
        log.warning("%s: %s; retrying in %.1f s", dest.name, history[-1], delay)
        time.sleep(delay)
    part_note = (
        f"The partial file {t.part} ({_fmt_bytes(t.part_size())}) is kept; re-running resumes "
        "from it."
        if t.part.exists() and t.part_size()
        else f"Nothing was written to {dest}."
    )
    cls = ChecksumMismatchError if bad_bytes and not fail.fatal else DownloadError
    raise cls(
        f"could not download {dest.name} to {dest} from {url} "
        f"({len(history)} attempt{'s' if len(history) != 1 else ''}):\n  "
        + "\n  ".join(history)
        + f"\n{part_note}"
    )
