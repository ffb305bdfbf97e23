"""The analysis stage: stimulus-aligned tables from our own Parquet (issue 14, docs/SCHEMA.md).

``analyze_session`` reads one session's ``units``, ``spikes``, ``stimulus_presentations`` and
``running_speed`` partitions (never the NWB) and writes five more hive-partitioned datasets::

    stimulus_conditions/session_id=<sid>/part-0.parquet
    presentation_spike_counts/session_id=<sid>/part-0.parquet
    presentation_spike_times/session_id=<sid>/part-0.parquet
    condition_spike_statistics/session_id=<sid>/part-0.parquet
    presentation_running_speed/session_id=<sid>/part-0.parquet

The quantities are AllenSDK's ``EcephysSession.stimulus_conditions``,
``presentationwise_spike_counts``, ``presentationwise_spike_times`` and
``conditionwise_spike_statistics`` (both ``use_rates``), plus running speed per presentation;
the computations on arrays are in :mod:`ecephys_pipeline.aligned`, this module reads, assigns
condition ids and writes. Intervals are half-open, ``[start, stop)``, everywhere; docs/SCHEMA.md
lists where and why AllenSDK's answers differ. Files are streamed into a temporary directory next
to the output root and renamed into place, so a final path never holds a partial file.
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from . import __version__
from .aligned import (
    CHUNK_SPIKES,
    COUNTS_SCHEMA,
    RUNNING_SCHEMA,
    SPIKE_TIMES_SCHEMA,
    STATISTICS_SCHEMA,
    Spikes,
    Stimulus,
    running_table,
    stimulus_chunks,
)
from .extract import (
    META_PREFIX,
    SPIKE_ROW_GROUP,
    STIMULUS_SCHEMA,
    _write_parquet,
    parquet_writer,
)
from .unit_filters import unit_mask

log = logging.getLogger(__name__)

__all__ = [
    "ANALYSIS_DATASETS",
    "DEFAULT_BINS",
    "AnalysisError",
    "analyze_session",
    "bin_edges",
]

ANALYSIS_DATASETS = (
    "stimulus_conditions",
    "presentation_spike_counts",
    "presentation_spike_times",
    "condition_spike_statistics",
    "presentation_running_speed",
)

# Bins relative to onset, per stimulus name; "default" for every other stimulus. The default of
# calls from Python; the workflow's defaults (per stimulus) are in the config schema.
DEFAULT_BINS: dict[str, dict[str, float]] = {
    "default": {"start": -0.1, "stop": 0.35, "width": 0.01},
}

_I64, _I32, _F64, _STR = pa.int64(), pa.int32(), pa.float64(), pa.string()

# stimulus_presentations columns that do not define a condition (AllenSDK drops these before it
# assigns stimulus_condition_id; stimulus_index it drops on reading)
NON_CONDITION_COLUMNS = (
    "stimulus_presentation_id",
    "start_time",
    "stop_time",
    "stimulus_block",
    "stimulus_index",
)
CONDITION_COLUMNS = tuple(f.name for f in STIMULUS_SCHEMA if f.name not in NON_CONDITION_COLUMNS)

CONDITIONS_SCHEMA = pa.schema(
    [
        pa.field("stimulus_condition_id", _I64, nullable=False),
        *[STIMULUS_SCHEMA.field(c) for c in CONDITION_COLUMNS],
        pa.field("stimulus_presentation_count", _I64, nullable=False),
    ]
)
SCHEMAS: dict[str, pa.Schema] = {
    "stimulus_conditions": CONDITIONS_SCHEMA,
    "presentation_spike_counts": COUNTS_SCHEMA,
    "presentation_spike_times": SPIKE_TIMES_SCHEMA,
    "condition_spike_statistics": STATISTICS_SCHEMA,
    "presentation_running_speed": RUNNING_SCHEMA,
}


class AnalysisError(ValueError):
    """Bad analysis options or inputs; the message names the problem and the fix."""


# --------------------------------------------------------------------------------------------
# options


def bin_edges(spec: Mapping[str, float], *, what: str = "bins") -> np.ndarray:
    """Edges (s, relative to onset) of ``{start, stop, width}``: ``start + k * width`` rounded
    to 12 decimals (so 10 ms edges are the doubles of -0.1, -0.09, ..., 0.0, ... 0.35), for
    k = 0..n with ``n = (stop - start) / width``, which must be a whole number (within 1e-9)."""
    try:
        start, stop, width = (float(spec[k]) for k in ("start", "stop", "width"))
    except (KeyError, TypeError, ValueError):
        raise AnalysisError(
            f"{what}: needs numbers start, stop and width (seconds), got {dict(spec)!r}"
        ) from None
    if not (math.isfinite(start) and math.isfinite(stop) and width > 0 and stop > start):
        raise AnalysisError(f"{what}: needs start < stop and width > 0, got {dict(spec)!r}")
    n = (stop - start) / width
    if abs(n - round(n)) > 1e-9 * max(1.0, n):
        raise AnalysisError(
            f"{what}: (stop - start) / width = {n:g} is not a whole number of bins; "
            "change width or stop"
        )
    edges = np.round(start + width * np.arange(int(round(n)) + 1), 12)  # 0.01 * 3 -> 0.03
    edges[0], edges[-1] = start, stop
    if np.any(np.diff(edges) <= 0):
        raise AnalysisError(f"{what}: width {width:g} is too small for distinct edges")
    return edges


def _edges_for(name: str, bins: Mapping[str, Mapping[str, float]]) -> np.ndarray:
    spec = bins.get(name, bins.get("default", DEFAULT_BINS["default"]))
    return bin_edges(spec, what=f"analysis.bins.{name if name in bins else 'default'}")


# --------------------------------------------------------------------------------------------
# inputs


def _session_dir(root: Path, dataset: str, sid: int) -> Path:
    return root / dataset / f"session_id={sid}"


def _read_units(root: Path, sid: int, unit_filters: Mapping[str, Any] | None) -> np.ndarray:
    path = _session_dir(root, "units", sid) / "part-0.parquet"
    cols = [
        "unit_id",
        "quality",
        "amplitude_cutoff",
        "presence_ratio",
        "isi_violations",
        "channel_local_index",
        "valid_data",
        "ecephys_structure_acronym",
    ]
    tab = pq.read_table(path, columns=cols)
    uid = tab.column("unit_id").to_numpy()
    if unit_filters is not None:

        def f64(c: str) -> np.ndarray:
            return tab.column(c).to_numpy(zero_copy_only=False).astype(np.float64)

        found = tab.column("channel_local_index").is_valid().to_numpy(zero_copy_only=False)
        keep = unit_mask(
            quality=np.array(tab.column("quality").to_pylist(), dtype=object),
            amplitude_cutoff=f64("amplitude_cutoff"),
            presence_ratio=f64("presence_ratio"),
            isi_violations=f64("isi_violations"),
            valid=found & tab.column("valid_data").fill_null(False).to_numpy(zero_copy_only=False),
            in_brain=found
            & tab.column("ecephys_structure_acronym").is_valid().to_numpy(zero_copy_only=False),
            filters=unit_filters,
        )
        uid = uid[keep]
    return np.sort(uid)


# --------------------------------------------------------------------------------------------
# stimulus conditions


def condition_ids(stim: pa.Table) -> tuple[np.ndarray, np.ndarray]:
    """(condition id per presentation, first presentation row of each condition).

    A condition is a distinct combination of every parameter column (``CONDITION_COLUMNS``:
    stimulus_name, the parameters and ``extra_columns``; null is a value of its own); ids are
    0, 1, ... in order of first appearance in presentation order, as AllenSDK numbers them.
    """
    n = stim.num_rows
    if n == 0:
        return np.empty(0, np.int64), np.empty(0, np.int64)
    codes = np.empty((n, len(CONDITION_COLUMNS)), dtype=np.int64)
    for k, c in enumerate(CONDITION_COLUMNS):
        col = stim.column(c).combine_chunks()
        if pa.types.is_floating(col.type):  # -0.0 == 0.0, as for AllenSDK's tuple keys
            null = col.is_null().to_numpy(zero_copy_only=False)
            col = pa.array(col.to_numpy(zero_copy_only=False) + 0.0, mask=null)
        enc = col.dictionary_encode()
        idx = enc.indices.fill_null(-1).to_numpy(zero_copy_only=False)
        codes[:, k] = idx
    _, first, inverse = np.unique(codes, axis=0, return_index=True, return_inverse=True)
    inverse = inverse.reshape(-1)
    order = np.argsort(first, kind="stable")  # condition groups by first appearance
    rank = np.empty_like(order)
    rank[order] = np.arange(order.size)
    return rank[inverse].astype(np.int64), first[order].astype(np.int64)


# --------------------------------------------------------------------------------------------
# the entry point


def analyze_session(
    parquet_dir: str | os.PathLike,
    session_id: int,
    out_dir: str | os.PathLike | None = None,
    *,
    bins: Mapping[str, Mapping[str, float]] | None = None,
    stimuli: Sequence[str] | None = None,
    unit_filters: Mapping[str, Any] | None = None,
    pipeline_version: str | None = None,
    chunk_spikes: int | None = None,
) -> dict[str, Any]:
    """Write the five analysis datasets of one session (see the module docstring).

    ``parquet_dir`` holds the extract datasets; ``out_dir`` (default: the same root) receives
    the new ones. ``bins`` maps stimulus names (and ``"default"``) to ``{start, stop, width}``
    in seconds relative to onset. ``stimuli``: the stimulus names to tabulate (``None``: every
    stimulus of the session; a name the session lacks is skipped). ``unit_filters``: keep only
    the units of the units table passing them (keys as in ``extract``); ``None``: every unit.
    ``chunk_spikes``: units are processed in chunks of about this many spikes (memory bound;
    the output does not depend on it). Returns a summary: row counts per dataset, the stimuli.
    """
    chunk_spikes = CHUNK_SPIKES if chunk_spikes is None else int(chunk_spikes)
    root = Path(parquet_dir)
    out = Path(out_dir) if out_dir is not None else root
    sid = int(session_id)
    bins = dict(DEFAULT_BINS if bins is None else bins)
    stim_path = _session_dir(root, "stimulus_presentations", sid) / "part-0.parquet"
    for need in ("units", "stimulus_presentations", "running_speed"):
        p = _session_dir(root, need, sid) / "part-0.parquet"
        if not p.exists():
            raise AnalysisError(
                f"{p} is missing: extract session {sid} first (python -m ecephys_pipeline "
                "extract, or the workflow's extract_session rule)"
            )
    src_meta = pq.read_schema(stim_path).metadata or {}
    meta = {
        k.decode(): v.decode()
        for k, v in src_meta.items()
        if k.decode().startswith(META_PREFIX) and not k.decode().endswith(".version")
    }
    meta[META_PREFIX + "version"] = pipeline_version or __version__

    stim_tab = pq.read_table(stim_path)
    cond, first = condition_ids(stim_tab)
    stim = {
        "id": stim_tab.column("stimulus_presentation_id").to_numpy(),
        "start": stim_tab.column("start_time").to_numpy(),
        "stop": stim_tab.column("stop_time").to_numpy(),
    }
    if np.any(np.diff(stim["start"]) < 0):
        raise AnalysisError(f"{stim_path}: presentations are not sorted by start_time")
    stim_names = np.array(stim_tab.column("stimulus_name").to_pylist(), dtype=object)
    present = list(dict.fromkeys(n for n in stim_names.tolist() if n is not None))
    if stimuli is None:
        chosen = present
    else:
        chosen = [s for s in dict.fromkeys(stimuli) if s in present]
        lacking = [s for s in stimuli if s not in present]
        if lacking:
            log.info("session %d has no presentations of %s: skipped", sid, lacking)
    edges = {name: _edges_for(name, bins) for name in chosen}

    # stimulus_conditions: every condition of the session
    cond_tab = stim_tab.select(list(CONDITION_COLUMNS)).take(pa.array(first))
    n_per = np.bincount(cond, minlength=first.size).astype(np.int64)
    cond_tab = pa.Table.from_arrays(
        [pa.array(np.arange(first.size, dtype=np.int64), _I64), *cond_tab.columns]
        + [pa.array(n_per, _I64)],
        schema=CONDITIONS_SCHEMA,
    )
    del stim_tab

    unit_ids = _read_units(root, sid, unit_filters)
    spikes = Spikes.read(_session_dir(root, "spikes", sid), unit_ids)
    rs = pq.read_table(
        _session_dir(root, "running_speed", sid) / "part-0.parquet",
        columns=["start_time", "velocity"],
    )
    r_start = rs.column("start_time").to_numpy()
    r_vel = rs.column("velocity").to_numpy()
    if np.any(np.diff(r_start) < 0):
        order = np.argsort(r_start, kind="stable")
        r_start, r_vel = r_start[order], r_vel[order]

    meta_counts = dict(meta)
    meta_counts[META_PREFIX + "bin_edges"] = json.dumps(
        {n: edges[n].tolist() for n in sorted(chosen)}, sort_keys=True
    )

    out.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.analysis-{sid}-"))
    summary: dict[str, Any] = {"session_id": sid, "stimuli": sorted(chosen)}
    rels = {d: Path(d) / f"session_id={sid}" / "part-0.parquet" for d in ANALYSIS_DATASETS}
    counts = dict.fromkeys(ANALYSIS_DATASETS, 0)
    try:
        _write_parquet(cond_tab, tmp / rels["stimulus_conditions"], meta)
        counts["stimulus_conditions"] = cond_tab.num_rows
        writers = {
            d: parquet_writer(
                tmp / rels[d],
                SCHEMAS[d],
                meta_counts if d == "presentation_spike_counts" else meta,
            )
            for d in ANALYSIS_DATASETS[1:]
        }
        try:
            for name in sorted(chosen):  # stimulus_name first in every sort order
                rows = np.flatnonzero(stim_names == name)
                s = Stimulus.of(name, rows, stim, cond, edges[name])
                stats = []  # small (units x conditions): one row group per stimulus
                for tables in stimulus_chunks(s, spikes, chunk_spikes):
                    stats.append(tables.pop("condition_spike_statistics"))
                    for d, tab in tables.items():
                        if tab.num_rows:
                            writers[d].write_table(tab, row_group_size=SPIKE_ROW_GROUP)
                            counts[d] += tab.num_rows
                    del tables
                if stats:
                    tab = pa.concat_tables(stats)
                    writers["condition_spike_statistics"].write_table(tab)
                    counts["condition_spike_statistics"] += tab.num_rows
                run = running_table(s, (r_start, r_vel))
                writers["presentation_running_speed"].write_table(run)
                counts["presentation_running_speed"] += run.num_rows
        finally:
            for w in writers.values():
                w.close()
        files = {}
        for d, rel in rels.items():
            dest = out / rel
            dest.parent.mkdir(parents=True, exist_ok=True)
            os.replace(tmp / rel, dest)
            files[d] = str(dest)
        summary["counts"] = counts
        summary["files"] = files
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return summary
