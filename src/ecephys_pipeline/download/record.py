"""The record of a verified file, ``<file>.download.json``, and what a file is expected to be.

A record ({path, size, sha256, dandi_etag, url, etag, last_modified, mirror, published, mtime_ns})
says which bytes were verified: their two digests (sha256 and the DANDI Archive's etag, computed in
the same pass), where they came from (``url``; ``mirror``: which of the config's mirrors delivered
them) and, in ``published``, the DANDI version whose published digest they matched (None: verified
by size, content and lock only). ``mtime_ns`` lets a rerun trust the file without hashing it again
(size and mtime unchanged).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from .. import layout
from ..atomic import write_json


@dataclass
class DownloadRecord:
    path: str
    size: int
    sha256: str
    url: str | None
    etag: str | None = None
    last_modified: str | None = None
    dandi_etag: str | None = None
    mirror: str | None = None
    published: str | None = None

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
            dandi_etag=d.get("dandi_etag"),
            mirror=d.get("mirror"),
            published=d.get("published"),
        )


def record_path(dest: str | os.PathLike) -> Path:
    return Path(layout.record_path(str(dest)))


def read_json(path: Path) -> dict[str, Any] | None:
    """A JSON object from ``path``; None if it is missing, unreadable or not an object."""
    try:
        with open(path, encoding="utf-8") as f:
            obj = json.load(f)
    except (OSError, ValueError):
        return None
    return obj if isinstance(obj, dict) else None


def write_record(dest: Path, rec: DownloadRecord, *, mtime_ns: int | None = None) -> None:
    """Write ``rec`` beside ``dest`` with the mtime of ``dest`` (or the given ``mtime_ns``: the
    file's mtime before it is renamed to ``dest``)."""
    if mtime_ns is None and dest.exists():
        mtime_ns = dest.stat().st_mtime_ns
    write_json(record_path(dest), {**rec.to_dict(), "mtime_ns": mtime_ns})


def read_record(dest: str | os.PathLike) -> DownloadRecord | None:
    d = read_json(record_path(dest))
    try:
        return DownloadRecord.from_dict(d) if d else None
    except (KeyError, TypeError, ValueError):
        return None


def fresh_record(dest: Path) -> DownloadRecord | None:
    """The record if ``dest`` still has the recorded size and mtime (cheap check, no hashing)."""
    d = read_json(record_path(dest))
    if not d:
        return None
    try:
        st = dest.stat()
    except FileNotFoundError:
        return None
    if d.get("size") == st.st_size and d.get("mtime_ns") == st.st_mtime_ns:
        return read_record(dest)
    return None


def changed_since_verified(dest: str | os.PathLike) -> bool:
    """Whether ``dest`` has a record that no longer describes it (the file changed or went
    away since it was verified). No record: False (nothing was verified yet)."""
    dest = Path(dest)
    return record_path(dest).exists() and fresh_record(dest) is None


EXPECTED_KEYS = ("size", "sha256", "dandi_etag", "etag", "url", "publisher")


def expected_fields(expected: Any) -> dict[str, Any]:
    """What a file must be, from a DownloadRecord, a lock entry or a published digest: its size,
    sha256 and dandi-etag (checked), the server's etag and url (to resume only the same remote
    file), and ``publisher`` (who published the digests, named in a refusal)."""
    if expected is None:
        return {}
    d = expected.to_dict() if hasattr(expected, "to_dict") else dict(expected)
    return {k: d.get(k) for k in EXPECTED_KEYS if d.get(k) is not None}
