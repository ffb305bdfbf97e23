"""Files behind the fake warehouse: WKF id / S3 key -> path on disk, validators, byte ranges."""

from __future__ import annotations

import hashlib
import threading
from dataclasses import dataclass
from email.utils import formatdate, parsedate_to_datetime
from pathlib import Path

from .rma import Store

BUCKET = "allen-brain-observatory"
S3_PREFIX = "visual-coding-neuropixels/ecephys-cache/"
# Files up to this size get S3's single-part ETag (quoted MD5 of the bytes, computed once per
# (path, size, mtime) and cached). Larger files get a multipart-shaped ETag ("<hex>-<parts>", the
# hex derived from size and mtime, so it is cheap and stable while the file is unchanged): that is
# what real multi-GB objects uploaded in parts carry, and it is not an MD5 of the file
# (allen-warehouse.md §4).
MD5_ETAG_MAX = 64 * 1024 * 1024
MULTIPART_CHUNK = 8 * 1024 * 1024
READ_CHUNK = 256 * 1024


class NotGeneratable(Exception):
    """The file is missing and cannot be produced (no synth, or not a lazy dataset)."""


@dataclass(frozen=True)
class FileInfo:
    path: Path
    size: int
    mtime_ns: int
    etag: str
    last_modified: str  # HTTP-date
    content_type: str


_etag_cache: dict[tuple[str, int, int], str] = {}
_etag_lock = threading.Lock()


def etag_for(path: Path, size: int, mtime_ns: int) -> str:
    key = (str(path), size, mtime_ns)
    with _etag_lock:
        if key in _etag_cache:
            return _etag_cache[key]
    if size <= MD5_ETAG_MAX:
        h = hashlib.md5(usedforsecurity=False)
        with open(path, "rb") as fh:
            while chunk := fh.read(READ_CHUNK):
                h.update(chunk)
        tag = f'"{h.hexdigest()}"'
    else:
        digest = hashlib.md5(f"{size}:{mtime_ns}".encode(), usedforsecurity=False).hexdigest()
        tag = f'"{digest}-{-(-size // MULTIPART_CHUNK)}"'
    with _etag_lock:
        _etag_cache[key] = tag
    return tag


def content_type_for(path: Path) -> str:
    return {".csv": "text/csv", ".json": "application/json"}.get(
        path.suffix, "application/octet-stream"
    )


def file_info(path: Path) -> FileInfo:
    st = path.stat()
    return FileInfo(
        path=path,
        size=st.st_size,
        mtime_ns=st.st_mtime_ns,
        etag=etag_for(path, st.st_size, st.st_mtime_ns),
        last_modified=formatdate(st.st_mtime, usegmt=True),
        content_type=content_type_for(path),
    )


def read_chunks(path: Path, start: int, length: int, chunk: int = READ_CHUNK):
    """Yield ``length`` bytes of ``path`` from ``start`` in chunks (never the whole file)."""
    with open(path, "rb") as fh:
        fh.seek(start)
        left = length
        while left > 0:
            data = fh.read(min(chunk, left))
            if not data:
                return
            left -= len(data)
            yield data


# ------------------------------------------------------------------------------ ranges


def parse_range(header: str | None, size: int) -> tuple[int, int] | str | None:
    """``(start, end_inclusive)``, ``"unsatisfiable"``, or None (no usable Range: send 200).

    Syntactically invalid or multi-range headers are ignored (RFC 9110 allows that; S3 ignores
    multiple ranges too).
    """
    if not header:
        return None
    unit, _, spec = header.strip().partition("=")
    if unit.strip().lower() != "bytes" or "," in spec:
        return None
    first, dash, last = spec.strip().partition("-")
    if not dash:
        return None
    first, last = first.strip(), last.strip()
    if (first and not first.isdigit()) or (last and not last.isdigit()):
        return None
    if not first:
        if not last:
            return None
        n = int(last)
        if n == 0 or size == 0:
            return "unsatisfiable"
        return max(0, size - n), size - 1
    start = int(first)
    end = int(last) if last else size - 1
    if last and end < start:
        return None
    if start >= size:
        return "unsatisfiable"
    return start, min(end, size - 1)


def if_range_matches(if_range: str | None, info: FileInfo) -> bool:
    """True if a Range may be honoured under ``If-Range`` (absent header: always)."""
    if if_range is None:
        return True
    value = if_range.strip()
    if value.startswith('"') or value.startswith("W/"):
        return not value.startswith("W/") and value == info.etag
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return False
    return int(when.timestamp()) == int(info.mtime_ns // 1_000_000_000)


# ------------------------------------------------------------------------------ dataset files


class DatasetFiles:
    """Maps warehouse WKF ids and S3 keys to files, generating lazy files through synth."""

    def __init__(self, root: Path, store: Store):
        self.root = Path(root)
        self.store = store
        self._locks: dict[Path, threading.Lock] = {}
        self._locks_lock = threading.Lock()

    def is_lazy_capable(self) -> bool:
        return (self.root / "dataset.json").is_file()

    def _probe_session(self, probe_id) -> int | None:
        probe = self.store.by_id("EcephysProbe").get(probe_id)
        return None if probe is None else probe.get("ecephys_session_id")

    def session_nwb(self, sid) -> Path:
        return self.root / "files" / f"session_{sid}" / f"session_{sid}.nwb"

    def lfp_nwb(self, sid, pid) -> Path:
        return self.root / "files" / f"session_{sid}" / f"probe_{pid}_lfp.nwb"

    def wkf_target(self, wkf: dict) -> tuple[Path, tuple[str, int]] | None:
        """(path, (generator kind, id)) for a WellKnownFile row, None if it names no known file."""
        kind = (wkf.get("well_known_file_type") or {}).get("name")
        atype, aid = wkf.get("attachable_type"), wkf.get("attachable_id")
        if atype == "EcephysSession" and kind in (None, "EcephysNwb"):
            return self.session_nwb(aid), ("session", aid)
        if atype == "EcephysProbe" and kind in (None, "EcephysLfpNwb"):
            sid = self._probe_session(aid)
            if sid is None:
                return None
            return self.lfp_nwb(sid, aid), ("lfp", aid)
        return None

    def ensure(self, path: Path, gen: tuple[str, int]) -> Path:
        """Return ``path``, generating it with ``ecephys_pipeline.synth`` if it is missing."""
        if path.is_file():
            return path
        if not self.is_lazy_capable():
            raise NotGeneratable(f"{path} is missing and the dataset has no dataset.json")
        with self._locks_lock:
            lock = self._locks.setdefault(path, threading.Lock())
        with lock:
            if path.is_file():
                return path
            try:
                from .. import synth  # lazy: synth pulls in pynwb/h5py
            except ImportError as exc:
                raise NotGeneratable(f"cannot import ecephys_pipeline.synth: {exc}") from exc
            kind, ident = gen
            fn = getattr(
                synth, "ensure_session_nwb" if kind == "session" else "ensure_lfp_nwb", None
            )
            if fn is None:
                raise NotGeneratable("ecephys_pipeline.synth has no ensure_* functions")
            out = Path(fn(self.root, ident))
            return out if out.is_file() else path

    def wkf(self, wkf_id: int) -> dict | None:
        return self.store.by_id("WellKnownFile").get(wkf_id)

    # -- S3 ----------------------------------------------------------------------------------

    def s3_entries(self) -> dict[str, tuple[Path, tuple[str, int] | None]]:
        """Every key (relative to S3_PREFIX) -> (path, generator or None)."""
        out: dict[str, tuple[Path, tuple[str, int] | None]] = {}
        s3 = self.root / "s3"
        if s3.is_dir():
            for p in sorted(s3.rglob("*")):
                if p.is_file() and not p.name.startswith("."):
                    out[p.relative_to(s3).as_posix()] = (p, None)
        files = self.root / "files"
        if files.is_dir():
            for p in sorted(files.rglob("*")):
                if p.is_file() and not p.name.startswith(".") and not p.name.endswith(".part"):
                    out[p.relative_to(files).as_posix()] = (p, None)
        for wkf in self.store.rows("WellKnownFile"):
            target = self.wkf_target(wkf)
            if target is None:
                continue
            path, gen = target
            key = path.relative_to(self.root / "files").as_posix()
            if key not in out or out[key][1] is None:
                out[key] = (path, gen)
        return out

    def s3_key(self, key: str) -> tuple[Path, tuple[str, int] | None] | None:
        parts = key.split("/")
        if not key or any(p in ("", ".", "..") for p in parts):
            return None
        return self.s3_entries().get(key)
