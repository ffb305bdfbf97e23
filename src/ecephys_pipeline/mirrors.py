"""Where each NWB file comes from: the config's mirrors in order, each copy held to the digest the
DANDI Archive publishes for it.

A file is fetched from the first mirror (``mirrors:`` in the config: ``s3``, ``dandi``,
``warehouse`` or ``local``) that delivers it verified; a mirror that does not have it, fails, or
serves other bytes is followed by the next one, and the file's record (then the lock file) says
which mirror delivered it. The expected bytes are, in order: the lock file's entry (a pinned run),
else the sha256 and dandi-etag DANDI publishes for the file in the pinned dandiset versions
(``dandi.versions``; the listing is fetched once and kept in the cache dir, docs/dandi.md §4),
else only the size, the HDF5 content and the file's identity. A copy refused for another
digest is set aside (``<file>.mismatch-<sha8>``) and the refusal names the file, the mirror and
both digests.

A mirror whose copies of a whole class of files (session files, or LFP files) all differ from
DANDI's while each is a valid NWB file of the right session or probe holds a re-packaged copy, not
corrupt bytes: after ``REPACKAGED_AFTER`` such files and none agreeing, this is said once (a
warning and ``<cache_dir>/dandi/repackaged-<mirror>-<class>.txt``) and that mirror's files of that
class are verified by size, content and lock only (their record's ``published`` is null).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from . import atomic, dandi, download, layout, lockfile, nwb, rma
from .download.record import read_json, write_record
from .download.state import mismatches
from .sources import EXPECTED_ERRORS, MIRROR_KINDS, Source, SourceError, fetch_one

try:  # advisory inter-process lock on POSIX (jobs of one run note agreement concurrently)
    import fcntl
except ImportError:  # pragma: no cover
    fcntl = None  # type: ignore[assignment]

log = logging.getLogger(__name__)

REPACKAGED_AFTER = 2  # valid files of one class differing from DANDI's, none agreeing
AGREEMENT_FILE = "agreement.json"  # under <cache_dir>/dandi/


@dataclass(frozen=True)
class Mirrors:
    """The config's ordered mirrors and the DANDI versions whose published digests hold."""

    sources: tuple[Source, ...]
    dandi_url: str | None = None
    versions: Mapping[str, str] = field(default_factory=dict)  # {} = no DANDI listing used
    verify: bool = False  # hold every file to DANDI's published digest

    @classmethod
    def of(cls, *sources: Source) -> Mirrors:
        """Mirrors without DANDI digests (size, content and lock verification only)."""
        return cls(tuple(sources))

    @classmethod
    def from_config(cls, config: Mapping) -> Mirrors:
        """``mirrors:`` (null: the metadata ``source`` alone) and ``dandi:``; a ``dandi`` mirror
        takes the ``dandi`` section's url."""
        section = config.get("dandi") or {}
        verify = bool(section.get("verify_digests"))
        entries = config.get("mirrors") or [dict(config["source"])]
        versions = dandi_versions(config)
        dandi_url = None
        if versions or any(e.get("kind") == "dandi" for e in entries):
            entry = {**section, "kind": "dandi"}
            dandi_url = Source.from_entry(entry, what="dandi", kinds=("dandi",)).url
        found, kinds = [], set()
        for i, entry in enumerate(entries):
            kind = entry.get("kind")
            if kind in kinds:
                raise SourceError(f"mirrors lists {kind!r} twice: give each kind once")
            kinds.add(kind)
            if kind == "dandi":
                found.append(Source("dandi", dandi_url))
            else:
                found.append(Source.from_entry(entry, what=f"mirrors[{i}]", kinds=MIRROR_KINDS))
        return cls(tuple(found), dandi_url, versions, verify)

    def listing(
        self, cache_dir: str | Path, *, policy: rma.RetryPolicy | None = None, keep: bool = True
    ) -> dandi.Listing | None:
        """The pinned versions' listing (read from the cache dir, else fetched and, with
        ``keep``, kept there); None when DANDI is not used."""
        if not self.versions:
            return None
        api = dandi.api_url(self.dandi_url or "")
        return dandi.load_listing(api, self.versions, cache_dir, policy=policy, keep=keep)


@dataclass(frozen=True)
class Fetching:
    """What every fetch of NWB files takes from the config, built in one place: the mirrors,
    the retry policy (``download.read_timeout_s``, ``download.max_attempts``), the download
    options and the pinned DANDI versions' listing (None when DANDI is not used)."""

    mirrors: Mirrors
    policy: rma.RetryPolicy
    options: download.Options
    listing: dandi.Listing | None

    @classmethod
    def from_config(cls, config: Mapping, *, keep: bool = True) -> Fetching:
        """``keep``: a listing fetched now is kept in the cache dir (False: the plan, which
        writes nothing)."""
        found = Mirrors.from_config(config)
        policy = rma.RetryPolicy.from_config(config)
        listing = found.listing(config["cache_dir"], policy=policy, keep=keep)
        return cls(found, policy, download.Options.from_config(config["download"]), listing)


def dandi_versions(config: Mapping) -> dict[str, str]:
    """The DANDI versions a run uses: dandi.versions when digests are verified or a mirror is
    DANDI, else none (read without touching any url_file: the workflow asks at parse time)."""
    section = config.get("dandi") or {}
    entries = config.get("mirrors") or []
    if section.get("verify_digests") or any(e.get("kind") == "dandi" for e in entries):
        return dict(section.get("versions") or {})
    return {}


def listing_files(versions: Mapping[str, str], cache_dir: str | Path) -> list[Path]:
    """Where the listings of ``versions`` are kept (the workflow's ``dandi_listing`` outputs)."""
    return [dandi.listing_file(cache_dir, d, v) for d, v in sorted(versions.items())]


def published_digest(asset: dandi.Asset) -> dict:
    """What a file must be according to DANDI (size, sha256, dandi-etag), naming the source."""
    out = asset.expected()
    if asset.dandi_etag:
        out["dandi_etag"] = asset.dandi_etag
    out["publisher"] = f"DANDI {asset.dandiset}/{asset.version} {asset.path}"
    return out


def fetch_nwb(
    mirrors: Mirrors,
    dest: str | Path,
    session_id: int,
    probe_id: int | None = None,
    *,
    cache_dir: str | Path,
    lock_file: str | Path | None = None,
    options: download.Options | None = None,
    policy: rma.RetryPolicy | None = None,
    listing: dandi.Listing | None = None,
) -> download.DownloadRecord:
    """Put one NWB file at ``dest``, verified and recorded, from the first mirror that delivers
    it (a file already there is checked and kept). ``lock_file``: the bytes must be that lock
    file's entry; ``listing``: the pinned DANDI versions' listing (with ``mirrors.verify``, the
    bytes must be the published ones, and a ``dandi`` mirror needs it to find the file)."""
    dest = Path(dest)
    options = options or download.Options()
    rel = layout.nwb_path(session_id, probe_id)
    pinned = _pinned(dest, rel, lock_file, cache_dir, mirrors)
    asset = listing.find(session_id, probe_id) if listing is not None else None
    published = published_digest(asset) if asset is not None else None
    if mirrors.verify and asset is None:
        log.warning("%s: DANDI does not publish it; verified by size and content only", rel)
    if pinned and published and pinned["sha256"] != published["sha256"]:
        log.warning(
            "%s: the lock file pins sha256 %s, DANDI publishes %s; the lock file rules",
            rel,
            pinned["sha256"],
            published["sha256"],
        )
    klass = _class_of(probe_id)
    before = _inode(dest)
    failures: list[tuple[Source, Exception]] = []
    for src in mirrors.sources:
        # DANDI's own bytes are always held to its digest; other mirrors' with dandi.verify
        # (unless their class of files is known to be re-packaged)
        holds = mirrors.verify or src.kind == "dandi"
        held = published if holds and not repackaged(cache_dir, src.kind, klass) else None
        try:
            rec = fetch_one(
                src,
                dest,
                session_id,
                probe_id,
                expected=pinned or held,
                options=options,
                policy=policy,
                asset=asset,
            )
        except download.ChecksumMismatchError as e:
            rec = _after_refusal(e, src, dest, session_id, probe_id, held, pinned, cache_dir)
            if rec is None:
                failures.append((src, e))
                log.warning("%s: refused from %s: %s", rel, src.kind, e)
                continue
        except EXPECTED_ERRORS as e:
            failures.append((src, e))
            log.warning("%s: not delivered by %s: %s", rel, src.kind, e)
            continue
        held_now = held if held is not None else (published if mirrors.verify else None)
        return _note_delivery(rec, src, dest, before, held_now, cache_dir, klass, rel)
    raise _no_mirror(rel, failures, pinned, lock_file)


def _pinned(dest: Path, rel: str, lock_file, cache_dir, mirrors: Mirrors) -> dict | None:
    if not lock_file:
        return None
    lock = lockfile.read_lock(lock_file)
    if mirrors.verify:  # the digests the lock's files were verified against, again
        lockfile.check_dandi_versions(lock, mirrors.versions, lock_file=lock_file)
    entry = lockfile.expected_for(dest, lock, cache_dir=cache_dir)
    if entry is None:
        raise lockfile.LockMismatchError(
            f"{rel} is not in the lock file {lock_file}: "
            "the selection asks for a file the pinned run did not have; remove lock_file "
            "from the config to accept new files"
        )
    return entry


def _class_of(probe_id: int | None) -> str:
    """The class of file whose agreement with DANDI is counted together."""
    return "session" if probe_id is None else "lfp"


def _inode(path: Path) -> int | None:
    try:
        return path.stat().st_ino
    except FileNotFoundError:
        return None


def _note_delivery(rec, src, dest, before, published, cache_dir, klass, rel):
    """Record which mirror delivered the file (a file kept from before keeps its origin; one
    adopted from an AllenSDK cache is ``cache``) and whose published digest it matched."""
    old = download.read_record(dest) if before is not None else None
    kept = before is not None and _inode(dest) == before
    rec.mirror = ((old.mirror if old else None) or "cache") if kept else src.kind
    agrees = published is not None and not mismatches(
        rec.size, rec.sha256, published, rec.dandi_etag
    )
    # "DANDI <dandiset>/<version>": which publication the bytes matched (the path is the file's)
    rec.published = published["publisher"].rsplit(" ", 1)[0] if agrees else None
    if published is not None and not kept:
        note_agreement(cache_dir, src.kind, klass, rel, agrees=agrees)
    write_record(dest, rec)
    return rec


def _after_refusal(e, src, dest, session_id, probe_id, held, pinned, cache_dir):
    """A copy refused for DANDI's digest alone, that is a valid NWB file of the right session or
    probe, counts as one disagreement of ``src`` with DANDI; when its class is then known to be
    re-packaged at ``src``, that copy is taken back (adopted without the published digest)."""
    aside = e.aside
    if held is None or pinned is not None or aside is None or not Path(aside).exists():
        return None
    if nwb.file_problem(Path(aside), session_id, probe_id) is not None:
        return None  # corrupt, not re-packaged
    klass, rel = _class_of(probe_id), layout.nwb_path(session_id, probe_id)
    note_agreement(cache_dir, src.kind, klass, rel, agrees=False)
    if not repackaged(cache_dir, src.kind, klass) or dest.exists():
        return None
    note = read_json(Path(f"{aside}.json")) or {}
    os.replace(aside, dest)
    Path(f"{aside}.json").unlink(missing_ok=True)
    rec = download.adopt_existing(dest, None, verify_hdf5=False)  # its content was checked above
    rec.url = note.get("url")
    return rec


def _no_mirror(rel: str, failures: list, pinned, lock_file) -> Exception:
    detail = "\n  ".join(f"{src.kind} ({src.url}): {e}" for src, e in failures)
    msg = f"no mirror delivered {rel} verified:\n  {detail or 'no mirror is configured'}"
    wrong_bytes = bool(failures) and all(
        isinstance(e, download.ChecksumMismatchError) for _, e in failures
    )
    if pinned is not None and wrong_bytes:
        return lockfile.LockMismatchError(
            f"{msg}\nIf the remote file really changed, delete its entry from the lock file "
            f"{lock_file} and re-run; otherwise re-run to download it again."
        )
    return (download.ChecksumMismatchError if wrong_bytes else download.DownloadError)(msg)


# -- the agreement of each mirror's copies with DANDI's published digests, per class of file


def _agreement_file(cache_dir: str | Path) -> Path:
    return Path(cache_dir) / layout.DANDI_DIR / AGREEMENT_FILE


@contextlib.contextmanager
def _agreement(cache_dir: str | Path) -> Iterator[dict]:
    """The agreement file, read and written back under an exclusive lock (concurrent jobs)."""
    path = _agreement_file(cache_dir)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(f"{path}.lock", "a+") as lock:
        if fcntl is not None:
            fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            doc = json.loads(path.read_text()) if path.exists() else {}
        except ValueError:
            doc = {}
        before = json.dumps(doc, sort_keys=True)
        yield doc
        if json.dumps(doc, sort_keys=True) != before:
            atomic.write_json(path, doc)


def note_agreement(cache_dir, mirror: str, klass: str, rel: str, *, agrees: bool) -> None:
    """Remember that ``mirror``'s copy of ``rel`` agreed (or not) with DANDI's digest; say once
    when a class of files turns out re-packaged at that mirror."""
    with _agreement(cache_dir) as doc:
        entry = doc.setdefault(f"{mirror}/{klass}", {"agree": [], "disagree": []})
        side = entry["agree" if agrees else "disagree"]
        if rel not in side:
            side.append(rel)
            side.sort()
        now = _verdict(entry)
    if now:
        _announce(cache_dir, mirror, klass, entry)


def repackaged(cache_dir, mirror: str, klass: str) -> bool:
    """Whether ``mirror``'s files of ``klass`` are known to differ from DANDI's as a class."""
    if not _agreement_file(cache_dir).exists():
        return False
    with _agreement(cache_dir) as doc:
        return _verdict(doc.get(f"{mirror}/{klass}") or {})


def _verdict(entry: Mapping) -> bool:
    return not entry.get("agree") and len(entry.get("disagree") or ()) >= REPACKAGED_AFTER


def _announce(cache_dir, mirror: str, klass: str, entry: Mapping) -> None:
    """Say once (the note is created once; its creator logs the warning)."""
    note = Path(cache_dir) / layout.DANDI_DIR / f"repackaged-{mirror}-{klass}.txt"
    text = (
        f"The {mirror} mirror's {klass} files differ from the digests DANDI publishes for them "
        f"({len(entry['disagree'])} valid files, none agreeing: {', '.join(entry['disagree'])}): "
        "a re-packaged copy, not corrupt bytes. Its files of this class are now verified by "
        "size, NWB content and lock file only (their lock entries have published: null). "
        "Put the dandi mirror first to get DANDI's own bytes.\n"
    )
    try:
        fd = os.open(note, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    except FileExistsError:
        return
    with os.fdopen(fd, "w") as f:
        f.write(text)
    log.warning("%s", text.strip())
