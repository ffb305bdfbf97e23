"""Where bytes come from: the Allen warehouse (RMA), the public S3 bucket over HTTPS, a local
AllenSDK cache directory (a workshop drive, the bucket mounted on a cloud machine), or, for the NWB
files only, the DANDI Archive (docs/dandi.md).

The first three give the same files under the same relative paths (AllenSDK's cache layout):
``sessions.csv`` ... ``units.csv``, ``session_<sid>/session_<sid>.nwb`` and
``session_<sid>/probe_<pid>_lfp.nwb``. DANDI serves the NWB files as assets of dandisets 000021 and
000022, found through its listing (``dandi.Listing``). Which of them a file is fetched from, in
which order, is ``mirrors.py``'s decision; this module fetches from one.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

import pandas as pd

from . import dandi, download, layout, lockfile, metadata, nwb, rma

S3_PREFIX = "visual-coding-neuropixels/ecephys-cache"
KINDS = ("warehouse", "s3", "local")  # sources of the metadata tables and the NWB files
MIRROR_KINDS = (*KINDS, "dandi")  # the NWB files only: DANDI has no metadata tables


class SourceError(RuntimeError):
    """The source does not have what was asked for, or is not configured right."""


# What a rule script reports in one line (the message names the problem and the fix) instead of
# a traceback: every failure the package foresees on the way to a verified file.
EXPECTED_ERRORS = (
    SourceError,
    rma.RmaError,
    dandi.DandiError,
    metadata.MetadataError,
    download.DownloadError,
    lockfile.LockError,
)


@dataclass(frozen=True)
class Source:
    kind: str
    url: str

    @classmethod
    def from_config(cls, config: dict) -> Source:
        """The config's ``source``: where the metadata tables come from."""
        return cls.from_entry(config["source"], what="source")

    @classmethod
    def from_entry(cls, entry: dict, *, what: str, kinds: tuple[str, ...] = KINDS) -> Source:
        """A source from its config entry ({kind, url, url_file}). With ``url_file`` the base URL
        is read from that file when the job starts: for a service whose port is chosen at run
        time (the offline demo's stand-in writes it there), so the address never enters a
        rule's params."""
        kind, url = entry.get("kind", "warehouse"), entry.get("url", "")
        if kind not in kinds:
            raise SourceError(f"{what}.kind {kind!r} is not one of {', '.join(kinds)}")
        if entry.get("url_file"):
            url_path = Path(entry["url_file"])
            if not url_path.is_file() or not url_path.read_text().strip():
                raise SourceError(
                    f"{what}.url_file {url_path} is missing or empty: the service that writes "
                    "its address there is not running (the demo's is started by the workflow's "
                    "onstart handler: run the whole workflow, not a single job with "
                    "--allowed-rules)"
                )
            url = url_path.read_text().strip()
        if not url:
            raise SourceError(f"{what} ({kind}) has no url: set its url (or url_file)")
        return cls(kind=kind, url=url.rstrip("/"))


def s3_url(base_url: str, key: str) -> str:
    return f"{base_url}/{S3_PREFIX}/{quote(key)}"


def fetch_table(source: Source, table: str, *, policy: rma.RetryPolicy | None = None):
    """One of the four metadata tables as AllenSDK's cache holds it, checked
    (:func:`metadata.check_table`). Requests are retried per ``policy``
    (:meth:`rma.RetryPolicy.from_config` gives the config's)."""
    if table not in layout.TABLES:
        raise SourceError(f"unknown table {table!r}; expected one of {', '.join(layout.TABLES)}")
    policy = policy or rma.RetryPolicy()
    if source.kind == "warehouse":
        return metadata.fetch_table(table, source.url, policy=policy)
    if source.kind == "local":
        path = Path(source.url) / layout.table_path(table)
        if not path.exists():
            raise SourceError(f"{path} does not exist: source.url must be an AllenSDK cache dir")
        fix = f"source.url ({source.url}) must be an AllenSDK cache directory of this dataset"
        return metadata.read_table(path, fix=fix)
    url = s3_url(source.url, layout.table_path(table))

    def csv_table(reply: rma.Reply) -> pd.DataFrame:
        if reply.status != 200:
            hint = " (no such file in the bucket: check source.url)" if reply.status == 404 else ""
            raise SourceError(f"could not fetch {url}: HTTP {reply.status}{hint}")
        where = f"the source's {table} table ({url})"
        return metadata.parse_table_csv(reply.content, table, where=where, fix=metadata.SOURCE_FIX)

    return rma.get_with_retries(url, csv_table, policy=policy, error=SourceError, what="fetching")


def nwb_url(
    source: Source,
    session_id: int,
    probe_id: int | None = None,
    *,
    policy: rma.RetryPolicy | None = None,
    asset: dandi.Asset | None = None,
) -> str:
    """Where a session NWB (``probe_id=None``) or a probe's LFP NWB is fetched from (``asset``:
    the file as DANDI lists it, for the ``dandi`` kind)."""
    key = layout.nwb_path(session_id, probe_id)
    if source.kind == "dandi":
        if asset is None:
            raise SourceError(f"{key} is not in the pinned DANDI versions' listing")
        return asset.download_url(dandi.api_url(source.url))
    if source.kind == "s3":
        return s3_url(source.url, key)
    if source.kind == "local":
        return (Path(source.url) / key).resolve().as_uri()
    if probe_id is None:
        query, what = rma.session_nwb_query(session_id), f"session {session_id}"
    else:
        query, what = rma.probe_lfp_query(probe_id), f"probe {probe_id}"
    rows = rma.fetch_rows(source.url, query, policy=policy)
    if len(rows) != 1:
        hint = "; this probe has no LFP file (has_lfp_data is false)" if probe_id else ""
        raise SourceError(
            f"expected exactly one NWB file for {what} in the warehouse, found {len(rows)}"
            + (hint if not rows else "")
        )
    # AllenSDK requests f"{scheme}://{host}/{download_link}" and download_link starts with "/",
    # so the real service sees a double slash; we send exactly the same request.
    return f"{source.url}/{rows[0]['download_link']}"


def _copy_local(src: Path, dest: Path, *, expected: dict | None, verify_hdf5: bool, check=None):
    """Copy a file from a local AllenSDK cache with the guarantees of a download: through its
    ``.part``, hashed in the same pass, verified like a download, then placed with its record."""
    if not src.exists():
        raise SourceError(f"{src} does not exist in the local source")
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = download.PartState(dest)
    digest = part.copy_from(src)
    problems = download.verify(
        part.part, digest, expected or {}, verify_hdf5=verify_hdf5, subject=str(src), check=check
    )
    if problems:
        aside = part.set_aside("mismatch")
        raise download.ChecksumMismatchError(
            f"{src} was not copied to {dest}: {'; '.join(problems)}; the copy is at {aside}",
            aside=aside,
        )
    record = download.DownloadRecord(
        path=os.path.abspath(dest),
        size=digest.size,
        sha256=digest.sha256,
        url=src.resolve().as_uri(),
        dandi_etag=digest.dandi_etag,
    )
    return part.place(record)


def fetch_one(
    source: Source,
    dest: str | Path,
    session_id: int,
    probe_id: int | None = None,
    *,
    expected: dict | None = None,
    options: download.Options | None = None,
    policy: rma.RetryPolicy | None = None,
    asset: dandi.Asset | None = None,
) -> download.DownloadRecord:
    """Put one NWB file at ``dest`` from ``source``, verified and recorded; adopt it if it is
    already there. ``expected``: what the bytes must be (a lock entry, or the digests DANDI
    publishes); a file that is not is set aside (ChecksumMismatchError). Besides, the content
    is checked: the file of this session (or probe), every dataset decoding (a same-size file of
    another probe, or a corrupt compressed chunk, is refused like wrong bytes)."""
    dest = Path(dest)
    options = options or download.Options()

    def check(path: Path) -> str | None:
        return nwb.file_problem(path, session_id, probe_id)

    hdf5 = options.verify_hdf5
    if source.kind == "local":
        src = Path(source.url) / layout.nwb_path(session_id, probe_id)
        if dest.exists():
            return download.adopt_existing(dest, expected, verify_hdf5=hdf5, check=check)
        return _copy_local(src, dest, expected=expected, verify_hdf5=hdf5, check=check)
    url = nwb_url(source, session_id, probe_id, policy=policy, asset=asset)
    return download.download_file(url, dest, expected=expected, options=options, check=check)
