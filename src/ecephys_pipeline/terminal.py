"""What the user sees in the terminal while the workflow runs (the main snakemake process).

- :func:`announce_plan`: the plan (sessions, probes, files, bytes to fetch, free space), once,
  before the first download; read from the checkpoint's ``plan.json`` with the bytes present
  and the free space measured again at that moment.
- :class:`ProgressWatcher`: a background thread that reports each download in flight (bytes,
  rate, ETA) every :data:`PROGRESS_INTERVAL_S` seconds from the sizes of the ``.part`` files, so
  the screen is not silent for the hour a 3 GB file takes; it reads files only, so it works the
  same whether the jobs run here or on cluster nodes sharing the filesystem.
- :func:`run_summary`: after a successful run, what was made, where, and what to do next.

Nothing here changes a file; every function returns or writes text only.
"""

from __future__ import annotations

import json
import shutil
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

import pyarrow.parquet as pq

from . import download
from .plan import Plan, PlannedFile, bytes_present, existing_ancestor

PROGRESS_INTERVAL_S = 30.0
"""Seconds between two progress lines of one download: at most 8 downloads run at once, so at
most 8 lines per 30 s, and a 3 GB file at the warehouse's ~0.5 MB/s shows ~200 lines in all."""


def _gb(n: float) -> str:
    return f"{n / 1e9:,.2f} GB"


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min {seconds % 60:02d} s"
    return f"{seconds // 3600} h {seconds % 3600 // 60:02d} min"


def load_plan(plan_json: str | Path) -> Plan | None:
    """The checkpoint's plan with what is on disk now (finished files and ``.part`` bytes) and
    the cache's free space now; None when the preflight was off."""
    doc = json.loads(Path(plan_json).read_text())
    if "files" not in doc:
        return None
    cache_dir = Path(doc["cache_dir"])
    files = []
    for entry in doc["files"]:
        f = PlannedFile(**entry)
        f.present = bytes_present(cache_dir / f.path, f.size)
        files.append(f)
    return Plan(str(cache_dir), files, shutil.disk_usage(existing_ancestor(cache_dir)).free)


_announced: set[tuple[str, int]] = set()
_STARTED_NS = time.time_ns()  # this process's start (the module is imported when it starts)


def announce_plan(
    selection_json: str | Path, plan_json: str | Path, *, stream: IO[str] | None = None
) -> bool:
    """Print the plan once per version of ``plan.json`` (per process), if the checkpoint made
    it during this process or bytes are still to fetch; True if printed."""
    plan_json = Path(plan_json)
    mtime = plan_json.stat().st_mtime_ns
    key = (str(plan_json.resolve()), mtime)
    if key in _announced:
        return False
    _announced.add(key)
    plan = load_plan(plan_json)
    if mtime < _STARTED_NS and (plan is None or plan.to_fetch_bytes == 0):
        return False  # an earlier run's plan, everything on disk: nothing new to say
    selection = json.loads(Path(selection_json).read_text())
    lines = ["", "plan of this run (results/selection/plan.json):"]
    for session in selection["sessions"]:
        names = ", ".join(
            p["name"] + ("" if p["download_lfp"] else " (no LFP)") for p in session["probes"]
        )
        lines.append(f"  session {session['session_id']} {session['session_type']}: {names}")
    if plan is None:
        lines.append("  (download.preflight is off: sizes and free space were not checked)")
    else:
        lines += ["  " + line for line in plan.summary(selection).splitlines()]
    print("\n".join(lines) + "\n", file=stream or sys.stderr, flush=True)
    return True


# ------------------------------------------------------------------------------ progress


class ProgressWatcher:
    """Every ``interval`` seconds, one line per download in flight: a planned file whose
    ``.part`` exists and grew since the last look."""

    def __init__(
        self,
        plan_json: str | Path,
        *,
        interval: float = PROGRESS_INTERVAL_S,
        stream: IO[str] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.plan_json = Path(plan_json)
        self.interval = interval
        self.stream = stream
        self.clock = clock
        self._seen: dict[str, tuple[float, int, float]] = {}  # path -> (t0, bytes0, t_last)
        self._last: dict[str, int] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def lines(self) -> list[str]:
        """The status lines for this moment (also what the thread prints)."""
        try:
            doc = json.loads(self.plan_json.read_text())
        except (OSError, ValueError):
            return []  # no plan yet (the checkpoint has not run), or being replaced
        cache_dir = Path(doc.get("cache_dir", "."))
        now = self.clock()
        out = []
        for entry in doc.get("files", []):
            dest = cache_dir / entry["path"]
            size = entry.get("size")
            try:
                part_size = download.part_path(dest).stat().st_size
            except OSError:
                continue
            # a parallel .part is preallocated: its sidecar's per-range progress counts
            have = bytes_present(dest, size) or part_size
            rel = entry["path"]
            if rel not in self._seen:
                self._seen[rel] = (now, have, now)
            t0, b0, _ = self._seen[rel]
            if self._last.get(rel) == have:
                continue
            self._last[rel] = have
            rate = (have - b0) / (now - t0) if now > t0 else 0.0
            text = f"download {rel}: {_gb(have)}"
            if size:
                text += f" of {_gb(size)} ({100 * have / size:.0f}%)"
            if rate > 0:
                text += f", {rate / 1e6:.1f} MB/s"
                if size:
                    text += f", ETA {_duration(max(size - have, 0) / rate)}"
            out.append(text)
        return out

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            for line in self.lines():
                print(line, file=self.stream or sys.stderr, flush=True)

    def start(self) -> ProgressWatcher:
        self._thread = threading.Thread(target=self._run, name="download-progress", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)


# ------------------------------------------------------------------------------ summary


def _provenance_lines(lock: dict) -> list[str]:
    """Which mirrors delivered the files, and how many matched DANDI's published digests."""
    entries = list(lock["files"].values())
    mirrors: dict[str, int] = {}
    for e in entries:
        name = e.get("mirror") or "cache"
        mirrors[name] = mirrors.get(name, 0) + 1
    out = []
    if any(e.get("mirror") for e in entries):
        out.append("  from: " + ", ".join(f"{k} {n}" for k, n in sorted(mirrors.items())))
    if lock.get("dandi"):
        held = sum(bool(e.get("published")) for e in entries)
        versions = ", ".join(f"{d}/{v}" for d, v in sorted(lock["dandi"].items()))
        out.append(
            f"  matching DANDI's published sha256 and dandi-etag: {held} of {len(entries)} "
            f"({versions})"
        )
    return out


def _rows(root: Path) -> int:
    return sum(pq.ParquetFile(p).metadata.num_rows for p in sorted(root.rglob("*.parquet")))


def _relative(path: str | Path) -> str:
    try:
        return Path(path).resolve().relative_to(Path.cwd()).as_posix()
    except ValueError:
        return str(path)


def run_summary(
    *,
    selection_json: str | Path = "results/selection/selection.json",
    lock_json: str | Path = "results/ecephys.lock.json",
    parquet_root: str | Path = "results/parquet",
    configfiles: list[str] | None = None,
) -> str:
    """What the run produced and what to do next (empty if the run made no selection)."""
    selection_json, lock_json = Path(selection_json), Path(lock_json)
    if not selection_json.exists() or not lock_json.exists():
        return ""
    selection = json.loads(selection_json.read_text())
    lock: dict[str, Any] = json.loads(lock_json.read_text())
    root = Path(parquet_root)
    ids = [s["session_id"] for s in selection["sessions"]]
    units = sum(_rows(root / "units" / f"session_id={sid}") for sid in ids)
    spikes = sum(_rows(root / "spikes" / f"session_id={sid}") for sid in ids)
    total = sum(int(e["size"]) for e in lock["files"].values())
    config = " ".join(f"--configfile {_relative(c)}" for c in configfiles or [])
    lines = [
        "",
        "done:",
        f"  sessions: {len(ids)} ({', '.join(map(str, ids))})",
        f"  units: {units:,}; spikes: {spikes:,}",
        f"  files downloaded or adopted, each verified (size, sha256): {len(lock['files'])}, "
        f"{_gb(total)} ({total:,} bytes) -> {lock_json}",
        *_provenance_lines(lock),
        f"  Parquet: {root}/{{{','.join(sorted(p.name for p in root.iterdir() if p.is_dir()))}}}"
        if root.is_dir()
        else f"  Parquet: {root}",
        "  figures: results/report/; provenance: results/manifest.json",
        "next:",
        f"  snakemake {config} --report report.html   # the figures and tables in one page"
        if config
        else "  snakemake --report report.html   # the figures and tables in one page",
        f"  python -c \"import pandas as pd; print(pd.read_parquet('{root}/units').head())\"",
        "  README.md, 'Reading the Parquet': pandas, Polars and DuckDB; docs/SCHEMA.md: columns",
        "  to choose other sessions, edit the selection spec (config/README.md, config/examples/)",
        "",
    ]
    return "\n".join(lines)
