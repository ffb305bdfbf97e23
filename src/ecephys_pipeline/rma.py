"""Client side of the Allen Brain Map RMA query API.

The query strings are the ones AllenSDK 2.16.2 renders for ``EcephysProjectCache`` (it calls the
warehouse API with no arguments), so the real service sees exactly what it sees from AllenSDK.
Paging follows ``RmaEngine.get_rma`` (``rma::options[start_row$eq..][num_rows$eq..][order$eq'id']``
appended to the query), but unlike AllenSDK every request has a timeout, the HTTP status and the
JSON envelope are checked, a page that makes no progress is an error instead of an endless loop,
and transient failures are retried with backoff.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Iterator
from dataclasses import dataclass

import requests

log = logging.getLogger(__name__)

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


class RmaError(RuntimeError):
    """The RMA service refused a query or answered something that is not an RMA response."""


@dataclass(frozen=True)
class RetryPolicy:
    attempts: int = 5
    backoff_base: float = 1.0
    backoff_max: float = 30.0
    connect_timeout: float = 10.0
    read_timeout: float = 120.0

    def sleep(self, attempt: int) -> None:
        time.sleep(random.uniform(0, min(self.backoff_max, self.backoff_base * 2**attempt)))


def query_url(base_url: str, query: str) -> str:
    return f"{base_url.rstrip('/')}/{RMA_PREFIX}/query.json?{query}"


def page_url(base_url: str, query: str, start_row: int, num_rows: int = PAGE_SIZE) -> str:
    return (
        query_url(base_url, query)
        + f",rma::options[start_row$eq{start_row}][num_rows$eq{num_rows}][order$eq'id']"
    )


def _get_json(session: requests.Session, url: str, policy: RetryPolicy) -> dict:
    failures: list[str] = []
    for attempt in range(policy.attempts):
        try:
            response = session.get(url, timeout=(policy.connect_timeout, policy.read_timeout))
        except requests.RequestException as exc:
            failures.append(f"attempt {attempt + 1}: {type(exc).__name__}: {exc}")
        else:
            try:
                payload = response.json()
            except ValueError:
                payload = None
            if isinstance(payload, dict) and payload.get("success") is False:
                # The service understood the request and refused it: retrying will not help.
                raise RmaError(f"RMA query refused by {url}: {payload.get('msg')}")
            if response.status_code in (408, 429) or response.status_code >= 500:
                failures.append(f"attempt {attempt + 1}: HTTP {response.status_code}")
            elif response.status_code != 200:
                raise RmaError(
                    f"RMA query {url} answered HTTP {response.status_code}: {response.text[:200]!r}"
                )
            elif not isinstance(payload, dict) or "msg" not in payload:
                failures.append(
                    f"attempt {attempt + 1}: not an RMA JSON response: {response.text[:120]!r}"
                )
            else:
                return payload
        if attempt + 1 < policy.attempts:
            policy.sleep(attempt)
    raise RmaError(f"RMA query {url} failed {policy.attempts} times: " + "; ".join(failures))


def iter_pages(
    base_url: str,
    query: str,
    *,
    session: requests.Session | None = None,
    page_size: int = PAGE_SIZE,
    policy: RetryPolicy | None = None,
) -> Iterator[list[dict]]:
    """Yield the rows of an RMA query page by page, as AllenSDK's ``RmaEngine.get_rma`` does."""
    policy = policy or RetryPolicy()
    session = session or requests.Session()
    start_row, total_rows = 0, None
    while total_rows is None or start_row < total_rows:
        url = page_url(base_url, query, start_row, page_size)
        payload = _get_json(session, url, policy)
        rows = payload["msg"]
        if not isinstance(rows, list):
            raise RmaError(f"RMA query {url} returned msg={rows!r}, expected a list of rows")
        if total_rows is None:
            total_rows = int(payload.get("total_rows", len(rows)))
        if not rows and start_row < total_rows:
            raise RmaError(
                f"RMA query {url} returned no rows at start_row={start_row} although "
                f"total_rows={total_rows}; the service is misbehaving (AllenSDK would loop forever)"
            )
        start_row += len(rows)
        log.log(
            logging.INFO if total_rows > page_size else logging.DEBUG,
            "fetched %d of %d rows",
            start_row,
            total_rows,
        )
        yield rows


def fetch_rows(base_url: str, query: str, **kwargs) -> list[dict]:
    rows: list[dict] = []
    for page in iter_pages(base_url, query, **kwargs):
        rows.extend(page)
    return rows
