"""Atomic writes: the one way this package puts a file at its final path.

Every writer goes through a temporary file in the destination's directory (same file system),
flushed and fsynced, then ``os.replace``d onto the final name; on any failure the temporary file
is removed. A reader (or a rerun after a kill) sees the old file or the new one, never half of
one, and no ``.tmp`` junk is left behind.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any


@contextmanager
def output_path(path: str | os.PathLike, *, suffix: str = ".tmp") -> Iterator[Path]:
    """Yield a temporary path next to ``path``; on success it becomes ``path`` atomically.

    For writers that need a file name (HDF5, Parquet, ``df.to_csv``). The caller writes and
    closes the file; it is fsynced here before the rename.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=suffix)
    os.close(fd)
    try:
        yield Path(tmp)
        with open(tmp, "rb") as handle:
            os.fsync(handle.fileno())
        os.chmod(tmp, 0o644)  # mkstemp makes 0600; a final file has ordinary permissions
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_text(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` (UTF-8, newlines as given) to ``path`` atomically."""
    path = Path(path)
    with output_path(path) as tmp:
        with open(tmp, "w", encoding="utf-8", newline="") as handle:
            handle.write(text)
    return path


def dumps_json(obj: Any) -> str:
    """The JSON form of every artifact this package writes: sorted keys, 2-space indent, a final
    newline, and no NaN/Infinity (they are not JSON)."""
    return json.dumps(obj, indent=2, sort_keys=True, allow_nan=False) + "\n"


def write_json(path: str | os.PathLike, obj: Any) -> Path:
    """Write ``obj`` as :func:`dumps_json` to ``path`` atomically."""
    return write_text(path, dumps_json(obj))


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: alive
        return True
    return True


@contextmanager
def scratch_dir(parent: str | os.PathLike, prefix: str) -> Iterator[Path]:
    """A private working directory ``<parent>/<prefix>-<pid>-<random>``, removed on exit.

    A process killed with SIGKILL cannot clean up: scratch directories with the same ``prefix``
    whose owner is no longer running are removed first, so they never pile up.
    """
    parent = Path(parent)
    parent.mkdir(parents=True, exist_ok=True)
    for old in parent.glob(f"{prefix}-*-*"):
        owner = old.name[len(prefix) + 1 :].split("-", 1)[0]
        if old.is_dir() and owner.isdigit() and not _alive(int(owner)):
            shutil.rmtree(old, ignore_errors=True)
    path = Path(tempfile.mkdtemp(dir=parent, prefix=f"{prefix}-{os.getpid()}-"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def fsync_dir(path: str | os.PathLike) -> None:
    """Make a rename inside ``path`` durable (where the platform supports it)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # pragma: no cover - not supported on this platform/file system
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover
        pass
    finally:
        os.close(fd)
