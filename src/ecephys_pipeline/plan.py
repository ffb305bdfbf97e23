"""The plan of a run, before any byte moves: which files, how many bytes, and whether they fit.

For every file of a selection (session NWB, LFP NWB where fetched) it records the size (from the
DANDI listing, else one HEAD each to the mirrors, several at a time, retried) and what is already
on disk (a finished file, or
the bytes of a ``.part`` that will be resumed), then compares the bytes still to fetch with the
free space of the cache directory: the plan owns "does it fit".
"""

from __future__ import annotations

import logging
import os
import shutil
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

import requests

from . import atomic, dandi, download, layout, metadata, mirrors, rma, sources

log = logging.getLogger(__name__)


class InsufficientSpaceError(RuntimeError):
    """Preflight: the plan does not fit on the cache's file system."""


@dataclass
class PlannedFile:
    path: str  # relative to the cache dir
    session_id: int
    probe_id: int | None
    url: str | None  # where the size was asked (None: on disk, or from the DANDI listing)
    size: int | None
    present: int  # bytes already on disk (finished file or resumable .part)


@dataclass
class Plan:
    cache_dir: str
    files: list[PlannedFile]
    free_bytes: int

    @property
    def total_bytes(self) -> int:
        return sum(f.size or 0 for f in self.files)

    @property
    def present_bytes(self) -> int:
        return sum(f.present for f in self.files)

    @property
    def to_fetch_bytes(self) -> int:
        return sum(max((f.size or 0) - f.present, 0) for f in self.files)

    def summary(self, selection: dict) -> str:
        n_probes = sum(len(s["probes"]) for s in selection["sessions"])
        n_lfp = sum(f.probe_id is not None for f in self.files)
        unknown = sum(f.size is None for f in self.files)
        lines = [
            f"sessions: {len(selection['sessions'])}",
            f"probes: {n_probes} ({n_lfp} LFP files to fetch)",
            f"files: {len(self.files)}" + (f" ({unknown} of unknown size)" if unknown else ""),
            f"bytes in total: {_gb(self.total_bytes)}",
            f"bytes already present: {_gb(self.present_bytes)}",
            f"bytes to download: {_gb(self.to_fetch_bytes)}",
            f"free space in {self.cache_dir}: {_gb(self.free_bytes)}",
        ]
        return "\n".join(lines)

    def to_json(self, path: str | Path) -> None:
        doc = {
            "cache_dir": self.cache_dir,
            "total_bytes": self.total_bytes,
            "present_bytes": self.present_bytes,
            "to_fetch_bytes": self.to_fetch_bytes,
            "files": [asdict(f) for f in self.files],
        }
        # free space changes from run to run: it is logged, not written into the artifact
        atomic.write_json(path, doc)


def _gb(n: int) -> str:
    return f"{n / 1e9:,.2f} GB ({n:,} bytes)"


def planned_files(selection: dict) -> list[tuple[int, int | None]]:
    """(session_id, probe_id or None) for every file of the selection."""
    out: list[tuple[int, int | None]] = []
    for session in selection["sessions"]:
        out.append((session["session_id"], None))
        sid = session["session_id"]
        out += [(sid, p["probe_id"]) for p in session["probes"] if p["download_lfp"]]
    return out


def make_plan(
    selection: dict,
    mirror_list: mirrors.Mirrors,
    cache_dir: str | Path,
    *,
    listing: dandi.Listing | None = None,
    options: download.Options | None = None,
    policy: rma.RetryPolicy | None = None,
    workers: int = 8,
) -> Plan:
    """Size every file of ``selection``: a file on disk by its size, one DANDI lists by the
    listing (no request), else by asking the mirrors in order (HEAD, retried like a download:
    a 503 with Retry-After is waited out, not fatal)."""
    cache_dir = Path(cache_dir)
    options = options or download.Options()

    def one(item: tuple[int, int | None]) -> PlannedFile:
        session_id, probe_id = item
        rel = layout.nwb_path(session_id, probe_id)
        dest = cache_dir / rel
        asset = listing.find(session_id, probe_id) if listing is not None else None
        if dest.exists():
            url, size = None, dest.stat().st_size  # adopted or finished: no request needed
        elif asset is not None:
            url, size = None, asset.size
        else:
            url, size = _remote_size(mirror_list, session_id, probe_id, options, policy)
        return PlannedFile(rel, session_id, probe_id, url, size, bytes_present(dest, size))

    with ThreadPoolExecutor(max_workers=workers) as pool:
        try:
            files = list(pool.map(one, planned_files(selection)))
        except sources.SourceError as e:
            raise sources.SourceError(f"{e}. {stale_tables_fix(cache_dir)}") from None
    return Plan(str(cache_dir), files, shutil.disk_usage(existing_ancestor(cache_dir)).free)


def _remote_size(mirror_list, session_id, probe_id, options, policy) -> tuple:
    """(url, size) from the first mirror that answers; the last error if none does."""
    error: Exception | None = None
    for src in mirror_list.sources:
        if src.kind == "dandi":
            continue  # DANDI's sizes come from its listing
        try:
            url = sources.nwb_url(src, session_id, probe_id, policy=policy)
            if src.kind == "local":
                path = Path(src.url) / layout.nwb_path(session_id, probe_id)
                return url, (path.stat().st_size if path.exists() else None)
            return url, download.remote_size_retried(url, options=options)
        except (download.DownloadError, rma.RmaError, sources.SourceError) as e:
            error = e
    if error is not None:
        raise error
    return None, None


def stale_tables_fix(cache_dir: str | Path) -> str:
    """The fix when the source does not know an id of the cached metadata tables."""
    cache = Path(cache_dir)
    names = ", ".join(layout.table_path(t) for t in layout.TABLES)
    return (
        f"If the metadata tables cached in {cache} came from another source or catalogue (another "
        f"source.url, or the demo with another demo.realistic), delete them ({names} in {cache}) "
        "and run again: they are fetched again from this source"
    )


def explain(error: BaseException | str, config: dict) -> str:
    """``error: <message>``, one line, with the fix for the foreseeable cases the message alone
    does not name: ids the catalogue does not know (the default demo's synthetic catalogue, or
    cached tables from another source) and an unreachable source."""
    message = f"error: {error}"
    demo = config.get("demo") or {}
    cache_dir = config.get("cache_dir")
    if "is not in the sessions table" in message:
        if demo.get("enabled") and not demo.get("realistic"):
            message += (
                " (the default demo's catalogue has two synthetic sessions; the specs in "
                "config/examples/ name real ids, types and areas: run them on the realistic "
                "demo, --configfile config/demo_realistic.yaml)"
            )
        elif cache_dir and (Path(cache_dir) / layout.table_path("sessions")).exists():
            message += f". {stale_tables_fix(cache_dir)}"
    elif isinstance(error, rma.RmaError | requests.RequestException):
        where = (config.get("source") or {}).get("url") or "the source"
        message += (
            f". Is {where} reachable from here? Check the network and source.url, then run "
            "again (cached tables and finished files are kept)"
        )
    return message


def check_space(plan: Plan, *, reserve_bytes: int = 1 << 30) -> None:
    """Refuse a plan that does not fit, before any byte is fetched."""
    check_free_space(
        [(Path(plan.cache_dir) / f.path, f.size) for f in plan.files],
        plan.cache_dir,
        reserve_bytes=reserve_bytes,
    )


def existing_ancestor(path: Path) -> Path:
    """``path`` or its nearest existing parent: where its free space is measured."""
    path = Path(os.path.abspath(path))
    for p in (path, *path.parents):
        if p.exists():
            return p
    return path  # pragma: no cover - "/" always exists


def bytes_present(dest: str | os.PathLike, size: int | None) -> int:
    """Bytes of ``dest`` already on disk that a download will keep: the finished file, or what
    its resumable ``.part`` holds (as the download engine counts it), at most ``size``."""
    dest = Path(dest)
    if dest.exists():
        return dest.stat().st_size
    if size is None:
        return 0
    return min(download.resumable_bytes(dest), size)


def check_free_space(
    paths_and_sizes: Iterable[tuple[str | os.PathLike, int | None]],
    cache_dir: str | os.PathLike,
    *,
    reserve_bytes: int = 1 << 30,
) -> int:
    """Refuse (InsufficientSpaceError) before any byte is fetched if the plan does not fit.

    ``paths_and_sizes``: final paths and their remote sizes. Files already at their path count 0;
    bytes already in ``.part`` files are subtracted. ``reserve_bytes`` is kept free on top.
    Returns the bytes still to fetch.
    """
    need = 0
    in_parts = 0
    n = 0
    unknown = []
    for path, size in paths_and_sizes:
        path = Path(path)
        if path.exists():
            continue
        if size is None:
            unknown.append(path)
            continue
        n += 1
        have = bytes_present(path, size)
        in_parts += have
        need += size - have
    where = existing_ancestor(Path(cache_dir))
    free = shutil.disk_usage(where).free
    if unknown:
        log.warning(
            "%d files have an unknown size and are not in the space check, e.g. %s",
            len(unknown),
            unknown[0],
        )
    if need + reserve_bytes > free:
        raise InsufficientSpaceError(
            f"the downloads need {need / 1e9:.1f} GB more ({n} files; "
            f"{in_parts / 1e9:.1f} GB already in .part files) plus a {reserve_bytes / 1e9:.1f} GB "
            f"reserve, but only {free / 1e9:.1f} GB is free in {where}; free space or point "
            f"cache_dir elsewhere (or select fewer sessions / set fetch_lfp: false)"
        )
    log.info("preflight: %.1f GB to fetch, %.1f GB free in %s", need / 1e9, free / 1e9, where)
    return need


def plan_from_config(config: dict) -> tuple[dict, Plan]:
    """Resolve the selection and size every file, as the workflow's checkpoint would.

    Tables already in the cache are used as they are; missing ones are fetched into memory only
    (nothing is written). The source must be reachable for the duration of the call.
    """
    from . import selection

    source = sources.Source.from_config(config)
    policy = rma.RetryPolicy.from_config(config)  # download.read_timeout_s, download.max_attempts
    cache_dir = Path(config["cache_dir"])
    tables = {}
    for table in layout.TABLES:
        path = cache_dir / layout.table_path(table)
        tables[table] = (
            metadata.read_table(path)
            if path.exists()
            else sources.fetch_table(source, table, policy=policy)
        )
    spec = selection.load_spec(config["selection"])
    chosen = selection.resolve(spec, tables).to_dict()
    f = mirrors.Fetching.from_config(config, keep=False)
    return chosen, make_plan(
        chosen, f.mirrors, cache_dir, listing=f.listing, options=f.options, policy=f.policy
    )
