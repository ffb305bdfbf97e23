"""NWB -> Arrow tables -> hive-partitioned Parquet (docs/architecture.md §5, docs/SCHEMA.md).

``extract_session`` reads one Allen ecephys session NWB file with :mod:`ecephys_pipeline.nwb`
(bulk h5py reads, no per-unit loops over HDF5) and writes five datasets under ``out_dir``::

    units/session_id=<sid>/part-0.parquet
    waveforms/session_id=<sid>/part-0.parquet
    spikes/session_id=<sid>/probe_id=<pid>/part-0.parquet     (one per probe, even if empty)
    stimulus_presentations/session_id=<sid>/part-0.parquet
    running_speed/session_id=<sid>/part-0.parquet

Files are written into a temporary directory next to ``out_dir`` and renamed into place, so a
final path never holds a partial file.  The same input gives byte-identical output.
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from . import __version__, atomic
from .download import sha256_file
from .nwb import (
    Electrodes,
    NwbError,
    NwbSession,
    Probes,
    UnitsTable,
    open_session,
    strings_to_float,
)
from .unit_filters import normalise_filters, unit_mask

log = logging.getLogger(__name__)

__all__ = [
    "DATASETS",
    "SCHEMAS",
    "extract_session",
]

META_PREFIX = "ecephys_pipeline."
SPIKE_ROW_GROUP = 1 << 20
ZSTD_LEVEL = 1

# --------------------------------------------------------------------------------------------
# schemas

_I64, _F64, _STR, _BOOL = pa.int64(), pa.float64(), pa.string(), pa.bool_()

# (output name, arrow type, stored names in priority order)
UNIT_SCALAR_COLUMNS: list[tuple[str, pa.DataType, tuple[str, ...]]] = [
    ("peak_channel_id", _I64, ("peak_channel_id",)),
    ("local_index", _I64, ("local_index",)),
    ("cluster_id", _I64, ("cluster_id",)),
    ("quality", _STR, ("quality",)),
    ("firing_rate", _F64, ("firing_rate",)),
    ("snr", _F64, ("snr",)),
    ("isi_violations", _F64, ("isi_violations",)),
    ("presence_ratio", _F64, ("presence_ratio",)),
    ("amplitude_cutoff", _F64, ("amplitude_cutoff",)),
    ("isolation_distance", _F64, ("isolation_distance",)),
    ("L_ratio", _F64, ("l_ratio", "L_ratio")),
    ("d_prime", _F64, ("d_prime",)),
    ("nn_hit_rate", _F64, ("nn_hit_rate",)),
    ("nn_miss_rate", _F64, ("nn_miss_rate",)),
    ("silhouette_score", _F64, ("silhouette_score",)),
    ("max_drift", _F64, ("max_drift",)),
    ("cumulative_drift", _F64, ("cumulative_drift",)),
    ("waveform_duration", _F64, ("waveform_duration", "duration")),
    ("waveform_halfwidth", _F64, ("waveform_halfwidth", "halfwidth")),
    ("waveform_PT_ratio", _F64, ("PT_ratio", "waveform_PT_ratio")),
    (
        "waveform_repolarization_slope",
        _F64,
        ("repolarization_slope", "waveform_repolarization_slope"),
    ),
    ("waveform_recovery_slope", _F64, ("recovery_slope", "waveform_recovery_slope")),
    ("waveform_amplitude", _F64, ("amplitude", "waveform_amplitude")),
    ("waveform_spread", _F64, ("spread", "waveform_spread")),
    ("waveform_velocity_above", _F64, ("velocity_above", "waveform_velocity_above")),
    ("waveform_velocity_below", _F64, ("velocity_below", "waveform_velocity_below")),
]

UNITS_SCHEMA = pa.schema(
    [pa.field("unit_id", _I64, nullable=False)]
    + [pa.field(n, t) for n, t, _ in UNIT_SCALAR_COLUMNS]
    + [
        pa.field("spike_count", _I64, nullable=False),
        pa.field("channel_local_index", _I64),
        pa.field("probe_vertical_position", _F64),
        pa.field("probe_horizontal_position", _F64),
        pa.field("anterior_posterior_ccf_coordinate", _F64),
        pa.field("dorsal_ventral_ccf_coordinate", _F64),
        pa.field("left_right_ccf_coordinate", _F64),
        pa.field("ecephys_structure_acronym", _STR),
        pa.field("valid_data", _BOOL),
        pa.field("probe_id", _I64),
        pa.field("probe_name", _STR),
        pa.field("probe_sampling_rate", _F64),
        pa.field("probe_lfp_sampling_rate", _F64),
        pa.field("probe_has_lfp_data", _BOOL),
        pa.field("passes_default_filters", _BOOL, nullable=False),
        pa.field("extra_columns", _STR),
    ]
)

SPIKES_SCHEMA = pa.schema(
    [
        pa.field("unit_id", _I64, nullable=False),
        pa.field("spike_time", _F64, nullable=False),
        pa.field("spike_amplitude", _F64, nullable=False),
    ]
)


def waveforms_schema(value_type: pa.DataType = _F64, n_samples: int = 82) -> pa.Schema:
    return pa.schema(
        [
            pa.field("unit_id", _I64, nullable=False),
            pa.field("probe_id", _I64, nullable=False),
            pa.field("channel_local_index", _I64, nullable=False),
            pa.field("channel_id", _I64),
            pa.field("is_peak_channel", _BOOL, nullable=False),
            pa.field("sample_rate", _F64),
            pa.field("n_samples", pa.int32(), nullable=False),
            pa.field(
                "waveform",
                pa.list_(pa.field("element", value_type, nullable=False), n_samples),
                nullable=False,
            ),
        ]
    )


# Stimulus parameter columns of allen-nwb.md §1.4 (union over session types), with fixed types.
STIMULUS_FLOAT_PARAMS = (
    "stimulus_block",
    "stimulus_index",
    "contrast",
    "orientation",
    "temporal_frequency",
    "x_position",
    "y_position",
    "frame",
    "opacity",
    "Speed",
    "Dir",
    "coherence",
    "dotSize",
    "nDots",
)
STIMULUS_STRING_PARAMS = (
    "spatial_frequency",
    "phase",
    "size",
    "color",
    "dotLife",
    "units",
    "mask",
    "fieldPos",
    "fieldShape",
    "fieldSize",
)
# AllenSDK default_column_renames (raw psychopy names -> canonical), applied when the canonical
# column is absent from that table.
STIMULUS_COLUMN_RENAMES = {
    "Contrast": "contrast",
    "Ori": "orientation",
    "SF": "spatial_frequency",
    "TF": "temporal_frequency",
    "Phase": "phase",
    "Color": "color",
    "Image": "frame",
    "Pos_x": "x_position",
    "Pos_y": "y_position",
}
_STIM_TYPES: dict[str, pa.DataType] = {
    "stimulus_name": _STR,
    "start_time": _F64,
    "stop_time": _F64,
    **{c: _F64 for c in STIMULUS_FLOAT_PARAMS},
    **{c: _STR for c in STIMULUS_STRING_PARAMS},
}
STIMULUS_SCHEMA = pa.schema(
    [
        pa.field("stimulus_presentation_id", _I64, nullable=False),
        pa.field("stimulus_name", _STR),
        pa.field("start_time", _F64, nullable=False),
        pa.field("stop_time", _F64, nullable=False),
    ]
    + [pa.field(c, _F64) for c in STIMULUS_FLOAT_PARAMS]
    + [pa.field(c, _STR) for c in STIMULUS_STRING_PARAMS]
    + [pa.field("extra_columns", _STR)]
)
# Stored string values that mean "not applicable" (AllenSDK maps 'N/A' -> '' -> 'null').
_STIM_MISSING = frozenset({"N/A", ""})

RUNNING_SCHEMA = pa.schema(
    [
        pa.field("start_time", _F64, nullable=False),
        pa.field("end_time", _F64, nullable=False),
        pa.field("velocity", _F64, nullable=False),
    ]
)

DATASETS = ("units", "waveforms", "spikes", "stimulus_presentations", "running_speed")
SCHEMAS: dict[str, pa.Schema] = {
    "units": UNITS_SCHEMA,
    "waveforms": waveforms_schema(),
    "spikes": SPIKES_SCHEMA,
    "stimulus_presentations": STIMULUS_SCHEMA,
    "running_speed": RUNNING_SCHEMA,
}

# --------------------------------------------------------------------------------------------
# array helpers


def _float_array(values: np.ndarray, *, nan_is_null: bool = False) -> pa.Array:
    v = np.ascontiguousarray(values, dtype=np.float64)
    if nan_is_null:
        mask = np.isnan(v)
        if mask.any():
            return pa.array(v, type=_F64, mask=mask)
    return pa.array(v, type=_F64)


def _int_array(values: np.ndarray, *, what: str) -> pa.Array:
    v = np.asarray(values)
    if v.dtype.kind in "iub":
        return pa.array(v.astype(np.int64, copy=False), type=_I64)
    if v.dtype.kind == "f":
        mask = np.isnan(v)
        filled = np.where(mask, 0.0, v)
        if np.any(filled != np.trunc(filled)):
            raise NwbError(f"{what}: non-integer values in an integer column")
        return pa.array(filled.astype(np.int64), type=_I64, mask=mask if mask.any() else None)
    out = [None if (x is None or x in ("", "None", "nan", "NaN")) else int(x) for x in v]
    return pa.array(out, type=_I64)


def _num_repr(x: Any) -> str | None:
    if isinstance(x, (bool, np.bool_)):
        return str(bool(x))
    if isinstance(x, (int, np.integer)):
        return str(int(x))
    x = float(x)
    return None if math.isnan(x) else repr(x)


def _string_array(values: np.ndarray, *, missing: frozenset[str] = frozenset()) -> pa.Array:
    v = np.asarray(values)
    if v.dtype.kind in "iufb":
        return pa.array([_num_repr(x) for x in v.tolist()], type=_STR)
    return pa.array(
        [None if (x is None or x in missing) else str(x) for x in v.tolist()], type=_STR
    )


def _jsonable(x: Any) -> Any:
    if isinstance(x, (np.floating, float)):
        x = float(x)
        return None if math.isnan(x) else x
    if isinstance(x, (np.integer,)):
        return int(x)
    if isinstance(x, (np.bool_,)):
        return bool(x)
    return x


def _extra_json(extras: dict[str, np.ndarray], n: int) -> pa.Array:
    """Unknown columns -> one JSON object string per row (keys sorted), or all null."""
    if not extras:
        return pa.nulls(n, type=_STR)
    names = sorted(extras)
    cols = [extras[k].tolist() for k in names]
    rows = []
    for i in range(n):
        rows.append(
            json.dumps(
                {k: _jsonable(c[i]) for k, c in zip(names, cols, strict=True)},
                sort_keys=True,
                allow_nan=False,
            )
        )
    return pa.array(rows, type=_STR)


def _lookup(keys: np.ndarray, queries: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Row of each query in ``keys`` (unique values, any order), vectorised:
    (found mask, row index or -1)."""
    queries = np.asarray(queries)
    if keys.size == 0 or queries.size == 0:
        return np.zeros(queries.size, dtype=bool), np.full(queries.size, -1, dtype=np.int64)
    order = np.argsort(keys, kind="stable")
    sk = keys[order]
    pos = np.minimum(np.searchsorted(sk, queries), sk.size - 1)
    found = sk[pos] == queries
    return found, np.where(found, order[pos], -1).astype(np.int64)


def _ranges(starts: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """Concatenation of ``arange(s, s + c)`` for every (s, c), vectorised (int64)."""
    total = int(counts.sum())
    if total == 0:
        return np.empty(0, dtype=np.int64)
    out_starts = np.cumsum(counts) - counts
    idx = np.arange(total, dtype=np.int64)
    idx += np.repeat(starts - out_starts, counts)
    return idx


# --------------------------------------------------------------------------------------------
# Parquet writing


def _leaf_paths(schema: pa.Schema) -> tuple[list[str], dict[str, str]]:
    """(dictionary-encoded columns, per-column encodings) for the write options."""
    dict_cols: list[str] = []
    enc: dict[str, str] = {}
    for fld in schema:
        t = fld.type
        if pa.types.is_string(t):
            dict_cols.append(fld.name)
        elif pa.types.is_floating(t):
            enc[fld.name] = "BYTE_STREAM_SPLIT"
        elif pa.types.is_fixed_size_list(t) and pa.types.is_floating(t.value_type):
            enc[f"{fld.name}.list.element"] = "BYTE_STREAM_SPLIT"
    return dict_cols, enc


def parquet_writer(
    path: Path, schema: pa.Schema, metadata: Mapping[str, str], dictionary: Iterable[str] = ()
) -> pq.ParquetWriter:
    """A ParquetWriter with the project's options (docs/SCHEMA.md "Encoding") and ``metadata``
    added to the schema's key-value metadata; write row groups with ``write_table``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    schema_meta = dict(schema.metadata or {})
    schema_meta.update({k.encode(): v.encode() for k, v in metadata.items()})
    dict_cols, enc = _leaf_paths(schema)
    return pq.ParquetWriter(
        path,
        schema.with_metadata(schema_meta),
        compression="zstd",
        compression_level=ZSTD_LEVEL,
        use_dictionary=dict_cols + list(dictionary),
        column_encoding=enc or None,
        write_statistics=True,
    )


def _write_parquet(
    table: pa.Table,
    path: Path,
    metadata: Mapping[str, str],
    *,
    row_group_size: int = SPIKE_ROW_GROUP,
    dictionary: Iterable[str] = (),
) -> None:
    with parquet_writer(path, table.schema, metadata, dictionary) as writer:
        writer.write_table(
            table.replace_schema_metadata(writer.schema.metadata), row_group_size=row_group_size
        )


# --------------------------------------------------------------------------------------------
# the join of units with their peak channel and probe


class _UnitFrame:
    """Units sorted by unit_id, joined (vectorised) with peak channel and probe."""

    def __init__(self, ut: UnitsTable, el: Electrodes, pr: Probes, path: Path):
        self.path = path
        self.order = np.argsort(ut.unit_id, kind="stable")
        self.unit_id = ut.unit_id[self.order]
        if np.any(self.unit_id[1:] == self.unit_id[:-1]):
            raise NwbError(f"{path}: duplicate unit ids in /units/id")
        self.cols = {k: v[self.order] for k, v in ut.columns.items()}
        n = self.unit_id.size
        for need in ("peak_channel_id", "quality"):
            if need not in self.cols:
                raise NwbError(f"{path}: /units has no {need!r} column")
        for need in ("amplitude_cutoff", "presence_ratio", "isi_violations"):
            if need not in self.cols:
                raise NwbError(f"{path}: /units has no {need!r} column")
            self.cols[need] = np.asarray(self.cols[need], dtype=np.float64)

        # peak channel -> electrodes row
        peak = np.asarray(self.cols["peak_channel_id"]).astype(np.int64)
        found, row = _lookup(el.channel_id, peak)
        self.ch_found = found
        self.ch_row = row
        r = np.where(found, row, 0)

        def take(a: np.ndarray, fill: Any) -> np.ndarray:
            if a.size == 0:
                return np.full(n, fill, dtype=object if fill is None else type(fill))
            out = a[r]
            if out.dtype == object:
                out = out.copy()
                out[~found] = fill
            else:
                out = np.where(found, out, fill)
            return out

        self.channel_local_index = take(el.local_index, -1)
        self.valid = take(el.valid_data.astype(bool), False).astype(bool)
        self.acronym = take(el.structure_acronym, None)
        self.in_brain = np.array([a is not None for a in self.acronym], dtype=bool)
        self.vpos = take(el.probe_vertical_position, np.nan)
        self.hpos = take(el.probe_horizontal_position, np.nan)
        self.ap = take(el.anterior_posterior_ccf_coordinate, np.nan)
        self.dv = take(el.dorsal_ventral_ccf_coordinate, np.nan)
        self.lr = take(el.left_right_ccf_coordinate, np.nan)
        ch_probe = take(el.probe_id, -1).astype(np.int64)

        # probe
        pfound, prow = _lookup(pr.probe_id, ch_probe)
        pfound &= found
        self.probe_found = pfound
        self.probe_row = np.where(pfound, prow, -1)
        self.probe_id = np.where(pfound, ch_probe, -1)
        if np.any(found & ~pfound):
            log.warning(
                "%s: %d units' peak channels belong to no electrode group",
                path,
                int((found & ~pfound).sum()),
            )
        if np.any(~found):
            log.warning(
                "%s: %d units have a peak_channel_id missing from the electrodes table; "
                "they are kept in units (probe fields null) but have no spikes/waveforms rows",
                path,
                int((~found).sum()),
            )
        self.probes = pr

        self.passes_default = self.mask(None)

    def mask(self, filters: Mapping[str, Any] | None) -> np.ndarray:
        """Units passing ``filters`` (None: AllenSDK's defaults); a unit whose peak channel is
        not in the electrodes table fails the validity and out-of-brain filters."""
        return unit_mask(
            quality=self.cols["quality"],
            amplitude_cutoff=self.cols["amplitude_cutoff"],
            presence_ratio=self.cols["presence_ratio"],
            isi_violations=self.cols["isi_violations"],
            valid=self.ch_found & self.valid,
            in_brain=self.ch_found & self.in_brain,
            filters=filters,
        )

    def table(self, sel: np.ndarray, spike_count: np.ndarray) -> pa.Table:
        n_sel = int(sel.sum())
        arrays: list[pa.Array] = [pa.array(self.unit_id[sel], type=_I64)]
        used: set[str] = set()
        for _out_name, typ, stored_names in UNIT_SCALAR_COLUMNS:
            src = next((s for s in stored_names if s in self.cols), None)
            if src is None:
                arrays.append(pa.nulls(n_sel, type=typ))
                continue
            used.add(src)
            v = self.cols[src][sel]
            what = f"{self.path}: units/{src}"
            if typ == _I64:
                arrays.append(_int_array(v, what=what))
            elif typ == _F64:
                if v.dtype == object:
                    v = strings_to_float(v, what=what)
                arrays.append(_float_array(v))
            else:
                arrays.append(_string_array(v))
        extras = {k: v[sel] for k, v in self.cols.items() if k not in used}
        pf = self.probe_found[sel]
        prow = self.probe_row[sel]
        pr = self.probes

        def probe_col(values: np.ndarray, typ: pa.DataType) -> pa.Array:
            if values.size == 0:
                return pa.nulls(n_sel, type=typ)
            got = values[np.where(pf, prow, 0)]
            return pa.array(got.tolist() if got.dtype == object else got, type=typ, mask=~pf)

        chf = self.ch_found[sel]
        li = self.channel_local_index[sel]
        arrays += [
            pa.array(spike_count[sel].astype(np.int64), type=_I64),
            pa.array(li, type=_I64, mask=~chf),
            _float_array(self.vpos[sel], nan_is_null=True),
            _float_array(self.hpos[sel], nan_is_null=True),
            _float_array(self.ap[sel]),
            _float_array(self.dv[sel]),
            _float_array(self.lr[sel]),
            pa.array(self.acronym[sel].tolist(), type=_STR),
            pa.array(self.valid[sel], type=_BOOL, mask=~chf),
            pa.array(self.probe_id[sel], type=_I64, mask=~pf),
            probe_col(pr.name, _STR),
            probe_col(pr.sampling_rate, _F64),
            probe_col(pr.lfp_sampling_rate, _F64),
            probe_col(pr.has_lfp_data, _BOOL),
            pa.array(self.passes_default[sel], type=_BOOL),
            _extra_json(extras, n_sel),
        ]
        return pa.Table.from_arrays(arrays, schema=UNITS_SCHEMA)


# --------------------------------------------------------------------------------------------
# spikes


def _probe_spikes(
    s: NwbSession, off: np.ndarray, file_rows: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Spike times/amplitudes of the given units (file rows, already in unit_id order),
    concatenated unit after unit; returns (times, amplitudes, counts)."""
    starts = off[file_rows]
    ends = off[file_rows + 1]
    counts = ends - starts
    total = int(counts.sum())
    if total == 0:
        e = np.empty(0, dtype=np.float64)
        return e, e.copy(), counts
    nz = counts > 0
    s_nz, e_nz = starts[nz], ends[nz]
    if np.all(s_nz[1:] == e_nz[:-1]):  # contiguous and in order: one read, no copy
        t, a = s.read_spike_span(int(s_nz[0]), int(e_nz[-1]))
    else:
        lo, hi = int(s_nz.min()), int(e_nz.max())
        ts, as_ = s.read_spike_span(lo, hi)
        idx = _ranges(starts - lo, counts)
        t, a = ts[idx], as_[idx]
        del ts, as_, idx
    if s.generation == 1:
        t, a, counts = _gen1_clean(t, a, counts)
    return t, a, counts


def _gen1_clean(
    t: np.ndarray, a: np.ndarray, counts: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Drop spike times < 0 (with their amplitudes) and sort each unit's spikes by time
    (stable; amplitudes permuted along), as AllenSDK does for Gen-1 files."""
    rank = np.repeat(np.arange(counts.size, dtype=np.int64), counts)
    valid = t >= 0
    if not valid.all():
        t, a, rank = t[valid], a[valid], rank[valid]
        counts = np.bincount(rank, minlength=counts.size).astype(np.int64)
    if t.size > 1:
        same = rank[1:] == rank[:-1]
        if np.any(same & (t[1:] < t[:-1])):
            order = np.lexsort((t, rank))  # stable: ties keep stored order
            t, a = t[order], a[order]
    return t, a, counts


# --------------------------------------------------------------------------------------------
# waveforms


def _waveforms_table(
    s: NwbSession, ut: UnitsTable, uf: _UnitFrame, el: Electrodes, sel: np.ndarray
) -> pa.Table:
    pr = uf.probes
    if ut.waveform_offsets is None or ut.waveform_shape is None:
        return waveforms_schema().empty_table()
    n_samples = int(ut.waveform_shape[-1])
    vtype = pa.from_numpy_dtype(ut.waveform_dtype)
    schema = waveforms_schema(vtype, n_samples)
    keep = sel & uf.probe_found
    file_rows = uf.order[keep]
    woff = ut.waveform_offsets
    starts, counts = woff[file_rows], woff[file_rows + 1] - woff[file_rows]
    total = int(counts.sum())
    if total == 0:
        return schema.empty_table()
    data = s.read_waveforms()
    nz = counts > 0
    s_nz, c_nz = starts[nz], counts[nz]
    if s_nz[0] == 0 and np.all(s_nz[1:] == (s_nz + c_nz)[:-1]) and total == data.shape[0]:
        rows = data
    else:
        rows = data[_ranges(starts, counts)]
        del data
    uid = uf.unit_id[keep]
    pid = uf.probe_id[keep]
    out_starts = np.cumsum(counts) - counts
    local = np.arange(total, dtype=np.int64) - np.repeat(out_starts, counts)
    r_pid = np.repeat(pid, counts)

    # (probe, local_index) -> channel_id via one composite key per electrode
    span = int(max(el.local_index.max(initial=0), local.max(initial=0))) + 1
    el_pf, el_prow = _lookup(pr.probe_id, el.probe_id)
    el_keys = el_prow[el_pf] * span + el.local_index[el_pf]
    q = np.repeat(uf.probe_row[keep], counts) * span + local
    hit, el_row = _lookup(el_keys, q)
    el_ids = el.channel_id[el_pf]
    channel_id = el_ids[np.where(hit, el_row, 0)] if hit.any() else np.zeros(total, np.int64)

    peak_local = np.where(uf.ch_found[keep], uf.channel_local_index[keep], -1)
    is_peak = local == np.repeat(peak_local, counts)
    rate = pr.sampling_rate[uf.probe_row[keep]]
    flat = np.ascontiguousarray(rows).reshape(-1)
    wf = pa.FixedSizeListArray.from_arrays(pa.array(flat, type=vtype), n_samples)
    arrays = [
        pa.array(np.repeat(uid, counts), type=_I64),
        pa.array(r_pid, type=_I64),
        pa.array(local, type=_I64),
        pa.array(channel_id, type=_I64, mask=~hit),
        pa.array(is_peak, type=_BOOL),
        pa.array(np.repeat(rate, counts), type=_F64),
        pa.array(np.full(total, n_samples, dtype=np.int32), type=pa.int32()),
        wf,
    ]
    return pa.Table.from_arrays(arrays, schema=schema)


# --------------------------------------------------------------------------------------------
# stimulus presentations


def _stim_column(
    values: np.ndarray, typ: pa.DataType, *, what: str
) -> tuple[pa.Array | None, bool]:
    """Convert one stored column to the declared type; (array, ok). Not ok -> goes to extras."""
    v = np.asarray(values)
    if typ == _F64:
        if v.dtype.kind in "iufb":
            return _float_array(v.astype(np.float64), nan_is_null=True), True
        out = np.empty(v.size, dtype=np.float64)
        mask = np.zeros(v.size, dtype=bool)
        for i, x in enumerate(v.tolist()):
            if x is None or x in _STIM_MISSING or x in ("nan", "NaN"):
                mask[i] = True
                out[i] = 0.0
                continue
            try:
                out[i] = float(x)
            except ValueError:
                log.warning("%s: non-numeric value %r; column kept in extra_columns", what, x)
                return None, False
            if math.isnan(out[i]):
                mask[i] = True
                out[i] = 0.0
        return pa.array(out, type=_F64, mask=mask if mask.any() else None), True
    return _string_array(v, missing=_STIM_MISSING), True


def _stimulus_table(s: NwbSession) -> pa.Table:
    tables = s.stimulus_tables()
    if not tables:
        return STIMULUS_SCHEMA.empty_table()
    pieces: list[pa.Table] = []
    for tname, cols, ids in tables:
        n = ids.size
        cols = dict(cols)
        for raw, canon in STIMULUS_COLUMN_RENAMES.items():
            if raw in cols and canon not in cols:
                cols[canon] = cols.pop(raw)
        for need in ("start_time", "stop_time"):
            if need not in cols:
                raise NwbError(f"{s.path}: /intervals/{tname} has no {need} column")
        if "stimulus_name" not in cols and tname.endswith("_presentations"):
            cols["stimulus_name"] = np.full(n, tname[: -len("_presentations")], dtype=object)
        arrays: list[pa.Array] = [pa.array(ids, type=_I64)]
        extras: dict[str, np.ndarray] = {}
        for fld in STIMULUS_SCHEMA:
            name = fld.name
            if name in ("stimulus_presentation_id", "extra_columns"):
                continue
            if name not in cols:
                arrays.append(pa.nulls(n, type=fld.type))
                continue
            if name in ("start_time", "stop_time"):
                arrays.append(_float_array(cols[name]))
                continue
            arr, ok = _stim_column(cols[name], fld.type, what=f"{s.path}: {tname}/{name}")
            if not ok:
                extras[name] = cols[name]
                arr = pa.nulls(n, type=fld.type)
            arrays.append(arr)
        for c, v in cols.items():
            if c not in _STIM_TYPES:
                if v.dtype == object:
                    v = np.array([None if x in _STIM_MISSING else x for x in v], dtype=object)
                extras[c] = v
        arrays.append(_extra_json(extras, n))
        pieces.append(pa.Table.from_arrays(arrays, schema=STIMULUS_SCHEMA))
    table = pa.concat_tables(pieces)
    start = table.column("start_time").to_numpy()
    if s.generation == 1:  # Gen-1: the stored epochs ids are the presentation ids
        ids = table.column("stimulus_presentation_id").to_numpy()
        order = np.lexsort((ids, start))
        table = table.take(pa.array(order))
    else:  # Gen-2: AllenSDK concatenates, sorts by start_time, re-indexes 0..N-1
        order = np.argsort(start, kind="stable")
        table = table.take(pa.array(order))
        table = table.set_column(
            0,
            STIMULUS_SCHEMA.field(0),
            pa.array(np.arange(table.num_rows, dtype=np.int64), type=_I64),
        )
    return table


# --------------------------------------------------------------------------------------------
# the entry point


def _part(root: Path, dataset: str, sid: int, pid: int | None = None) -> Path:
    p = root / dataset / f"session_id={sid}"
    if pid is not None:
        p = p / f"probe_id={pid}"
    return p / "part-0.parquet"


def extract_session(
    nwb_path: str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    unit_filters: Mapping[str, Any] | None = None,
    probe_ids: Iterable[int] | None = None,
    source_sha256: str | None = None,
    pipeline_version: str | None = None,
) -> dict[str, Any]:
    """Extract one session NWB file to the five Parquet datasets under ``out_dir``.

    ``unit_filters`` (keys of :data:`ecephys_pipeline.unit_filters.DEFAULT_UNIT_FILTERS`; null
    value = that filter off)
    restricts units, waveforms and spikes to the passing units; ``None`` writes every unit.
    ``probe_ids`` restricts to those probes (spike files are written only for them).
    ``source_sha256`` is recorded in the file metadata; computed from the file when omitted.

    Returns a summary dict: session_id, generation, counts, probe_ids and the written paths.
    """
    nwb_path = Path(nwb_path)
    out_dir = Path(out_dir)
    if unit_filters is not None:
        unit_filters = normalise_filters(unit_filters)
    with open_session(nwb_path) as s:
        if source_sha256 is None:
            source_sha256 = sha256_file(nwb_path)[1]
        sid = s.session_id
        meta = {
            META_PREFIX + "source_sha256": source_sha256,
            META_PREFIX + "version": pipeline_version or __version__,
            META_PREFIX + "source_file": nwb_path.name,
            META_PREFIX + "generation": str(s.generation),
        }
        pr = s.probes()
        el = s.electrodes()
        ut = s.units()
        uf = _UnitFrame(ut, el, pr, nwb_path)
        n = uf.unit_id.size
        sel = np.ones(n, dtype=bool) if unit_filters is None else uf.mask(unit_filters)
        probe_list = pr.probe_id.tolist()
        if probe_ids is not None:
            wanted = {int(p) for p in probe_ids}
            missing = wanted - set(probe_list)
            if missing:
                raise NwbError(f"{nwb_path}: no probe(s) {sorted(missing)} in this session")
            probe_list = [p for p in probe_list if p in wanted]
            sel &= np.isin(uf.probe_id, np.array(probe_list, dtype=np.int64))

        out_dir.mkdir(parents=True, exist_ok=True)
        with atomic.scratch_dir(out_dir.parent, f".{out_dir.name}.extract-{sid}") as tmp:
            written: dict[str, list[Path]] = {d: [] for d in DATASETS}
            counts = {d: 0 for d in DATASETS}
            spike_count = (
                np.diff(ut.spike_offsets)[uf.order]
                if ut.spike_offsets is not None
                else np.zeros(n, dtype=np.int64)
            )

            # spikes, probe by probe (peak memory ~ one probe's spikes)
            for pid in probe_list:
                on_probe = sel & (uf.probe_id == pid)
                uids = uf.unit_id[on_probe]
                if ut.spike_offsets is not None and uids.size:
                    t, a, cnt = _probe_spikes(s, ut.spike_offsets, uf.order[on_probe])
                    spike_count[on_probe] = cnt
                    table = pa.Table.from_arrays(
                        [
                            pa.array(np.repeat(uids, cnt), type=_I64),
                            pa.array(t, type=_F64),
                            pa.array(a, type=_F64),
                        ],
                        schema=SPIKES_SCHEMA,
                    )
                    del t, a
                else:
                    table = SPIKES_SCHEMA.empty_table()
                rel = _part(Path(), "spikes", sid, pid)
                _write_parquet(table, tmp / rel, meta)
                counts["spikes"] += table.num_rows
                written["spikes"].append(rel)
                del table

            units = uf.table(sel, spike_count)
            rel = _part(Path(), "units", sid)
            _write_parquet(units, tmp / rel, meta)
            counts["units"] = units.num_rows
            written["units"].append(rel)
            del units

            wf = _waveforms_table(s, ut, uf, el, sel)
            rel = _part(Path(), "waveforms", sid)
            _write_parquet(wf, tmp / rel, meta, row_group_size=64 * 1024)
            counts["waveforms"] = wf.num_rows
            written["waveforms"].append(rel)
            del wf

            stim = _stimulus_table(s)
            rel = _part(Path(), "stimulus_presentations", sid)
            _write_parquet(stim, tmp / rel, meta)
            counts["stimulus_presentations"] = stim.num_rows
            written["stimulus_presentations"].append(rel)

            st, en, ve = s.running_speed()
            running = pa.Table.from_arrays(
                [pa.array(st, _F64), pa.array(en, _F64), pa.array(ve, _F64)],
                schema=RUNNING_SCHEMA,
            )
            rel = _part(Path(), "running_speed", sid)
            _write_parquet(running, tmp / rel, meta)
            counts["running_speed"] = running.num_rows
            written["running_speed"].append(rel)

            final = _publish(tmp, out_dir, sid, written)
    return {
        "session_id": sid,
        "generation": s.generation,
        "source_file": nwb_path.name,
        "source_sha256": source_sha256,
        "probe_ids": probe_list,
        "counts": counts,
        "files": {d: [str(p) for p in ps] for d, ps in final.items()},
    }


def _publish(
    tmp: Path, out_dir: Path, sid: int, written: dict[str, list[Path]]
) -> dict[str, list[Path]]:
    """Rename every temp file onto its final path (atomic per file), then remove stale spike
    partitions of this session (probes not written this time)."""
    final: dict[str, list[Path]] = {}
    for d, rels in written.items():
        final[d] = []
        for rel in rels:
            dest = out_dir / rel
            dest.parent.mkdir(parents=True, exist_ok=True)
            os.replace(tmp / rel, dest)
            final[d].append(dest)
    spikes_dir = out_dir / "spikes" / f"session_id={sid}"
    keep = {p.parent.name for p in final["spikes"]}
    if spikes_dir.is_dir():
        for child in spikes_dir.iterdir():
            if child.is_dir() and child.name.startswith("probe_id=") and child.name not in keep:
                shutil.rmtree(child)
    return final
