"""The DANDI stand-in's catalogue: which synthetic file is which asset, and the files' digests.

Used by :mod:`ecephys_pipeline.fake.dandi` (the API views); see ``docs/dandi.md`` for the facts.
"""

from __future__ import annotations

import hashlib
import threading
import uuid
import weakref
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

BO = "brain_observatory_1.1"
FC = "functional_connectivity"
# Dandiset id -> (session type, name). Names: dandi-archive listings quoted in issue 13.
DANDISETS: dict[str, tuple[str, str]] = {
    "000021": (BO, "20191003_AIBS_mouse_ecephys_brain_observatory_1_1"),
    "000022": (FC, "20191003_AIBS_mouse_ecephys_functional_connectivity"),
}
# Published versions seen in public code pinning these dandisets (docs/dandi.md; not read from
# the archive itself). The format 0.YYMMDD.HHMM is the archive's (Version.VERSION_REGEX).
PUBLISHED_VERSIONS: dict[str, str] = {"000021": "0.251116.2246", "000022": "0.251116.2247"}
DRAFT = "draft"
# dandi-etag: S3 multipart ETag with 64 MiB parts, at most 10,000 parts (dandischema's
# PartGenerator; a file under one part is still "<md5 of the part md5>-1").
PART_SIZE = 64 * 1024 * 1024
MAX_PARTS = 10_000
_READ = 1024 * 1024

CREATED = datetime(2020, 3, 18, 21, 35, 12, tzinfo=UTC)  # UNCONFIRMED: the dandisets' creation


# ------------------------------------------------------------------------------------ digests


def part_sizes(size: int) -> list[int]:
    """The dandi-etag part sizes of a file of ``size`` bytes."""
    if size == 0:
        return []
    part = PART_SIZE
    if -(-size // part) >= MAX_PARTS:
        part = -(-size // MAX_PARTS)
    n, last = divmod(size, part)
    if last:
        return [part] * n + [last]
    return [part] * n


_digest_cache: dict[tuple[str, int, int], tuple[str, str]] = {}
_digest_lock = threading.Lock()


def digests(path: Path) -> tuple[str, str]:
    """(sha256 hex, dandi-etag) of a file, cached per (path, size, mtime)."""
    st = path.stat()
    key = (str(path), st.st_size, st.st_mtime_ns)
    with _digest_lock:
        if key in _digest_cache:
            return _digest_cache[key]
    sha = hashlib.sha256()
    part_md5s: list[bytes] = []
    with open(path, "rb") as fh:
        for psize in part_sizes(st.st_size):
            md5 = hashlib.md5(usedforsecurity=False)
            left = psize
            while left:
                data = fh.read(min(_READ, left))
                if not data:
                    raise OSError(f"{path} shrank while it was hashed")
                left -= len(data)
                sha.update(data)
                md5.update(data)
            part_md5s.append(md5.digest())
    etag = hashlib.md5(b"".join(part_md5s), usedforsecurity=False).hexdigest()
    out = (sha.hexdigest(), f"{etag}-{len(part_md5s)}")
    with _digest_lock:
        _digest_cache[key] = out
    return out


# ------------------------------------------------------------------------------------ catalogue


def _uuid4(*parts: object) -> str:
    """A version-4-shaped UUID derived from ``parts`` (stable across runs)."""
    raw = hashlib.sha256("\0".join(map(str, parts)).encode()).digest()[:16]
    return str(uuid.UUID(bytes=raw, version=4))


@dataclass(frozen=True)
class Asset:
    dandiset: str
    path: str
    asset_id: str
    blob_id: str
    file: Path
    gen: tuple[str, int] | None
    created: datetime
    session_id: int
    subject: str

    @property
    def blob_key(self) -> str:
        b = self.blob_id
        return f"{b[:3]}/{b[3:6]}/{b}"


class Archive:
    """The dandisets of one fake warehouse's dataset (built on first use)."""

    def __init__(self, fake):
        self.fake = fake
        self._lock = threading.Lock()
        self._assets: dict[str, list[Asset]] | None = None
        self._by_id: dict[str, Asset] = {}
        self._by_blob: dict[str, Asset] = {}

    def assets(self, dandiset: str) -> list[Asset]:
        with self._lock:
            if self._assets is None:
                self._build()
            assert self._assets is not None
            return self._assets[dandiset]

    def by_id(self, asset_id: str) -> Asset | None:
        self.assets("000021")
        return self._by_id.get(asset_id)

    def by_blob(self, key: str) -> Asset | None:
        self.assets("000021")
        return self._by_blob.get(key)

    def _build(self) -> None:
        files, store = self.fake.files, self.fake.store
        sessions = store.by_id("EcephysSession")
        found: dict[str, list[tuple[str, Path, tuple[str, int], int, str]]] = {
            d: [] for d in DANDISETS
        }
        kinds = {t: d for d, (t, _) in DANDISETS.items()}
        for wkf in store.rows("WellKnownFile"):
            target = files.wkf_target(wkf)
            if target is None:
                continue
            path, gen = target
            kind, ident = gen
            if kind == "session":
                sid, probe = ident, None
            else:
                probe_row = store.by_id("EcephysProbe").get(ident) or {}
                sid, probe = probe_row.get("ecephys_session_id"), ident
            session = sessions.get(sid)
            if session is None or session.get("stimulus_name") not in kinds:
                continue
            donor = ((session.get("specimen") or {}).get("donor") or {}).get("id")
            subject = str(donor if donor is not None else session.get("specimen_id"))
            name = f"sub-{subject}_ses-{sid}" + (f"_probe-{probe}_ecephys" if probe else "")
            dpath = f"sub-{subject}/{name}.nwb"
            found[kinds[session["stimulus_name"]]].append((dpath, path, gen, sid, subject))
        self._assets = {}
        for d, rows in found.items():
            rows.sort()
            out = []
            for i, (dpath, path, gen, sid, subject) in enumerate(rows):
                a = Asset(
                    dandiset=d,
                    path=dpath,
                    asset_id=_uuid4("asset", d, dpath),
                    blob_id=_uuid4("blob", d, dpath),
                    file=path,
                    gen=gen,
                    created=CREATED + timedelta(seconds=37 * i + 11, microseconds=4321 * i),
                    session_id=sid,
                    subject=subject,
                )
                out.append(a)
                self._by_id[a.asset_id] = a
                self._by_blob[a.blob_key] = a
            self._assets[d] = out

    def file(self, a: Asset) -> Path:
        """The asset's file on disk, generated first if it is lazy and missing."""
        if a.gen is None:
            return a.file
        return self.fake.files.ensure(a.file, a.gen)


_archives: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
_archives_lock = threading.Lock()


def archive_for(fake) -> Archive:
    with _archives_lock:
        arc = _archives.get(fake)
        if arc is None:
            arc = _archives[fake] = Archive(fake)
        return arc
