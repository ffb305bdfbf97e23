"""Client side of the Allen Brain Map RMA query API, and how every metadata request is made.

The query strings are the ones AllenSDK 2.16.2 renders for ``EcephysProjectCache`` (it calls the
warehouse API with no arguments), so the real service sees exactly what it sees from AllenSDK.
Paging follows ``RmaEngine.get_rma`` (``rma::options[start_row$eq..][num_rows$eq..][order$eq'id']``
appended to the query), but unlike AllenSDK (allen-warehouse.md §1.3):

* every request (an RMA page here, a table CSV in :mod:`sources`) goes through
  :func:`get_with_retries`: a read timeout per socket read, an overall deadline per request (a
  server trickling a byte every few seconds is cut there), resets, timeouts, 408/429/5xx and
  garbled answers retried with full-jitter backoff or the server's ``Retry-After`` (capped), a
  bounded number of attempts, each retry logged, and a final error listing every attempt;
* the HTTP status and the JSON envelope are checked;
* paging stops with an error when a page is empty, repeats rows already received, or when
  ``total_rows`` is absurd or changes between pages (AllenSDK loops forever on the first and asks a
  lying server for pages until ``total_rows``).

:class:`RetryPolicy` holds the knobs; :meth:`RetryPolicy.from_config` builds it from the config's
``download`` section (``read_timeout_s``, ``max_attempts``), the same settings file transfers use.
"""

from __future__ import annotations

import json
import logging
import random
import re
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import TypeVar

import requests
import urllib3

from .retry_after import parse_retry_after

log = logging.getLogger(__name__)
T = TypeVar("T")

RMA_PREFIX = "api/v2/data"
PAGE_SIZE = 5000  # AllenSDK's RmaEngine.page_size

CHANNEL_COLUMNS = (
    "ecephys_channels.id",
    "ecephys_probe_id",
    "local_index",
    "probe_horizontal_position",
    "probe_vertical_position",
    "anterior_posterior_ccf_coordinate",
    "dorsal_ventral_ccf_coordinate",
    "left_right_ccf_coordinate",
    "structures.id as ecephys_structure_id",
    "structures.acronym as ecephys_structure_acronym",
)

# The unfiltered queries EcephysProjectCache sends (allen-warehouse.md §1.4).
TABLE_QUERIES = {
    "sessions": (
        "criteria=model::EcephysSession,rma::include,specimen(donor(age)),"
        "well_known_files(well_known_file_type)"
    ),
    "probes": "criteria=model::EcephysProbe",
    "channels": (
        "criteria=model::EcephysChannel,rma::include,structure,"
        f"rma::options[tabular$eq'{','.join(CHANNEL_COLUMNS)}']"
    ),
    "units": "criteria=model::EcephysUnit",
}


def session_nwb_query(session_id: int) -> str:
    """The WellKnownFile query AllenSDK sends for a session NWB file."""
    return (
        "criteria=model::WellKnownFile,rma::criteria,well_known_file_type[name$eq'EcephysNwb']"
        f"[attachable_type$eq'EcephysSession'][attachable_id$eq{int(session_id)}]"
    )


def probe_lfp_query(probe_id: int) -> str:
    """The WellKnownFile query AllenSDK sends for a probe's LFP NWB file."""
    return (
        "criteria=model::WellKnownFile,rma::criteria,well_known_file_type[name$eq'EcephysLfpNwb']"
        f"[attachable_type$eq'EcephysProbe'][attachable_id$eq{int(probe_id)}]"
    )


def query_url(base_url: str, query: str) -> str:
    return f"{base_url.rstrip('/')}/{RMA_PREFIX}/query.json?{query}"


def page_url(base_url: str, query: str, start_row: int, num_rows: int = PAGE_SIZE) -> str:
    return (
        query_url(base_url, query)
        + f",rma::options[start_row$eq{start_row}][num_rows$eq{num_rows}][order$eq'id']"
    )


class RmaError(RuntimeError):
    """The RMA service refused a query, could not be reached, or answered something that is not
    an RMA response."""


class TransientAnswer(Exception):
    """An answer worth asking again for (a garbled body); the text says what was wrong."""


TRANSIENT_STATUSES = frozenset({408, 425, 429, 500, 502, 503, 504})
MAX_TOTAL_ROWS = 10_000_000  # the largest table (units) has ~100,000 rows (allen-warehouse.md §2)
CHUNK = 1 << 16


@dataclass(frozen=True)
class RetryPolicy:
    """How one metadata request is made and retried. The defaults are the config schema's
    (``download.max_attempts``, ``download.read_timeout_s``); use :meth:`from_config`."""

    attempts: int = 8
    read_timeout: float = 60.0  # seconds one socket read may wait
    deadline: float = 300.0  # seconds one attempt may take in total, body included
    connect_timeout: float = 10.0
    backoff_base: float = 1.0
    backoff_max: float = 30.0
    retry_after_max: float = 120.0  # a server's Retry-After is obeyed up to this

    @classmethod
    def from_config(cls, config: Mapping) -> RetryPolicy:
        """From the (validated, defaults filled) config's ``download`` section. The deadline is
        300 s, or five read timeouts when that is longer."""
        section = config["download"]
        read_timeout = float(section["read_timeout_s"])
        return cls(
            attempts=int(section["max_attempts"]),
            read_timeout=read_timeout,
            deadline=max(cls.deadline, 5 * read_timeout),
        )

    def delay(self, attempt: int, retry_after: float | None = None) -> float:
        """Seconds to wait after failed attempt ``attempt`` (0-based): the server's Retry-After
        (capped), else full jitter over an exponential ceiling."""
        if retry_after is not None:
            return min(retry_after, self.retry_after_max)
        return random.uniform(0, min(self.backoff_max, self.backoff_base * 2**attempt))


@dataclass(frozen=True)
class Reply:
    """A complete HTTP answer: status, headers and the whole body."""

    url: str
    status: int
    headers: Mapping[str, str]
    content: bytes

    @property
    def text(self) -> str:
        return self.content.decode("utf-8", "replace")

    def json(self):
        return json.loads(self.content)


class _Failed(Exception):
    """One attempt failed in a way worth retrying; ``retry_after`` is the server's wish."""

    def __init__(self, reason: str, retry_after: float | None = None):
        super().__init__(reason)
        self.retry_after = retry_after


# A URL no request can be made to: asking again will not help.
_NOT_A_URL = (requests.exceptions.InvalidURL, requests.exceptions.MissingSchema,
              requests.exceptions.InvalidSchema)  # fmt: skip


def _fetch(session: requests.Session, url: str, policy: RetryPolicy) -> Reply:
    """One GET, the body read as it arrives: each socket read waits at most the read timeout
    and never past the deadline (requests' own timeout is per read, so a trickle never ends)."""
    deadline = time.monotonic() + policy.deadline
    timeout = (policy.connect_timeout, min(policy.read_timeout, policy.deadline))
    body = bytearray()
    try:
        with session.get(url, timeout=timeout, stream=True) as response:
            sock = getattr(getattr(response.raw, "connection", None), "sock", None)
            while True:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                if sock is not None:
                    sock.settimeout(min(policy.read_timeout, remaining))
                data = response.raw.read1(CHUNK, decode_content=True)
                if not data:
                    return Reply(url, response.status_code, response.headers, bytes(body))
                body += data
    except _NOT_A_URL:
        raise
    except (requests.RequestException, urllib3.exceptions.HTTPError, OSError) as exc:
        if time.monotonic() < deadline or not _is_timeout(exc):
            raise _Failed(_describe(exc, policy)) from exc
    raise _Failed(
        f"no complete answer within the deadline of {policy.deadline:g} s "
        f"({len(body):,} bytes received)"
    )


def _is_timeout(exc: BaseException) -> bool:
    return isinstance(
        exc, requests.Timeout | urllib3.exceptions.TimeoutError | TimeoutError
    ) or "timed out" in str(exc)


def _describe(exc: BaseException, policy: RetryPolicy) -> str:
    """A short reason for a failed attempt (requests' messages repeat the whole URL)."""
    if isinstance(exc, requests.ConnectTimeout):
        return f"no connection within {policy.connect_timeout:g} s"
    if _is_timeout(exc):
        return f"no data within the read timeout of {policy.read_timeout:g} s"
    text = str(exc)
    for pattern, reason in (
        (r"Connection refused", "connection refused"),
        (r"Name or service not known|nodename nor servname|getaddrinfo failed", "unknown host"),
        (r"Connection reset by peer|ConnectionResetError", "connection reset"),
        (r"IncompleteRead\([^)]*\)", None),
        (r"Connection aborted|RemoteDisconnected", "connection closed by the server"),
    ):
        match = re.search(pattern, text)
        if match:
            return reason or f"body cut short: {match.group(0)}"
    return f"{type(exc).__name__}: {text[:200]}"


def get_with_retries(
    url: str,
    accept: Callable[[Reply], T],
    *,
    policy: RetryPolicy,
    session: requests.Session | None = None,
    error: type[Exception] = RmaError,
    what: str = "request",
) -> T:
    """GET ``url`` until ``accept(reply)`` returns a value; the one way metadata is requested.

    Resets, timeouts, the deadline and the statuses in :data:`TRANSIENT_STATUSES` are retried;
    ``accept`` sees every other answer and raises :class:`TransientAnswer` to have it retried, any
    other exception to stop. After ``policy.attempts`` the ``error`` raised names ``what``, the
    URL and what went wrong on each attempt.
    """
    own = session is None
    session = session or requests.Session()
    failures: list[str] = []
    try:
        for attempt in range(policy.attempts):
            try:
                reply = _fetch(session, url, policy)
                if reply.status in TRANSIENT_STATUSES:
                    header = reply.headers.get("Retry-After")
                    raise _Failed(
                        f"HTTP {reply.status}" + (f" (Retry-After {header})" if header else ""),
                        parse_retry_after(header),
                    )
                return accept(reply)
            except _NOT_A_URL as exc:
                raise error(
                    f"{what} {url}: not a URL ({type(exc).__name__}); check source.url"
                ) from None
            except (_Failed, TransientAnswer) as exc:
                failures.append(f"attempt {attempt + 1}: {exc}")
                retry_after = getattr(exc, "retry_after", None)
            if attempt + 1 < policy.attempts:
                pause = policy.delay(attempt, retry_after)
                log.warning(
                    "%s %s: attempt %d of %d failed (%s); retrying in %.1f s",
                    what,
                    url,
                    attempt + 1,
                    policy.attempts,
                    failures[-1].partition(": ")[2],
                    pause,
                )
                time.sleep(pause)
    finally:
        if own:
            session.close()
    raise error(
        f"{what} {url} failed {policy.attempts} times (read timeout {policy.read_timeout:g} s, "
        f"deadline {policy.deadline:g} s per attempt): " + "; ".join(failures)
    )


def _rma_payload(reply: Reply) -> dict:
    try:
        payload = reply.json()
    except ValueError:
        payload = None
    if isinstance(payload, dict) and payload.get("success") is False:
        # The service understood the request and refused it: retrying will not help.
        raise RmaError(f"RMA query refused by {reply.url}: {payload.get('msg')}")
    if reply.status != 200:
        raise RmaError(f"RMA query {reply.url} answered HTTP {reply.status}: {reply.text[:200]!r}")
    if not isinstance(payload, dict) or "msg" not in payload:
        raise TransientAnswer(f"not an RMA JSON response: {reply.text[:120]!r}")
    return payload


def _total_rows(payload: dict, rows: list, url: str) -> int:
    total = payload.get("total_rows", len(rows))
    if isinstance(total, bool) or not isinstance(total, int) or not 0 <= total <= MAX_TOTAL_ROWS:
        raise RmaError(
            f"RMA query {url} claims total_rows={total!r}, not a row count this dataset can have "
            f"(0..{MAX_TOTAL_ROWS:,}); the service is misbehaving: check source.url"
        )
    return total


def iter_pages(
    base_url: str,
    query: str,
    *,
    session: requests.Session | None = None,
    page_size: int = PAGE_SIZE,
    policy: RetryPolicy | None = None,
) -> Iterator[list[dict]]:
    """Yield the rows of an RMA query page by page, as AllenSDK's ``RmaEngine.get_rma`` does,
    but refuse a page that makes no progress, repeats rows or changes ``total_rows``."""
    policy = policy or RetryPolicy()
    own = session is None
    session = session or requests.Session()
    start_row, total_rows, seen = 0, None, set()
    try:
        while total_rows is None or start_row < total_rows:
            url = page_url(base_url, query, start_row, page_size)
            payload = get_with_retries(
                url, _rma_payload, policy=policy, session=session, what="RMA query"
            )
            rows = payload["msg"]
            if not isinstance(rows, list):
                raise RmaError(f"RMA query {url} returned msg={rows!r}, expected a list of rows")
            total = _total_rows(payload, rows, url)
            if total_rows is not None and total != total_rows:
                raise RmaError(
                    f"RMA query {url}: total_rows changed from {total_rows} to {total} between "
                    "pages; the table changed while it was read or the service is misbehaving: "
                    "try again later"
                )
            total_rows = total
            if not rows and start_row < total_rows:
                raise RmaError(
                    f"RMA query {url} returned no rows at start_row={start_row} although "
                    f"total_rows={total_rows}; the service is misbehaving (AllenSDK would loop "
                    "forever)"
                )
            ids = [repr(row.get("id")) for row in rows if isinstance(row, dict) and "id" in row]
            again = seen.intersection(ids)
            if again:
                raise RmaError(
                    f"RMA query {url}: the page at start_row={start_row} repeats rows already "
                    f"received (id {min(again)}, {len(again)} in all); the service ignores "
                    "start_row or is misbehaving (AllenSDK would loop or duplicate rows)"
                )
            seen.update(ids)
            start_row += len(rows)
            log.log(
                logging.INFO if total_rows > page_size else logging.DEBUG,
                "fetched %d of %d rows",
                start_row,
                total_rows,
            )
            yield rows
    finally:
        if own:
            session.close()


def fetch_rows(base_url: str, query: str, **kwargs) -> list[dict]:
    rows: list[dict] = []
    for page in iter_pages(base_url, query, **kwargs):
        rows.extend(page)
    return rows
