"""Partitions of sessions no longer selected: moved aside, never read by accident, never deleted.

Every dataset under ``results/parquet`` is hive-partitioned by ``session_id``, and readers take
every partition under a dataset root: a session dropped from the selection would be read with
the current ones. :func:`retire` moves such partitions (and the session's report figures) out
of the roots to ``results/stale/<the same relative path>``, where no dataset root reaches
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


def stale_dirs(results: Path, selected: Iterable[int]) -> list[Path]:
    """Directories under ``results`` that belong to sessions not in ``selected``:
    ``parquet/<dataset>/session_id=<sid>`` and ``report/session_<sid>``."""
    keep = {int(s) for s in selected}
    found = []
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


def retire(results: str | Path, selected: Iterable[int]) -> list[tuple[Path, Path]]:
    """Move every stale directory to ``<results>/stale/<its path under results>``; (from, to)
    pairs. A directory retired before under the same name is replaced (both are outputs made
    from the same cached file, which stays)."""
    results = Path(results)
    moved = []
    for src in stale_dirs(results, selected):
        dest = results / "stale" / src.relative_to(results)
        if dest.exists():
            shutil.rmtree(dest)
        dest.parent.mkdir(parents=True, exist_ok=True)
        os.replace(src, dest)
        moved.append((src, dest))
    return moved


def retire_unselected(results: str | Path, selection_json: str | Path) -> list[tuple[Path, Path]]:
    """:func:`retire` what ``selection.json`` does not select (nothing if it is missing)."""
    selection_json = Path(selection_json)
    if not selection_json.exists():
        return []
    sessions = json.loads(selection_json.read_text())["sessions"]
    return retire(results, [s["session_id"] for s in sessions])


def describe(moved: list[tuple[Path, Path]], results: str | Path = "results") -> str:
    """One paragraph for the terminal: which sessions' outputs moved where."""
    if not moved:
        return ""
    sessions = sorted({int(src.name.split("=")[-1].split("_")[-1]) for src, _dest in moved})
    return (
        f"sessions no longer selected ({', '.join(map(str, sessions))}): their {len(moved)} "
        f"output directories moved from {results}/parquet and {results}/report to "
        f"{results}/stale/ (nothing deleted; readers of {results}/parquet see only the current "
        "selection)"
    )
