"""Partitions of sessions no longer selected: moved aside, never read by accident, never deleted.

Every dataset under ``results/parquet`` is hive-partitioned by ``session_id``, and readers take
every partition under a dataset root: a session dropped from the selection would be read with
the current ones. The LFP stores (``results/lfp/session_id=<sid>/probe_id=<pid>.zarr``) are
found the same way, by a glob over the partitions. :func:`retire` moves such partitions, the
session's report figures, and the LFP stores of probes no longer selected for LFP out of the
roots to ``results/stale/<the same relative path>``, where no dataset root or glob reaches
(pandas, Polars and DuckDB read a root recursively). The cache (the NWB files) is not touched;
a session selected again is extracted again from its cached file.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterable
from pathlib import Path


def _session_id(name: str, prefix: str) -> int | None:
    if not name.startswith(prefix):
        return None
    try:
        return int(name[len(prefix) :])
    except ValueError:
        return None


def stale_dirs(
    results: Path, selected: Iterable[int], lfp_probes: Iterable[tuple[int, int]] | None = None
) -> list[Path]:
    """Directories under ``results`` that belong to sessions not in ``selected``:
    ``parquet/<dataset>/session_id=<sid>``, ``report/session_<sid>``, and the LFP stores
    ``lfp/session_id=<sid>/probe_id=<pid>.zarr`` (one by one, so that stores retired at
    different times sit side by side); with ``lfp_probes`` (the selected ``(session, probe)``
    pairs with LFP), also the stores of selected sessions whose probe is not among them."""
    keep = {int(s) for s in selected}
    found = []
    wanted = None if lfp_probes is None else {(int(s), int(p)) for s, p in lfp_probes}
    for store in sorted((results / "lfp").glob("session_id=*/probe_id=*.zarr")):
        sid = _session_id(store.parent.name, "session_id=")
        pid = _session_id(store.name.removesuffix(".zarr"), "probe_id=")
        if sid is None or pid is None or not store.is_dir():
            continue
        if sid not in keep or (wanted is not None and (sid, pid) not in wanted):
            found.append(store)
    parquet = results / "parquet"
    for dataset in sorted(parquet.iterdir()) if parquet.is_dir() else []:
        if dataset.is_dir():
            for part in sorted(dataset.iterdir()):
                sid = _session_id(part.name, "session_id=")
                if sid is not None and sid not in keep and part.is_dir():
                    found.append(part)
    report = results / "report"
    for figures in sorted(report.iterdir()) if report.is_dir() else []:
        sid = _session_id(figures.name, "session_")
        if sid is not None and sid not in keep and figures.is_dir():
            found.append(figures)
    return found


def retire(
    results: str | Path,
    selected: Iterable[int],
    lfp_probes: Iterable[tuple[int, int]] | None = None,
) -> list[tuple[Path, Path]]:
    """Move every stale directory (:func:`stale_dirs`) to ``<results>/stale/<its path under
    results>``; (from, to) pairs. A directory retired before under the same name is replaced
    (both are outputs made from the same cached file, which stays)."""
    results = Path(results)
    moved = []
    for src in stale_dirs(results, selected, lfp_probes):
        dest = results / "stale" / src.relative_to(results)
        if dest.exists():
            shutil.rmtree(dest)
        dest.parent.mkdir(parents=True, exist_ok=True)
        os.replace(src, dest)
        moved.append((src, dest))
        if src.name.endswith(".zarr") and not any(src.parent.iterdir()):
            src.parent.rmdir()  # an LFP session partition left empty
    return moved


def retire_unselected(results: str | Path, selection_json: str | Path) -> list[tuple[Path, Path]]:
    """:func:`retire` what ``selection.json`` does not select (nothing if it is missing)."""
    selection_json = Path(selection_json)
    if not selection_json.exists():
        return []
    sessions = json.loads(selection_json.read_text())["sessions"]
    lfp_probes = [
        (s["session_id"], p["probe_id"]) for s in sessions for p in s["probes"] if p["download_lfp"]
    ]
    return retire(results, [s["session_id"] for s in sessions], lfp_probes)


def describe(moved: list[tuple[Path, Path]], results: str | Path = "results") -> str:
    """One paragraph for the terminal: which sessions' outputs (and how many LFP stores) moved
    where."""
    if not moved:
        return ""
    results = Path(results)
    sessions, stores = set(), 0
    for src, _dest in moved:
        if src.name.endswith(".zarr"):
            stores += 1
        else:
            sessions.add(int(src.name.split("=")[-1].split("_")[-1]))
    said = []
    if sessions:
        said.append(f"sessions no longer selected ({', '.join(map(str, sorted(sessions)))})")
    if stores:
        said.append(f"{stores} LFP stores of sessions or probes no longer selected for LFP")
    return (
        f"{'; '.join(said)}: {len(moved)} output directories moved from {results}/parquet, "
        f"{results}/report and {results}/lfp to {results}/stale/ (nothing deleted; readers of "
        f"{results}/parquet and {results}/lfp see only the current selection)"
    )
