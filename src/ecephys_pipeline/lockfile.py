"""The lock file: the sizes and sha256 digests of every downloaded file, relative to the cache dir.

Format (deterministic: sorted keys, no timestamps, paths relative to ``cache_dir`` with ``/``)::

    {"version": 1,
     "files": {"session_1/session_1.nwb":
                   {"size": 123, "sha256": "...", "url": "...", "etag": "..."}}}

Two runs that fetched identical bytes write byte-identical lock files, so the lock can be committed
and diffed. ``check_against_lock`` is what turns "the file changed" into a clear error.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from . import atomic

LOCK_VERSION = 1
_LOCK_FIELDS = ("size", "sha256", "url", "etag")


class LockError(ValueError):
    """The lock file is unreadable, or a file disagrees with it."""


class LockMismatchError(LockError):
    """A file's size or sha256 differs from the lock file's entry."""


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


def lock_document(records: Iterable[Any], *, cache_dir: str | os.PathLike) -> dict[str, Any]:
    """The lock file's content for ``records`` (DownloadRecords or their dicts)."""
    cache_dir = Path(cache_dir)
    files: dict[str, dict[str, Any]] = {}
    for rec in records:
        d = _as_dict(rec)
        key = _relative_key(d["path"], cache_dir)
        entry = {k: d.get(k) for k in _LOCK_FIELDS}
        if key in files and files[key] != entry:
            raise LockError(f"two different records for {key}: {files[key]} and {entry}")
        files[key] = entry
    return {"version": LOCK_VERSION, "files": dict(sorted(files.items()))}


def dumps_lock(doc: Mapping[str, Any]) -> str:
    return json.dumps(doc, indent=2, sort_keys=True) + "\n"


def write_lock(
    records: Iterable[Any], path: str | os.PathLike, *, cache_dir: str | os.PathLike
) -> Path:
    """Write the lock file for ``records`` atomically; returns its path."""
    return atomic.write_text(path, dumps_lock(lock_document(records, cache_dir=cache_dir)))


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
    for key, entry in files.items():
        if not isinstance(entry, dict) or not isinstance(entry.get("size"), int):
            raise LockError(f"lock file {path}: entry {key!r} has no integer 'size'")
        if not isinstance(entry.get("sha256"), str) or len(entry["sha256"]) != 64:
            raise LockError(f"lock file {path}: entry {key!r} has no 64-hex-digit 'sha256'")
    return doc


def lock_key_for(
    path: str | os.PathLike,
    lock: Mapping[str, Any],
    *,
    cache_dir: str | os.PathLike | None = None,
) -> str | None:
    """The lock key of ``path``: relative to ``cache_dir`` if given, else the longest key that is a
    path suffix of ``path``. None if the lock has no entry for it."""
    files = lock.get("files", {})
    if cache_dir is not None:
        key = _relative_key(path, Path(cache_dir))
        return key if key in files else None
    posix = Path(os.path.abspath(path)).as_posix()
    best = None
    for key in files:
        if (posix == key or posix.endswith("/" + key)) and (best is None or len(key) > len(best)):
            best = key
    return best


def expected_for(
    path: str | os.PathLike, lock: Mapping[str, Any], *, cache_dir: str | os.PathLike | None = None
) -> dict[str, Any] | None:
    """The lock entry for ``path`` (to pass as ``download_file(expected=...)``), or None."""
    key = lock_key_for(path, lock, cache_dir=cache_dir)
    return dict(lock["files"][key]) if key is not None else None


def check_against_lock(
    record: Any,
    lock: Mapping[str, Any],
    *,
    cache_dir: str | os.PathLike | None = None,
    set_aside: bool = True,
) -> None:
    """Raise LockMismatchError if ``record``'s size or sha256 differs from the lock's entry.

    On a mismatch the file is renamed to ``<path>.mismatch-<sha8>`` (and its record removed) so it
    is never used, unless ``set_aside=False``. A file the lock does not list is an error too.
    """
    d = _as_dict(record)
    path = Path(d["path"])
    key = lock_key_for(path, lock, cache_dir=cache_dir)
    if key is None:
        raise LockMismatchError(
            f"{path} is not in the lock file; add it by re-running the lock step "
            "(or delete the lock file to accept the current remote files)"
        )
    want = lock["files"][key]
    problems = []
    if want.get("size") != d.get("size"):
        problems.append(f"size {d.get('size')} bytes, the lock says {want.get('size')}")
    if want.get("sha256") != d.get("sha256"):
        problems.append(f"sha256 {d.get('sha256')}, the lock says {want.get('sha256')}")
    if not problems:
        return
    moved = ""
    if set_aside and path.exists():
        from .download import set_aside as _set_aside  # local import: download imports us

        aside = _set_aside(path, d.get("sha256") or "unknown", "mismatch")
        moved = f" The file was moved to {aside} and is not used."
    raise LockMismatchError(
        f"{key} ({path}) does not match the lock file: "
        + "; ".join(problems)
        + f" (url {d.get('url')})."
        + moved
        + " If the remote file really changed, delete its entry from the lock file and re-run;"
        " otherwise re-run to download it again."
    )
