"""The ``.part`` of one destination as one object: the bytes, their sidecar, their digest.

Bytes stream into ``dest.part`` next to a sidecar ``dest.part.json`` ({url, etag, last_modified,
size}, plus ``ranges`` [[start, end, done], ...] while a parallel transfer is in flight). The
sidecar says whether the bytes can be resumed; :class:`PartState` makes that decision, restarts,
turns a parallel ``.part`` into a contiguous prefix, sets a bad file aside, and finally places a
verified ``.part`` at ``dest`` with its record. Nothing half-written ever sits at ``dest``.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from ..atomic import fsync_dir, write_json
from .digests import CHUNK, Digester
from .errors import DownloadError
from .http import validator
from .progress import Progress, fmt_bytes
from .record import DownloadRecord, read_json, record_path, write_record

try:  # advisory inter-process lock on POSIX; elsewhere we rely on Snakemake's own locking
    import fcntl
except ImportError:  # pragma: no cover
    fcntl = None  # type: ignore[assignment]

log = logging.getLogger(__name__)


def part_path(dest: str | os.PathLike) -> Path:
    return Path(str(dest) + ".part")


def sidecar_path(dest: str | os.PathLike) -> Path:
    return Path(str(dest) + ".part.json")


def set_aside(path: Path, sha256: str, why: str, *, dest: Path | None = None) -> Path:
    """Rename a rejected file to ``<dest>.<why>-<sha8>`` (``dest`` defaults to ``path``) so it is
    never used again; return the new path."""
    path = Path(path)
    dest = Path(dest) if dest is not None else path
    aside = Path(f"{dest}.{why}-{sha256[:8]}")
    os.replace(path, aside)
    record_path(dest).unlink(missing_ok=True)
    log.warning("moved rejected file %s to %s", path, aside)
    return aside


def refusal_path(aside: Path) -> Path:
    return Path(f"{aside}.json")


def write_refusal(aside: Path, *, url: str, meta: Mapping[str, Any], expected: Mapping) -> None:
    """Remember why the copy at ``aside`` was refused: where it came from, how the server
    described it (ETag, Last-Modified, size) and which sha256 was expected instead."""
    write_json(
        refusal_path(aside),
        {
            "url": url,
            "etag": meta.get("etag"),
            "last_modified": meta.get("last_modified"),
            "size": meta.get("size"),
            "expected_sha256": expected.get("sha256"),
        },
    )


def refused_before(dest: Path, url: str, expected: Mapping[str, Any], remote) -> str | None:
    """If ``url`` still describes (same strong validator and size) bytes refused before for the
    same expected sha256, say so: downloading them again would only be refused again."""
    if not expected.get("sha256"):
        return None
    for note_path in sorted(dest.parent.glob(f"{dest.name}.mismatch-*.json")):
        note = read_json(note_path)
        aside = Path(str(note_path)[: -len(".json")])
        if not note or not aside.exists() or note.get("expected_sha256") != expected["sha256"]:
            continue
        if note.get("url") != url or note.get("size") != remote.size:
            continue
        same = (note.get("etag") and note["etag"] == remote.etag) or (
            note.get("last_modified") and note["last_modified"] == remote.last_modified
        )
        if same:
            return (
                f"{url} still serves the file refused before (same ETag/Last-Modified and size "
                f"{remote.size}; that copy is {aside}), not the expected sha256 "
                f"{expected['sha256']}; not downloaded again. Delete {aside} to try anyway."
            )
    return None


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


def mismatches(
    size: int, sha: str, exp: Mapping[str, Any], dandi_etag: str | None = None
) -> list[str]:
    """What differs from the expected size, sha256 and dandi-etag (empty if nothing, or nothing
    expected; a dandi-etag is compared only when both sides have one). A published digest is
    named with its publisher (``exp["publisher"]``)."""
    by = f" ({exp['publisher']})" if exp.get("publisher") else ""
    out = []
    if exp.get("size") is not None and exp["size"] != size:
        out.append(f"size {size} bytes, expected {exp['size']}{by}")
    if exp.get("sha256") and exp["sha256"] != sha:
        out.append(f"sha256 {sha}, expected {exp['sha256']}{by}")
    if exp.get("dandi_etag") and dandi_etag and exp["dandi_etag"] != dandi_etag:
        out.append(f"dandi-etag {dandi_etag}, expected {exp['dandi_etag']}{by}")
    return out


def verify(
    path: Path,
    digest: Digester,
    exp: Mapping[str, Any],
    *,
    verify_hdf5: bool,
    announced: int | None = None,
    subject: str = "",
    check: Callable[[Path], str | None] | None = None,
) -> list[str]:
    """Everything wrong with the file at ``path`` whose bytes gave ``digest``: a size other than
    the ``announced`` one, a size or sha256 other than expected, or (only if the bytes are
    right) not HDF5 (or, with ``check``, whatever ``check(path)`` says is wrong with its content:
    e.g. that it is another session's file); the sentence starts with ``subject``. Empty if the
    file is good."""
    problems = []
    if announced is not None and digest.size != announced:
        problems.append(f"{digest.size} bytes on disk but the server announced {announced}")
    problems += mismatches(digest.size, digest.sha256, exp, digest.dandi_etag)
    if not problems and verify_hdf5:
        p = (check or hdf5_problem)(path)
        if p:
            problems.append(f"{subject} {p}" if subject else p)
    return problems


def resumable_bytes(dest: str | os.PathLike) -> int:
    """Bytes of ``dest.part`` a download would keep: 0 without a readable sidecar (the ``.part``
    will be discarded); a parallel ``.part`` is preallocated (sparse), so its sidecar's per-range
    progress counts, not its size."""
    meta = read_json(sidecar_path(dest))
    part = part_path(dest)
    if meta is None or not part.exists():
        return 0
    if meta.get("ranges"):
        return sum(done for _start, _end, done in meta["ranges"])
    return part.stat().st_size


class PartState:
    """The ``.part`` of ``dest``: its bytes, its sidecar ``meta`` and a digest of its prefix.

    ``digest`` (when not None) covers exactly the bytes ``[0, digest.size)`` of the ``.part``.
    """

    def __init__(self, dest: Path, *, sink: Any = None):
        self.dest = Path(dest)
        self.part, self.sidecar = part_path(dest), sidecar_path(dest)
        self.meta: dict[str, Any] | None = None
        self.digest: Digester | None = None
        self.sink = sink or log

    @property
    def name(self) -> str:
        return self.dest.name

    @property
    def ranges(self) -> list[list[int]] | None:
        return (self.meta or {}).get("ranges")

    @property
    def total(self) -> int | None:
        """The remote file's size the sidecar records (None if unknown)."""
        return (self.meta or {}).get("size")

    def size(self) -> int:
        try:
            return self.part.stat().st_size
        except FileNotFoundError:
            return 0

    def kept(self) -> int:
        """Bytes of the file the ``.part`` holds (a parallel ``.part`` is sparse)."""
        ranges = self.ranges
        return sum(r[2] for r in ranges) if ranges else self.size()

    def save(self, meta: dict[str, Any] | None = None) -> None:
        """Write the sidecar (``meta`` replaces the current one if given)."""
        if meta is not None:
            self.meta = meta
        write_json(self.sidecar, self.meta)

    def save_snapshot(self, snapshot: dict[str, Any]) -> None:
        """Write a copy of ``meta`` taken while writers were paused (parallel progress)."""
        write_json(self.sidecar, snapshot)

    # -- the resume decision
    def load(self, url: str, exp: Mapping[str, Any]) -> None:
        """Decide whether an existing .part can be resumed from ``url``; else discard it."""
        meta = read_json(self.sidecar)
        if not self.part.exists():
            self.meta = None
            self.sidecar.unlink(missing_ok=True)
            return
        why = _reason_to_discard(meta, url, exp)
        if why:
            log.warning(
                "%s: discarding %s (%s): %s", self.name, self.part, fmt_bytes(self.size()), why
            )
            self.restart()
            return
        if meta.get("url") != url:
            # Same file from another address (a new port, the S3 mirror of a warehouse file):
            # the stored validator goes out as If-Range, and a server whose copy differs answers
            # 200 with the whole file, which restarts the .part from zero. Nothing unsafe is kept.
            log.info(
                "%s: the .part came from %s; resuming from %s guarded by its validator",
                self.name,
                meta.get("url"),
                url,
            )
        self.meta = meta  # with "ranges", a parallel call continues each range
        log.info(
            "%s: found %s with %s, will resume", self.name, self.part.name, fmt_bytes(self.size())
        )

    def restart(self, meta: dict[str, Any] | None = None) -> None:
        """Empty the .part (and sidecar); with ``meta``, write the new sidecar first."""
        self.digest = Digester()
        self.meta = meta
        # Empty the .part BEFORE writing the new sidecar: a kill in between must never leave old
        # bytes described by new validators (a later resume would splice two versions).
        if meta is None:
            self.part.unlink(missing_ok=True)
            self.sidecar.unlink(missing_ok=True)
            return
        with open(self.part, "wb"):
            pass
        self.save()

    def discard(self) -> None:
        self.part.unlink(missing_ok=True)
        self.sidecar.unlink(missing_ok=True)

    def to_single_stream(self) -> int:
        """Turn a parallel .part into a contiguous prefix; returns its length."""
        if self.ranges:
            prefix = 0
            for start, end, done in sorted(self.ranges):
                if start != prefix:
                    break
                prefix += done
                if done < end - start:
                    break
            with open(self.part, "r+b") as f:
                f.truncate(prefix)
            del self.meta["ranges"]
            self.save()
            self.digest = None
        return self.size()

    def ensure_hashed(self, upto: int) -> None:
        """Make the digest cover exactly bytes [0, upto) of the .part."""
        if self.digest is not None and self.digest.size == upto:
            return
        if upto:
            log.info("%s: hashing the %s already in %s", self.name, fmt_bytes(upto), self.part.name)
        self.digest = Digester.of_file(self.part, upto)

    def full_digest(self) -> Digester:
        """The digest of the whole .part (re-hashed unless the running digest covers it)."""
        size = self.size()
        if self.digest is None or self.digest.size != size:
            prog = Progress(self.name, size, self.sink, what="hashed")
            self.digest = Digester.of_file(self.part, progress=prog.update)
        return self.digest

    # -- a local copy
    def copy_from(self, src: Path) -> Digester:
        """Copy ``src`` into an empty .part, hashing in the same pass; fsynced."""
        self.restart()
        digest = self.digest
        with open(src, "rb") as fin, open(self.part, "wb") as fout:
            while chunk := fin.read(CHUNK):
                digest.update(chunk)
                fout.write(chunk)
            fout.flush()
            os.fsync(fout.fileno())
        return digest

    # -- the end: set aside or placed
    def set_aside(self, why: str) -> Path:
        """Move the .part to ``dest.<why>-<sha8>``; the next attempt starts from nothing."""
        sha = self.full_digest().sha256
        aside = set_aside(self.part, sha, why, dest=self.dest)
        self.sidecar.unlink(missing_ok=True)
        self.meta, self.digest = None, None
        return aside

    def place(self, rec: DownloadRecord) -> DownloadRecord:
        """Put the verified .part at ``dest`` with its record ``rec``."""
        with open(self.part, "rb") as f:
            os.fsync(f.fileno())
        # Placement order: record first, then os.replace(part, dest), then drop the sidecar.
        # - os.replace, not os.link: with a hard link, a kill between link and unlink leaves
        #   dest and .part as ONE inode, and a later resume/truncate of the .part would corrupt
        #   dest in place. os.replace is one atomic rename and needs no hard-link support (some
        #   network/FUSE cluster file systems have none).
        # - rename keeps the inode and mtime, so the record's mtime_ns (taken from the .part)
        #   matches dest and a rerun adopts it without hashing. A kill after the record but before
        #   the rename leaves a complete, verified .part: the rerun skips the request, re-hashes and
        #   places it. A kill after the rename leaves dest + record: nothing is lost either way.
        write_record(self.dest, rec, mtime_ns=self.part.stat().st_mtime_ns)
        os.replace(self.part, self.dest)
        fsync_dir(self.dest.parent)
        self.sidecar.unlink(missing_ok=True)
        return rec


def _reason_to_discard(meta: dict | None, url: str, exp: Mapping[str, Any]) -> str | None:
    """Why a .part with sidecar ``meta`` must not be resumed from ``url`` (None: resume it)."""
    if meta is None:
        return "it has no readable sidecar"
    if meta.get("url") != url and not validator(meta):
        return f"it came from another URL ({meta.get('url')}) that sent no ETag/Last-Modified"
    if exp.get("size") is not None and meta.get("size") not in (None, exp["size"]):
        return f"its remote size {meta.get('size')} differs from the expected {exp['size']}"
    if (
        exp.get("etag")
        and meta.get("etag")
        and exp.get("url") == url
        and meta["etag"] != exp["etag"]
    ):
        return f"its ETag {meta['etag']} differs from the expected {exp['etag']}"
    return None


class DestLock:
    """Advisory lock so two processes never write the same .part (`dest.part.lock`)."""

    def __init__(self, dest: Path):
        self.path = Path(str(dest) + ".part.lock")
        self.fd: int | None = None

    def __enter__(self) -> DestLock:
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
            self.path.unlink(missing_ok=True)
            os.close(self.fd)
