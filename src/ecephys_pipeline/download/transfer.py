"""The bytes of one file over HTTP, carried across attempts: one stream, or parallel ranges.

One stream resumes a ``.part`` with ``Range`` guarded by ``If-Range`` (or by the total size when
the server sends no validator); a server that answers 200 instead of 206 restarts the file from
zero. The body is written and hashed in a helper thread while the next bytes arrive. Parallel
ranges (``ranges.py``) are used when asked for and served, else one stream. Every attempt ends in
a verified file placed at its destination, or in an :class:`~.retry.AttemptFailed` that the retry
policy judges.
"""

from __future__ import annotations

import logging
import os
import queue
import shutil
import threading
from pathlib import Path
from typing import Any

import requests

from . import ranges
from .digests import Digester
from .http import (
    IDENTITY,
    NETWORK_ERRORS,
    RateFloor,
    info_from_probe,
    int_header,
    iter_body,
    parse_content_range,
    probe,
    range_headers,
    short_exc,
    status_failure,
    unsatisfied_size,
    validator,
    validators,
)
from .options import Options
from .progress import Progress, fmt_bytes
from .record import DownloadRecord
from .retry import AttemptFailed, RangesUnsupported
from .state import PartState, mismatches, verify, write_refusal
from .writeback import Writeback

log = logging.getLogger(__name__)

_PIPELINE_DEPTH = 8  # chunks between the receiving and the writing/hashing thread


class Transfer:
    """State of one ``download_file`` call, carried across attempts."""

    def __init__(
        self,
        url: str,
        state: PartState,
        exp: dict[str, Any],
        session: requests.Session,
        options: Options,
        sink: Any,
        check: Any = None,
    ):
        self.url, self.state, self.exp, self.session = url, state, exp, session
        self.check = check  # content check of a complete file (None: opens as HDF5)
        self.reserve = options.reserve_free_gb
        self.wrong_digests: set[str] = set()  # sha256 of complete files refused in this call
        self.timeout = options.timeout
        self.connections = options.connections_per_file
        self.verify_hdf5 = options.verify_hdf5
        self.sink = sink
        self.prog: Progress | None = None
        self.fetched = 0  # bytes received over the network in this call

    @property
    def name(self) -> str:
        return self.state.name

    def attempt(self) -> DownloadRecord:
        """One attempt: the missing bytes, then verification and placement."""
        if self.connections > 1:
            try:
                self.attempt_parallel()
                return self.finish()
            except RangesUnsupported as e:
                log.info("%s: %s; using a single connection", self.name, e)
                self.connections = 1
                if self.state.ranges:
                    self.state.to_single_stream()
        self.attempt_single()
        return self.finish()

    def check_remote_identity(self, total: int | None, etag: str | None) -> None:
        """Before streaming a fresh body: does the server describe the expected file?"""
        exp = self.exp
        if exp.get("etag") and etag and exp.get("url") == self.url and etag != exp["etag"]:
            raise AttemptFailed(
                f"the server's ETag {etag} differs from the expected {exp['etag']}: the remote "
                "file changed since the lock file was written; if that is intended, delete its "
                "entry from the lock file and re-run",
                fatal=True,
            )
        if exp.get("size") is not None and total is not None and total != exp["size"]:
            raise AttemptFailed(
                f"the server announces {total} bytes but {exp['size']} are expected",
                bad_bytes=True,
            )

    def progress(self, total: int | None, start: int) -> Progress:
        if self.prog is None:
            self.prog = Progress(self.name, total, self.sink, start=start)
        self.prog.total = total
        return self.prog

    # -- one stream
    def attempt_single(self) -> None:
        st = self.state
        offset = st.to_single_stream() if st.meta else 0
        total = st.total
        if offset and total is not None:
            if offset == total:  # complete already: a Range would only get a 416
                st.ensure_hashed(offset)
                return
            if offset > total:
                st.restart()
                raise AttemptFailed(
                    f".part is larger ({offset}) than the file ({total})", verify=True
                )
        headers = dict(IDENTITY)
        if offset:
            st.ensure_hashed(offset)  # before the request, not while the server waits
            headers = range_headers(st.meta, offset)
        with self.session.get(self.url, headers=headers, stream=True, timeout=self.timeout) as resp:
            start = self.accept(resp, offset, total)
            if start is None:
                return  # the .part was complete (416)
            st.ensure_hashed(start)
            got = self.stream(resp, start, st.total)
        end, total = start + got, st.total
        if total is None:  # no Content-Length: trust the close, verification decides
            st.meta["size"] = end
            st.save()
        elif end != total:
            raise AttemptFailed(f"the body ended at byte {end} of {total} (short body)")

    def accept(self, resp: requests.Response, offset: int, total: int | None) -> int | None:
        """Judge the answer to a request from ``offset``: where its body starts in the file, or
        None if the .part is already complete. Raises AttemptFailed for anything else."""
        code = resp.status_code
        if code == 416:
            return self.on_416(resp, offset, total)
        if code not in (200, 206):
            raise status_failure(resp)
        if code == 206:
            self.on_206(resp, offset, total)
            return offset
        self.on_200(resp, offset)
        return 0

    def on_416(self, resp: requests.Response, offset: int, total: int | None) -> None:
        st = self.state
        # complete only if the server's size is the .part's and the one it announced
        if offset and unsatisfied_size(resp) == offset and total in (None, offset):
            st.meta["size"] = offset
            st.save()
            st.ensure_hashed(offset)
            return None
        st.restart()
        raise AttemptFailed(
            f"HTTP 416 for a Range from byte {offset}; restarting at 0", verify=True
        )

    def on_206(self, resp: requests.Response, offset: int, total: int | None) -> None:
        st = self.state
        cr = parse_content_range(resp.headers.get("Content-Range"))
        bad = self.resume_problem(resp, cr, offset, total)
        if bad:
            st.restart()
            raise AttemptFailed(f"cannot resume: {bad}; restarting at 0", verify=True)
        if total is None:
            st.meta["size"] = cr[2]
            st.save()
        log.info("%s: resuming at %s of %s", self.name, fmt_bytes(offset), fmt_bytes(st.total))

    def resume_problem(self, resp, cr, offset: int, total: int | None) -> str | None:
        """Why a 206 from ``offset`` cannot be appended to the .part (None: it can)."""
        meta = self.state.meta or {}
        etag = resp.headers.get("ETag")
        length = int_header(resp, "Content-Length")
        if not offset or cr is None:
            return f"unexpected 206 (Content-Range {resp.headers.get('Content-Range')!r})"
        if cr[0] != offset:
            return f"Content-Range starts at {cr[0]}, not at the requested {offset}"
        if total is not None and cr[2] is not None and cr[2] != total:
            return f"the remote file is now {cr[2]} bytes, the .part was for {total}"
        if meta.get("etag") and etag and etag != meta["etag"]:
            return f"ETag changed from {meta['etag']} to {etag}"
        if not validator(meta) and (length is None or offset + length != total):
            # no validator: the total size is the only guard that this is the same file
            return f"no validator and the sizes disagree ({offset}+{length} != {total})"
        return None

    def on_200(self, resp: requests.Response, offset: int) -> None:
        if offset:
            log.warning(
                "%s: the server sent the whole file (HTTP 200) instead of the range from "
                "byte %d (Range ignored or the file changed); restarting from zero",
                self.name,
                offset,
            )
        total = int_header(resp, "Content-Length")
        v = validators(resp)
        self.check_remote_identity(total, v["etag"])
        log.info("%s: fetching %s", self.name, fmt_bytes(total))
        self.state.restart({"url": self.url, **v, "size": total})

    def stream(self, resp: requests.Response, offset: int, total: int | None) -> int:
        """Append the body to the .part, hashing it; returns the bytes written.

        Receiving runs here, writing + hashing in a helper thread (both release the GIL), so the
        socket, the disk and sha256 overlap; at most ``_PIPELINE_DEPTH`` chunks are in flight.
        The helper writes and hashes the same bytes in order, so the digest always covers exactly
        the .part's bytes, whatever ends the attempt.
        """
        prog = self.progress(total, offset)
        limit = None if total is None else total - offset
        # No Content-Length: the body ends when the server closes. Bound it by the disk, keeping
        # reserve_free_gb free, so a server that never stops cannot fill the file system.
        room = None
        if limit is None:
            room = shutil.disk_usage(self.state.part.parent).free - int(self.reserve * 1e9)
        writer = _Writer(self.state.part, self.state.digest, self.name)
        got, slow, net_error = 0, None, None
        floor = RateFloor()
        try:
            for chunk in iter_body(resp):
                slow = floor.too_slow(got)
                if writer.error or slow:
                    break
                if limit is not None and got + len(chunk) > limit:
                    chunk = chunk[: limit - got]
                if room is not None and got + len(chunk) > room:
                    raise AttemptFailed(
                        f"the server sent no Content-Length and the body passed {got} bytes, all "
                        f"the room left in {self.state.part.parent} while keeping "
                        f"download.reserve_free_gb ({self.reserve:g} GB) free; not continued "
                        "(free space, lower reserve_free_gb, or use a source that says the size)",
                        fatal=True,
                    )
                writer.put(chunk)
                got += len(chunk)
                self.fetched += len(chunk)
                prog.update(offset + got)
                if limit is not None and got >= limit:
                    break
        except NETWORK_ERRORS as e:
            net_error = e
        finally:
            writer.close()
        if writer.error:
            e = writer.error
            raise AttemptFailed(f"writing {self.state.part} failed: {e}", fatal=True) from e
        if net_error is not None:
            raise AttemptFailed(
                f"{type(net_error).__name__}: {short_exc(net_error)} after {got} bytes of this "
                "attempt"
            ) from net_error
        if slow:
            raise AttemptFailed(f"{slow} after {got} bytes of this attempt")
        return writer.written

    # -- parallel ranges
    def attempt_parallel(self) -> None:
        st = self.state
        if not st.ranges:
            with probe(self.session, self.url, self.timeout) as r:
                info = info_from_probe(r)
                if info is None:
                    raise status_failure(r)
            if not info.accepts_ranges or not info.size:
                raise RangesUnsupported("the server does not answer Range requests with 206")
            self.check_remote_identity(info.size, info.etag)
            ranges.prepare(st, self.url, info, self.connections)
        # the pieces are taken in file order; the run hashes the prefix as it fills (st.digest)
        run = ranges.ParallelRun(
            st, self.open_range, self.progress(st.total, st.kept()), self.connections
        )
        run.fetch_all()
        self.fetched += run.fetched
        run.raise_failure()
        # All ranges are in: from here on this is a plain complete .part.
        del st.meta["ranges"]
        st.save()

    def open_range(self, headers: dict[str, str]) -> requests.Response:
        return self.session.get(self.url, headers=headers, stream=True, timeout=self.timeout)

    # -- verification and placement
    def finish(self) -> DownloadRecord:
        st = self.state
        meta = st.meta or {}
        digest = st.full_digest()
        problems = verify(
            st.part,
            digest,
            self.exp,
            verify_hdf5=self.verify_hdf5,
            announced=meta.get("size"),
            subject="the downloaded file",
            check=self.check,
        )
        if problems:
            digests = ("sha256", "size", "dandi-etag")
            why = "mismatch" if any(d in p for p in problems for d in digests) else "invalid"
            # The whole file arrived, of the expected size, and hashes to something else. Once
            # may be a transient corruption (asked again); the same wrong bytes twice mean the
            # server serves other bytes than the expected ones: final, and remembered beside
            # the set-aside copy so that a later try or run does not fetch them again. Against
            # a published digest once is final: the next mirror is a better bet than this one.
            wrong = (
                self.exp.get("sha256") is not None
                and digest.size == self.exp.get("size", digest.size)
                and digest.sha256 != self.exp["sha256"]
            )
            differs = bool(mismatches(digest.size, digest.sha256, self.exp, digest.dandi_etag))
            complete = digest.size == meta.get("size", digest.size)  # all that was announced
            refused = (wrong and digest.sha256 in self.wrong_digests) or (
                differs and complete and bool(self.exp.get("publisher"))
            )
            if wrong:
                self.wrong_digests.add(digest.sha256)
            aside = st.set_aside(why)
            if refused:
                write_refusal(aside, url=self.url, meta=meta, expected=self.exp)
            raise AttemptFailed(
                "verification failed: " + "; ".join(problems) + f" (bad copy moved to {aside})",
                bad_bytes=True,
                refused=refused,
                aside=aside,
            )
        rec = DownloadRecord(
            path=str(Path(os.path.abspath(st.dest))),
            size=digest.size,
            sha256=digest.sha256,
            url=self.url,
            etag=meta.get("etag"),
            last_modified=meta.get("last_modified"),
            dandi_etag=digest.dandi_etag,
        )
        return st.place(rec)


class _Writer:
    """Writes and hashes chunks, in order, in a helper thread (the dandi-etag's md5 in one more:
    :meth:`Digester.in_two_threads`), starting their write-out to disk as it goes; at most
    ``_PIPELINE_DEPTH`` chunks wait. After a write error it keeps draining, so the receiver
    never blocks."""

    def __init__(self, path: Path, digest: Digester, name: str):
        self.path, self.digest = path, digest
        self.q: queue.Queue[bytes | None] = queue.Queue(maxsize=_PIPELINE_DEPTH)
        self.written = 0
        self.error: BaseException | None = None
        self._ended = False
        self.thread = threading.Thread(target=self._run, name=f"write {name}", daemon=True)
        self.thread.start()

    def put(self, chunk: bytes) -> None:
        self.q.put(chunk)

    def close(self) -> None:
        self.q.put(None)
        self.thread.join()

    def _run(self) -> None:
        try:
            with open(self.path, "ab", buffering=0) as f, self.digest.in_two_threads():
                self._write_until_end(f)
        except BaseException as e:  # noqa: BLE001 - reported by the receiver
            self.error = self.error or e
            while not self._ended:
                self._ended = self.q.get() is None

    def _write_until_end(self, f) -> None:
        end = os.fstat(f.fileno()).st_size  # appending from here
        writeback = Writeback(f.fileno(), end)
        while (chunk := self.q.get()) is not None:
            if self.error:
                continue  # drain, so the receiver never blocks on a full queue
            try:
                view = memoryview(chunk)
                while view:
                    view = view[f.write(view) :]
                self.digest.update(chunk)
                self.written += len(chunk)
                end += len(chunk)
                writeback.wrote_up_to(end)
            except BaseException as e:  # noqa: BLE001 - reported by the receiver
                self.error = e
        self._ended = True
