"""HTTP as the engine speaks it: sessions, header parsing, remote size/validators, the meaning
of a status code for the next attempt, reading a body as it arrives, and the rate floor."""

from __future__ import annotations

import re
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import requests
import urllib3

from .. import __version__
from ..retry_after import parse_retry_after
from .digests import CHUNK
from .errors import DownloadError
from .retry import AttemptFailed

NETWORK_ERRORS = (requests.RequestException, urllib3.exceptions.HTTPError)
RETRY_STATUSES = frozenset({408, 429, 500, 502, 503, 504})
IDENTITY = {"Accept-Encoding": "identity"}  # bytes as stored: the digests are of the file
USER_AGENT = f"ecephys-pipeline/{__version__} (+requests {requests.__version__})"
# A connection that trickles (bytes keep arriving, so the read timeout never fires) is dropped and
# resumed when it delivers less than _LOW_RATE_BPS over _LOW_RATE_WINDOW seconds. The warehouse's
# worst reported rate is ~500 kB/s (AllenSDK #1505), far above this floor.
_LOW_RATE_BPS = 1024
_LOW_RATE_WINDOW = 120.0

_CONTENT_RANGE = re.compile(r"^\s*bytes\s+(\d+)-(\d+)/(\d+|\*)\s*$", re.I)
_CONTENT_RANGE_UNSAT = re.compile(r"^\s*bytes\s+\*/(\d+)\s*$", re.I)


@dataclass
class RemoteInfo:
    size: int | None
    etag: str | None
    last_modified: str | None
    accepts_ranges: bool | None


def new_session(pool: int = 10) -> requests.Session:
    s = requests.Session()
    s.headers["User-Agent"] = USER_AGENT
    adapter = requests.adapters.HTTPAdapter(pool_connections=4, pool_maxsize=max(10, pool))
    s.mount("http://", adapter)
    s.mount("https://", adapter)
    return s


def parse_content_range(value: str | None) -> tuple[int, int, int | None] | None:
    """(first, last, total or None) of a ``Content-Range: bytes a-b/n``; None if not one."""
    m = _CONTENT_RANGE.match(value or "")
    if not m:
        return None
    total = None if m.group(3) == "*" else int(m.group(3))
    return int(m.group(1)), int(m.group(2)), total


def unsatisfied_size(resp: requests.Response) -> int | None:
    """The total size a 416's ``Content-Range: bytes */n`` states, else None."""
    m = _CONTENT_RANGE_UNSAT.match(resp.headers.get("Content-Range", ""))
    return int(m.group(1)) if m else None


def int_header(resp: requests.Response, name: str) -> int | None:
    v = resp.headers.get(name)
    try:
        return int(v) if v is not None else None
    except ValueError:
        return None


def validator(meta: Mapping[str, Any]) -> str | None:
    """The If-Range value: a strong ETag, else Last-Modified (weak ETags never match If-Range)."""
    etag = meta.get("etag")
    if etag and not etag.startswith("W/"):
        return etag
    return meta.get("last_modified")


def range_headers(meta: Mapping[str, Any] | None, start: int, end: int | None = None) -> dict:
    """``Range`` from ``start`` (to ``end`` exclusive) of the file ``meta`` (a .part's sidecar)
    describes, guarded by ``If-Range`` with its validator."""
    headers = {**IDENTITY, "Range": f"bytes={start}-{'' if end is None else end - 1}"}
    v = validator(meta or {})
    if v:
        headers["If-Range"] = v
    return headers


def validators(resp: requests.Response) -> dict[str, str | None]:
    return {"etag": resp.headers.get("ETag"), "last_modified": resp.headers.get("Last-Modified")}


def info_from_probe(r: requests.Response) -> RemoteInfo | None:
    """What the answer to ``GET Range: bytes=0-0`` says about the file (None: an error)."""
    v = validators(r)
    if r.status_code == 206:
        cr = parse_content_range(r.headers.get("Content-Range"))
        return RemoteInfo(cr[2] if cr else None, v["etag"], v["last_modified"], cr is not None)
    if r.status_code == 200:
        return RemoteInfo(int_header(r, "Content-Length"), v["etag"], v["last_modified"], False)
    return None


def probe(session: requests.Session, url: str, timeout: Any) -> requests.Response:
    """``GET Range: bytes=0-0`` (streamed: a server ignoring the range sends no body we read)."""
    return session.get(
        url, headers={**IDENTITY, "Range": "bytes=0-0"}, timeout=timeout, stream=True
    )


def remote_info(
    url: str, session: requests.Session | None = None, *, timeout: float | tuple = (10, 30)
) -> RemoteInfo:
    """Size and validators of ``url``: HEAD, falling back to ``GET Range: bytes=0-0``."""
    own = session is None
    session = session or new_session()
    try:
        try:
            r = session.head(url, headers=IDENTITY, timeout=timeout, allow_redirects=True)
            if r.status_code == 200 and int_header(r, "Content-Length") is not None:
                v = validators(r)
                ranges = "bytes" in r.headers.get("Accept-Ranges", "").lower() or None
                return RemoteInfo(
                    int_header(r, "Content-Length"), v["etag"], v["last_modified"], ranges
                )
        except requests.RequestException:
            pass  # try the GET below, and let it raise if the server is really unreachable
        with probe(session, url, timeout) as r:
            info = info_from_probe(r)
            if info is None:
                raise DownloadError(
                    f"cannot get the size of {url}: HTTP {r.status_code} {r.reason}",
                    failure=status_failure(r),  # what it means for another try
                )
            return info
    finally:
        if own:
            session.close()


def remote_size(url: str, session: requests.Session | None = None, **kw: Any) -> int | None:
    """Size in bytes of ``url`` (HEAD, else a one-byte Range GET); None if the server won't say."""
    return remote_info(url, session, **kw).size


def status_failure(resp: requests.Response) -> AttemptFailed:
    """What an unexpected status means: retried (408, 429, 5xx; with their Retry-After), or
    fatal with a hint from the body."""
    code = resp.status_code
    ra = parse_retry_after(resp.headers.get("Retry-After")) if code in (429, 503) else None
    desc = f"HTTP {code} {resp.reason or ''}".rstrip()
    if ra is not None:
        desc += f" (Retry-After {resp.headers.get('Retry-After')})"
    if code in RETRY_STATUSES:
        return AttemptFailed(desc, retry_after=ra)
    try:
        body = next(resp.iter_content(400), b"").decode("utf-8", "replace")
    except requests.RequestException:
        body = ""
    body = " ".join(re.sub(r"<[^>]*>", " ", body).split())[:160]  # a hint, not the page
    hint = " (the file does not exist at this URL)" if code in (404, 410) else ""
    return AttemptFailed(
        f"{desc}{hint}" + (f": {body[:200]!r}" if body else "") + "; not retried", fatal=True
    )


def iter_body(resp: requests.Response) -> Iterator[bytes]:
    """The body as it arrives: each chunk is what one read returned (up to CHUNK).

    Not ``iter_content(CHUNK)``: that fills a whole CHUNK before yielding, so bytes that arrived
    before a reset or a read timeout would be lost with the exception (a server that drops every
    512 KiB would then never make progress). Bytes are taken raw: we ask for identity encoding.
    """
    read1 = resp.raw.read1
    while data := read1(CHUNK, decode_content=False):
        yield data


def short_exc(e: BaseException) -> str:
    s = str(e)
    # urllib3 wraps messages deeply; keep the informative tail
    m = re.search(r"(Read timed out|Connection broken: \w+\([^)]*\)|IncompleteRead\([^)]*\))", s)
    s = m.group(1) if m else s
    return s if len(s) <= 200 else s[:200] + "..."


class RateFloor:
    """Says when a connection has been below _LOW_RATE_BPS for a whole _LOW_RATE_WINDOW."""

    def __init__(self) -> None:
        self.window = _LOW_RATE_WINDOW
        self.t = time.monotonic()
        self.n = 0

    def too_slow(self, n: int) -> str | None:
        now = time.monotonic()
        if now - self.t < self.window:
            return None
        rate = (n - self.n) / (now - self.t)
        self.t, self.n = now, n
        if rate < _LOW_RATE_BPS:
            return f"too slow: {rate:.0f} B/s over {self.window:.0f} s (a trickling connection)"
        return None
