"""The lock file: the sizes and sha256 digests of every downloaded file, relative to the cache dir.

Format (deterministic: sorted keys, no timestamps, paths relative to ``cache_dir`` with ``/``)::

    {"version": 1,
     "dandi": {"000021": "0.251116.2246", ...},          # the DANDI versions verified against
     "files": {"session_1/session_1.nwb":
                   {"size": 123, "sha256": "...", "dandi_etag": "...-1", "url": "...",
                    "etag": "...", "mirror": "s3", "published": "DANDI 000021/0.251116.2246"}}}

``mirror`` says which of the config's mirrors delivered the file, ``published`` whose published
digest it matched (null: verified by size, content and lock only). Two runs that fetched
identical bytes from the same mirrors write byte-identical lock files, so the lock can be
committed and diffed. A file is held to its entry by passing ``expected_for(...)`` to the download
engine as the bytes it must have (``mirrors.fetch_nwb`` does); this module knows nothing of
downloads.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from . import atomic

LOCK_VERSION = 1
_LOCK_FIELDS = ("size", "sha256", "dandi_etag", "url", "etag", "mirror", "published")


class LockError(ValueError):
    """The lock file is unreadable, or a file disagrees with it."""


class LockMismatchError(LockError):
    """A file is not in the lock file, or its bytes differ from the lock file's entry."""


def _as_dict(record: Any) -> dict[str, Any]:
    if isinstance(record, Mapping):
        return dict(record)
    if hasattr(record, "to_dict"):
        return record.to_dict()
    raise TypeError(f"expected a DownloadRecord or a dict, got {type(record).__name__}")


def _relative_key(path: str | os.PathLike, cache_dir: Path) -> str:
    p = Path(path)
    if not p.is_absolute():
        p = Path.cwd() / p
    try:
        rel = Path(os.path.abspath(p)).relative_to(os.path.abspath(cache_dir))
    except ValueError:
        raise LockError(
            f"{path} is not inside the cache dir {cache_dir}; the lock file only holds paths "
            "relative to the cache dir (download into cache_dir, or pass the right cache_dir)"
        ) from None
    return rel.as_posix()


def lock_document(
    records: Iterable[Any],
    *,
    cache_dir: str | os.PathLike,
    dandi: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """The lock file's content for ``records`` (DownloadRecords or their dicts); ``dandi``: the
    DANDI versions ({dandiset: version}) whose published digests the run verified against."""
    cache_dir = Path(cache_dir)
    files: dict[str, dict[str, Any]] = {}
    for rec in records:
        d = _as_dict(rec)
        key = _relative_key(d["path"], cache_dir)
        entry = {k: d.get(k) for k in _LOCK_FIELDS}
        if key in files and files[key] != entry:
            raise LockError(f"two different records for {key}: {files[key]} and {entry}")
        files[key] = entry
    doc: dict[str, Any] = {"version": LOCK_VERSION, "files": dict(sorted(files.items()))}
    if dandi:
        doc["dandi"] = dict(sorted(dandi.items()))
    return doc


def dumps_lock(doc: Mapping[str, Any]) -> str:
    return json.dumps(doc, indent=2, sort_keys=True) + "\n"


def write_lock(
    records: Iterable[Any],
    path: str | os.PathLike,
    *,
    cache_dir: str | os.PathLike,
    dandi: Mapping[str, str] | None = None,
) -> Path:
    """Write the lock file for ``records`` atomically; returns its path."""
    doc = lock_document(records, cache_dir=cache_dir, dandi=dandi)
    return atomic.write_text(path, dumps_lock(doc))


def read_lock(path: str | os.PathLike) -> dict[str, Any]:
    """Read and validate a lock file."""
    path = Path(path)
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise LockError(f"lock file {path} does not exist") from None
    except json.JSONDecodeError as e:
        raise LockError(f"lock file {path} is not valid JSON ({e}); restore it from git") from None
    if not isinstance(doc, dict) or doc.get("version") != LOCK_VERSION:
        found = doc.get("version") if isinstance(doc, dict) else None
        raise LockError(
            f"lock file {path} has version {found!r}, this code reads version {LOCK_VERSION}"
        )
    files = doc.get("files")
    if not isinstance(files, dict):
        raise LockError(f"lock file {path} has no 'files' mapping")
    dandi = doc.get("dandi", {})
    if not isinstance(dandi, dict) or not all(isinstance(v, str) for v in dandi.values()):
        raise LockError(f"lock file {path}: 'dandi' must map dandisets to versions")
    for key, entry in files.items():
        if not isinstance(entry, dict) or not isinstance(entry.get("size"), int):
            raise LockError(f"lock file {path}: entry {key!r} has no integer 'size'")
        if not isinstance(entry.get("sha256"), str) or len(entry["sha256"]) != 64:
            raise LockError(f"lock file {path}: entry {key!r} has no 64-hex-digit 'sha256'")
    return doc


def check_dandi_versions(
    lock: Mapping[str, Any], versions: Mapping[str, str], *, lock_file: str | os.PathLike
) -> None:
    """A run pinned to a lock file verifies against the DANDI versions the lock was made with."""
    pinned = lock.get("dandi") or {}
    differ = {k: (v, versions.get(k)) for k, v in pinned.items() if versions.get(k) != v}
    if differ:
        said = ", ".join(f"{k}: lock {a}, config {b}" for k, (a, b) in sorted(differ.items()))
        raise LockError(
            f"the lock file {lock_file} was verified against other DANDI versions ({said}): "
            "set dandi.versions to the lock's, or remove lock_file from the config"
        )


def expected_for(
    path: str | os.PathLike, lock: Mapping[str, Any], *, cache_dir: str | os.PathLike
) -> dict[str, Any] | None:
    """The lock entry for ``path`` in ``cache_dir`` (to pass as ``download_file(expected=...)``),
    or None if the lock does not list it."""
    entry = lock.get("files", {}).get(_relative_key(path, Path(cache_dir)))
    return dict(entry) if entry is not None else None
