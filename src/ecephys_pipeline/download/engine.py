"""``download_file`` and ``adopt_existing``: a file at its final path only once verified.

The composition of the pieces: the lock on the destination, a file already there (trusted by its
record, else re-hashed and adopted, else set aside), then attempts of a :class:`Transfer` until
the retry policy says stop.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import requests

from .. import layout
from .digests import Digester
from .errors import ChecksumMismatchError, DownloadError
from .http import new_session, remote_info, short_exc
from .options import Options
from .progress import Progress, fmt_bytes
from .record import (
    DownloadRecord,
    expected_fields,
    fresh_record,
    read_record,
    record_path,
    write_record,
)
from .retry import AttemptFailed, RetryPolicy
from .state import DestLock, PartState, mismatches, refused_before, set_aside, verify
from .transfer import NETWORK_ERRORS, Transfer

log = logging.getLogger(__name__)

Sink = Callable[[int, int | None], None] | logging.Logger | None
Check = Callable[[Path], str | None] | None


def download_file(
    url: str,
    dest: str | os.PathLike,
    *,
    expected: Any = None,
    options: Options = Options(),  # noqa: B008 - frozen, so one shared default is safe
    session: requests.Session | None = None,
    progress: Sink = None,
    check: Check = None,
) -> DownloadRecord:
    """Download ``url`` to ``dest`` (verified, atomic, resumable); return its record.

    ``expected``: a DownloadRecord or lock entry (size, sha256, etag, url) the bytes must match.
    ``options``: timeouts, attempts, parallel connections, HDF5 check (see :class:`Options`).
    ``progress``: a logger (default: the engine's) or a callable ``(done_bytes, total_bytes)``,
    called at most every few seconds. ``check(path)``: what is wrong with a complete file's
    content, or None (default: that it does not open as HDF5); run when ``verify_hdf5`` is on.
    ``session``: shared by threads downloading other files.
    Raises DownloadError (ChecksumMismatchError for wrong bytes) naming the file, the URL and
    every attempt.
    """
    dest = Path(dest)
    exp = expected_fields(expected)
    own_session = session is None
    if own_session:
        session = new_session(pool=options.connections_per_file)
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
        with DestLock(dest):
            if dest.exists():
                rec = _present(dest, url, exp, session, options.verify_hdf5, progress, check)
                if rec is not None:
                    return rec
            _refuse_known_bytes(url, dest, exp, session)
            return _download(url, dest, exp, session, options, progress, check)
    finally:
        if own_session:
            session.close()


def _present(
    dest: Path,
    url: str,
    exp: dict[str, Any],
    session,
    verify_hdf5: bool,
    progress: Sink,
    check: Check,
) -> DownloadRecord | None:
    """``dest`` exists: return its record if it is the right file, else set it aside (None)."""
    rec = fresh_record(dest)
    if rec is not None and not mismatches(rec.size, rec.sha256, exp, rec.dandi_etag):
        log.info("%s: already downloaded (record matches size and mtime; not re-hashed)", dest)
        PartState(dest).discard()
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
            check=check,
        )
    except ChecksumMismatchError as e:
        log.warning("%s; downloading it again", e)
        return None
    PartState(dest).discard()
    return rec


def _refuse_known_bytes(url: str, dest: Path, exp: dict[str, Any], session) -> None:
    """Bytes refused before for the same expected digest, still served unchanged, are not
    fetched again (a refused multi-GB file must not be downloaded on every job try)."""
    if not exp.get("sha256") or not any(dest.parent.glob(f"{dest.name}.mismatch-*.json")):
        return
    try:
        remote = remote_info(url, session)
    except (requests.RequestException, DownloadError):
        return  # the download itself will say what is wrong with the server
    why = refused_before(dest, url, exp, remote)
    if why:
        raise ChecksumMismatchError(f"{dest.name}: {why}")


def _download(
    url: str,
    dest: Path,
    exp: dict[str, Any],
    session,
    options: Options,
    progress: Sink,
    check: Check,
) -> DownloadRecord:
    sink = progress or log
    state = PartState(dest, sink=sink)
    state.load(url, exp)
    t = Transfer(url, state, exp, session, options, sink, check)
    n = options.connections_per_file
    log.info("downloading %s from %s%s", dest.name, url, f" with {n} connections" if n > 1 else "")
    policy = _policy(options, start_bytes=state.kept())
    t0 = time.monotonic()
    while True:
        try:
            rec = t.attempt()
        except AttemptFailed as e:
            fail = e
        except NETWORK_ERRORS as e:
            fail = AttemptFailed(f"{type(e).__name__}: {short_exc(e)}")
        else:
            _report_done(t, rec, time.monotonic() - t0)
            return rec
        delay = policy.after(fail, state.kept(), state.total)
        if delay is None:
            break
        log.warning("%s: %s; retrying in %.1f s", dest.name, policy.history[-1], delay)
        time.sleep(delay)
    raise _final_error(url, state, policy)


def _policy(options: Options, *, start_bytes: int = 0) -> RetryPolicy:
    """The retry decision of one transfer or request, tuned by ``options``."""
    return RetryPolicy(
        max_attempts=options.max_attempts,
        backoff_base_s=options.backoff_base_s,
        backoff_max_s=options.backoff_max_s,
        start_bytes=start_bytes,
    )


def remote_size_retried(
    url: str,
    *,
    options: Options = Options(),  # noqa: B008 - frozen, so one shared default is safe
    session: requests.Session | None = None,
) -> int | None:
    """The size of ``url`` (HEAD, else a one-byte GET; None if the server will not say), asked
    like a download: resets, timeouts, 408/429/5xx retried with backoff and ``Retry-After``,
    bounded by ``options.max_attempts``; the final DownloadError lists every attempt."""
    policy = _policy(options)
    reasons: list[str] = []
    while True:
        try:
            return remote_info(url, session, timeout=options.timeout).size
        except DownloadError as e:
            fail = e.failure or AttemptFailed(str(e), fatal=True)
        except NETWORK_ERRORS as e:
            fail = AttemptFailed(f"{type(e).__name__}: {short_exc(e)}")
        reasons.append(f"attempt {len(reasons) + 1}: {fail.reason}")
        delay = policy.after(fail, 0, None)
        if delay is None:
            n = len(reasons)
            raise DownloadError(
                f"cannot get the size of {url} ({n} attempt{'s' if n != 1 else ''}):\n  "
                + "\n  ".join(reasons)
            )
        log.warning("size of %s: %s; retrying in %.1f s", url, fail.reason, delay)
        time.sleep(delay)


def _report_done(t: Transfer, rec: DownloadRecord, dt: float) -> None:
    if t.prog is not None and not t.prog.to_logger:
        t.prog.update(rec.size)
        t.prog.emit()  # a callable gets a final (size, size)
    log.info(
        "%s: done, %s in %.1f s (%.1f MB/s), sha256 %s",
        t.name,
        fmt_bytes(rec.size),
        dt,
        t.fetched / max(dt, 1e-9) / 1e6,
        rec.sha256,
    )


def _final_error(url: str, state: PartState, policy: RetryPolicy) -> DownloadError:
    dest, history = state.dest, policy.history
    part_note = (
        f"The partial file {state.part} ({fmt_bytes(state.size())}) is kept; re-running resumes "
        "from it."
        if state.size()
        else f"Nothing was written to {dest}."
    )
    message = (
        f"could not download {dest.name} to {dest} from {url} "
        f"({len(history)} attempt{'s' if len(history) != 1 else ''}):\n  "
        + "\n  ".join(history)
        + f"\n{part_note}"
    )
    if policy.wrong_bytes:
        aside = policy.last.aside if policy.last is not None else None
        return ChecksumMismatchError(message, aside=aside)
    return DownloadError(message)


def adopt_existing(
    dest: str | os.PathLike,
    expected: Any = None,
    *,
    url: str | None = None,
    session: requests.Session | None = None,
    verify_hdf5: bool = True,
    progress: Sink = None,
    check: Check = None,
) -> DownloadRecord:
    """Take a file that is already at ``dest`` (e.g. an AllenSDK cache) into the cache: hash it,
    compare with ``expected`` (size/sha256), or, without one, with the remote size of ``url``;
    check its content (``check``, default: it opens as HDF5); write its record. A mismatch moves
    the file aside and raises."""
    dest = Path(dest)
    exp = expected_fields(expected)
    prog = Progress(dest.name, dest.stat().st_size, progress or log, what="hashed")
    digest = Digester.of_file(dest, progress=prog.update)
    n, sha = digest.size, digest.sha256
    problems = mismatches(n, sha, exp, digest.dandi_etag)
    remote: dict[str, Any] = {}
    if url is not None and not problems:
        remote, problem = _ask_remote(url, session, dest, n, exp)
        problems += problem
    if not problems:
        problems = verify(dest, digest, {}, verify_hdf5=verify_hdf5, check=check)
    if problems:
        aside = set_aside(dest, sha, "mismatch")
        raise ChecksumMismatchError(
            f"existing file {dest} was not adopted: {'; '.join(problems)}. "
            f"It was moved to {aside}; re-run to download it again.",
            aside=aside,
        )
    rec = DownloadRecord(
        path=str(Path(os.path.abspath(dest))),
        size=n,
        sha256=sha,
        url=url if url is not None else exp.get("url"),
        etag=remote.get("etag") if remote.get("etag") is not None else exp.get("etag"),
        last_modified=remote.get("last_modified"),
        dandi_etag=digest.dandi_etag,
    )
    write_record(dest, rec)
    log.info("adopted existing %s (%s, sha256 %s)", dest, fmt_bytes(n), sha[:12])
    return rec


def _ask_remote(url, session, dest: Path, n: int, exp: dict) -> tuple[dict[str, Any], list[str]]:
    """The validators of ``url`` and, without an expected size, whether its size is ``n``."""
    try:
        info = remote_info(url, session)
    except (requests.RequestException, DownloadError) as e:
        log.warning("could not ask %s for its size (%s); adopting %s unchecked", url, e, dest)
        return {}, []
    problems = []
    if not exp.get("size") and info.size is not None and info.size != n:
        problems.append(f"size {n} bytes, but the server has {info.size} bytes")
    return {"etag": info.etag, "last_modified": info.last_modified}, problems


def verified_file(record_file: str | os.PathLike, *, expected: Any = None) -> DownloadRecord:
    """The file a ``.download.json`` record stands beside, checked before it is used.

    Cheap when nothing changed (size and mtime as recorded). A file changed since it was
    verified is re-hashed: other bytes are set aside, its record removed, and the error says to
    rerun (the download job then fetches it again). With ``expected`` (a lock entry) the recorded
    sha256 must be the pinned one. The record returned has the file's path as it is now (a moved
    cache is fine: the record's own location says where the file is).
    """
    record_file = Path(record_file)
    dest = layout.nwb_of_record(record_file)
    rec = read_record(dest)
    if rec is None:
        raise DownloadError(f"{record_file} is missing or unreadable: rerun to verify {dest.name}")
    if not dest.exists():
        record_path(dest).unlink(missing_ok=True)
        raise DownloadError(f"{dest} is missing (its record was removed): rerun to download it")
    if fresh_record(dest) is None:
        digest = Digester.of_file(dest)
        if (digest.size, digest.sha256) != (rec.size, rec.sha256):
            aside = set_aside(dest, digest.sha256, "mismatch")
            raise ChecksumMismatchError(
                f"{dest} changed after it was verified (sha256 {digest.sha256}, recorded "
                f"{rec.sha256}); it was moved to {aside}: rerun to download it again"
            )
        write_record(dest, rec)  # the same bytes, touched: trust the new mtime
    problems = mismatches(rec.size, rec.sha256, expected_fields(expected), rec.dandi_etag)
    if problems:
        aside = set_aside(dest, rec.sha256, "mismatch")
        raise ChecksumMismatchError(
            f"{dest} is not the pinned file ({'; '.join(problems)}); it was moved to {aside}: "
            "rerun to download the pinned one"
        )
    rec.path = str(dest)
    return rec
