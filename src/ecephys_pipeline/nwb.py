"""Knowledge of the Allen Visual Coding - Neuropixels NWB layout, for reading with h5py.

Facts come from ``docs/allen-nwb.md`` (cited as ``allen-nwb.md §n``) and AllenSDK 2.16.2, which is
the authority on how the files are meant to be read.  Everything here reads whole datasets (or one
contiguous slice of them) at a time; there are no per-unit loops over HDF5.

Two generations of session files exist (allen-nwb.md §0):

* Gen-2 (``nwb_version >= 2.2.2``, the files served now): probes are named ``probeA``.. with the id
  in a ``probe_id`` attribute, electrodes carry ``x/y/z`` and ``location``, one
  ``/intervals/<name>_presentations`` table per stimulus, spikes already filtered and sorted.
* Gen-1 (2019): groups named by probe id, ``manual_structure_*`` electrode columns, one
  ``/intervals/epochs`` table, and spike times that may hold ``-1`` and be unsorted
  (allen-nwb.md §4).

The public entry points are :func:`open_session` (an :class:`NwbSession`) and :func:`open_lfp`.
"""

from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import h5py
import numpy as np

log = logging.getLogger(__name__)

GEN2_MIN_VERSION = (2, 2, 2)

# Ragged units columns (VectorData + VectorIndex); everything else in ``colnames`` is scalar.
RAGGED_UNIT_COLUMNS = ("spike_times", "spike_amplitudes", "waveform_mean", "waveform_sd")

# Units metric columns that are float64 in AllenSDK; ``fill_df`` may have stored them as vlen
# strings of "" / "None" when the whole column was missing for the session (allen-nwb.md §1.3).
FLOAT_UNIT_COLUMNS = (
    "firing_rate",
    "snr",
    "isi_violations",
    "presence_ratio",
    "amplitude_cutoff",
    "isolation_distance",
    "l_ratio",
    "d_prime",
    "nn_hit_rate",
    "nn_miss_rate",
    "silhouette_score",
    "max_drift",
    "cumulative_drift",
    "waveform_duration",
    "waveform_halfwidth",
    "duration",
    "halfwidth",
    "PT_ratio",
    "repolarization_slope",
    "recovery_slope",
    "amplitude",
    "spread",
    "velocity_above",
    "velocity_below",
)

# Strings that mean "missing" in string-typed numeric columns (fill_df writes "" and "None").
_MISSING_STRINGS = frozenset({"", "None", "none", "nan", "NaN", "N/A", "null"})


class NwbError(ValueError):
    """The file is not a readable Allen ecephys NWB file. The message names the file."""


# --------------------------------------------------------------------------------------------
# small h5py helpers


def _attr_str(obj: Any, name: str, default: str | None = None) -> str | None:
    v = obj.attrs.get(name, default)
    if v is None:
        return None
    if isinstance(v, bytes):
        return v.decode("utf-8")
    if isinstance(v, np.ndarray) and v.shape == ():
        v = v[()]
        return v.decode("utf-8") if isinstance(v, bytes) else str(v)
    return str(v)


def _attr_list(obj: Any, name: str) -> list[str]:
    v = obj.attrs.get(name)
    if v is None:
        return []
    if isinstance(v, (str, bytes)):
        v = [v]
    return [x.decode("utf-8") if isinstance(x, bytes) else str(x) for x in np.asarray(v).ravel()]


def _column_datasets(g: h5py.Group) -> list[str]:
    """Column names of a DynamicTable without a ``colnames`` attribute: every member except
    ``id`` and the VectorIndex datasets (``<col>_index`` next to ``<col>``)."""
    out = []
    for k in g:
        if k == "id":
            continue
        if k.endswith("_index") and (
            k[: -len("_index")] in g or _attr_str(g[k], "neurodata_type") == "VectorIndex"
        ):
            continue
        out.append(k)
    return out


def _is_string_dtype(dt: np.dtype) -> bool:
    return h5py.check_string_dtype(dt) is not None or dt.kind in ("S", "U", "O")


def read_strings(ds: h5py.Dataset) -> np.ndarray:
    """Read a string dataset (vlen or fixed length) as a 1-D object array of ``str``."""
    if h5py.check_string_dtype(ds.dtype) is not None:
        out = ds.asstr()[()]
    else:
        raw = ds[()]
        out = np.array(
            [x.decode("utf-8") if isinstance(x, bytes) else str(x) for x in np.ravel(raw)],
            dtype=object,
        ).reshape(np.shape(raw))
    return np.asarray(out, dtype=object)


def read_scalar_str(f: h5py.File, path: str) -> str | None:
    if path not in f:
        return None
    v = f[path][()]
    if isinstance(v, np.ndarray):
        v = v.ravel()[0] if v.size else ""
    return v.decode("utf-8") if isinstance(v, bytes) else str(v)


def read_index(ds: h5py.Dataset) -> np.ndarray:
    """Read a VectorIndex (any integer dtype: uint8/16/32/64, int32/64) as int64 end offsets."""
    if ds.dtype.kind not in "iu":
        raise NwbError(f"{ds.file.filename}: {ds.name} has non-integer dtype {ds.dtype}")
    idx = ds[()]
    if idx.dtype == np.uint64 and idx.size and idx.max() > np.iinfo(np.int64).max:
        raise NwbError(f"{ds.file.filename}: {ds.name} holds offsets beyond int64")
    return idx.astype(np.int64, copy=False)


def offsets_from_index(idx: np.ndarray) -> np.ndarray:
    """VectorIndex end offsets (n,) -> start/end offsets (n+1,) starting with 0."""
    out = np.empty(idx.size + 1, dtype=np.int64)
    out[0] = 0
    out[1:] = idx
    return out


def strings_to_float(values: np.ndarray, *, what: str) -> np.ndarray:
    """Missing markers ("", "None", "N/A", "nan") -> NaN; other text parsed with ``float``."""
    out = np.empty(len(values), dtype=np.float64)
    for i, v in enumerate(values):
        if v is None or v in _MISSING_STRINGS:
            out[i] = np.nan
        else:
            try:
                out[i] = float(v)
            except ValueError as e:
                raise NwbError(f"{what}: value {v!r} is not a number") from e
    return out


def _version_tuple(v: str | None) -> tuple[int, ...]:
    if not v:
        return ()
    parts = []
    for p in v.split("."):
        m = re.match(r"\d+", p)
        if not m:
            break
        parts.append(int(m.group()))
        if m.group() != p:  # "0b" etc.: a pre-release, stop here
            break
    return tuple(parts)


# --------------------------------------------------------------------------------------------
# tables returned by the reader (plain numpy columns)


@dataclass
class Probes:
    """One row per probe, in probe-name order (A..F)."""

    probe_id: np.ndarray  # int64
    name: np.ndarray  # object (str)
    sampling_rate: np.ndarray  # float64 (Hz, AP band)
    lfp_sampling_rate: np.ndarray  # float64 (Hz)
    has_lfp_data: np.ndarray  # bool

    def __len__(self) -> int:
        return len(self.probe_id)


@dataclass
class Electrodes:
    """One row per channel (electrodes table row order)."""

    channel_id: np.ndarray  # int64
    probe_id: np.ndarray  # int64
    local_index: np.ndarray  # int64
    probe_vertical_position: np.ndarray  # float64 (µm; NaN = missing)
    probe_horizontal_position: np.ndarray  # float64 (µm; NaN = missing)
    anterior_posterior_ccf_coordinate: np.ndarray  # float64 (µm, NaN if absent)
    dorsal_ventral_ccf_coordinate: np.ndarray
    left_right_ccf_coordinate: np.ndarray
    structure_acronym: np.ndarray  # object: str or None
    valid_data: np.ndarray  # bool

    def __len__(self) -> int:
        return len(self.channel_id)


@dataclass
class UnitsTable:
    """The scalar columns of ``/units`` plus the ragged offsets.

    ``columns`` maps the *stored* column name to a 1-D numpy array (float64 for the metric
    columns, even when stored as fill_df strings; object arrays of ``str`` for text columns).
    """

    unit_id: np.ndarray  # int64
    columns: dict[str, np.ndarray]
    spike_offsets: np.ndarray | None  # int64 (n+1,), or None without spike_times
    waveform_offsets: np.ndarray | None  # int64 (n+1,), rows of waveform_mean per unit
    waveform_shape: tuple[int, ...] | None
    waveform_dtype: np.dtype | None
    skipped_columns: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.unit_id)


@dataclass
class InvalidInterval:
    """One row of ``/intervals/invalid_times``: tags ``[scope, id, label]`` (allen-nwb.md §1.5)."""

    start_time: float
    stop_time: float
    tags: list[str]


# --------------------------------------------------------------------------------------------
# session file


class NwbSession:
    """An open Allen ecephys session NWB file (h5py, read-only).

    Use as a context manager, or call :meth:`close`.
    """

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        if not self.path.is_file():
            raise FileNotFoundError(f"{self.path}: no such file")
        try:
            self.f = h5py.File(self.path, "r")
        except OSError as e:
            raise NwbError(f"{self.path} is not an HDF5 file: {e}") from e
        try:
            self._check()
        except Exception:
            self.f.close()
            raise

    # -- identity ------------------------------------------------------------------------

    def _check(self) -> None:
        f = self.f
        version = _attr_str(f, "nwb_version")
        ntype = _attr_str(f, "neurodata_type")
        if version is None and ntype != "NWBFile":
            raise NwbError(
                f"{self.path} is not an NWB file (no nwb_version attribute and no "
                f"neurodata_type=NWBFile on the root group)"
            )
        if "units" not in f or not isinstance(f["units"], h5py.Group):
            raise NwbError(
                f"{self.path} is not an NWB file (no /units group): an Allen ecephys session "
                f"file needs /units; top-level members are {sorted(f.keys())}"
            )
        self.nwb_version = version or ""
        self.generation = self._detect_generation()

    def _detect_generation(self) -> int:
        f = self.f
        if _version_tuple(self.nwb_version) < GEN2_MIN_VERSION:
            return 1
        intervals = f.get("intervals")
        has_presentations = intervals is not None and any(
            k.endswith("_presentations") for k in intervals
        )
        if intervals is not None and "epochs" in intervals and not has_presentations:
            return 1
        if "general/lab_meta_data/metadata" in f:
            return 1
        return 2

    @property
    def session_id(self) -> int:
        ident = read_scalar_str(self.f, "identifier")
        if ident is None:
            ident = read_scalar_str(self.f, "general/session_id")
        try:
            return int(ident)  # type: ignore[arg-type]
        except (TypeError, ValueError) as e:
            raise NwbError(
                f"{self.path}: /identifier {ident!r} is not an integer session id"
            ) from e

    def close(self) -> None:
        self.f.close()

    def __enter__(self) -> NwbSession:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- probes --------------------------------------------------------------------------

    def probes(self) -> Probes:
        """Probes from the electrode groups (+ devices for Gen-2 sampling rates)."""
        return read_probes(self.f, self.path)

    # -- electrodes ----------------------------------------------------------------------

    def electrodes(self) -> Electrodes:
        return read_electrodes(self.f, self.path)

    # -- units ---------------------------------------------------------------------------

    @property
    def units_group(self) -> h5py.Group:
        return self.f["units"]

    def units(self) -> UnitsTable:
        """Scalar units columns by name (any order), plus ragged offsets (int64)."""
        g = self.units_group
        if "id" not in g:
            raise NwbError(f"{self.path}: /units has no id dataset")
        unit_id = g["id"][()].astype(np.int64)
        n = unit_id.size
        colnames = _attr_list(g, "colnames") or _column_datasets(g)
        columns: dict[str, np.ndarray] = {}
        skipped: list[str] = []
        for name in colnames:
            if name in RAGGED_UNIT_COLUMNS or f"{name}_index" in g or name not in g:
                continue
            ds = g[name]
            if not isinstance(ds, h5py.Dataset) or ds.shape != (n,):
                skipped.append(name)
                continue
            dt = ds.dtype
            if _is_string_dtype(dt):
                vals = read_strings(ds)
                if name in FLOAT_UNIT_COLUMNS:
                    vals = strings_to_float(vals, what=f"{self.path}: units/{name}")
                columns[name] = vals
            elif dt.kind in "iufb":
                columns[name] = ds[()]
            else:  # references, compound
                skipped.append(name)
        spike_offsets = None
        if "spike_times" in g and "spike_times_index" in g:
            spike_offsets = offsets_from_index(read_index(g["spike_times_index"]))
            self._check_offsets(spike_offsets, n, g["spike_times"].shape[0], "spike_times")
            if "spike_amplitudes" in g:
                if "spike_amplitudes_index" in g:
                    a_off = offsets_from_index(read_index(g["spike_amplitudes_index"]))
                    if not np.array_equal(a_off, spike_offsets):
                        raise NwbError(
                            f"{self.path}: spike_amplitudes_index differs from spike_times_index"
                        )
                if g["spike_amplitudes"].shape[0] != g["spike_times"].shape[0]:
                    raise NwbError(f"{self.path}: spike_amplitudes and spike_times lengths differ")
        wf_offsets = wf_shape = wf_dtype = None
        if "waveform_mean" in g:
            wds = g["waveform_mean"]
            wf_shape, wf_dtype = wds.shape, wds.dtype
            if "waveform_mean_index" in g:
                wf_offsets = offsets_from_index(read_index(g["waveform_mean_index"]))
                self._check_offsets(wf_offsets, n, wds.shape[0], "waveform_mean")
            elif wds.ndim == 3 and wds.shape[0] == n:  # non-ragged (n_units, n_ch, n_samples)
                wf_offsets = np.arange(n + 1, dtype=np.int64) * wds.shape[1]
            elif wds.ndim == 2 and wds.shape[0] == n:  # one (peak-channel) row per unit
                wf_offsets = np.arange(n + 1, dtype=np.int64)
        return UnitsTable(
            unit_id=unit_id,
            columns=columns,
            spike_offsets=spike_offsets,
            waveform_offsets=wf_offsets,
            waveform_shape=wf_shape,
            waveform_dtype=wf_dtype,
            skipped_columns=skipped,
        )

    def _check_offsets(self, off: np.ndarray, n: int, total: int, what: str) -> None:
        if off.size != n + 1:
            raise NwbError(f"{self.path}: {what}_index has {off.size - 1} rows, /units has {n}")
        if off[-1] != total or (off.size > 1 and np.any(np.diff(off) < 0)):
            raise NwbError(
                f"{self.path}: {what}_index is not a non-decreasing offset array ending at "
                f"len({what})={total}"
            )

    def read_spike_span(self, start: int, stop: int) -> tuple[np.ndarray, np.ndarray]:
        """One contiguous read of spike_times and spike_amplitudes[start:stop] (float64)."""
        g = self.units_group
        t = _read_1d(g["spike_times"], start, stop, np.float64)
        if "spike_amplitudes" in g:
            a = _read_1d(g["spike_amplitudes"], start, stop, np.float64)
        else:
            a = np.full(stop - start, np.nan)
        return t, a

    def read_waveforms(self) -> np.ndarray:
        """The whole ``waveform_mean`` dataset in its stored dtype, as (rows, n_samples)."""
        ds = self.units_group["waveform_mean"]
        data = ds[()]
        if data.ndim == 3:
            data = data.reshape(-1, data.shape[-1])
        return data

    # -- stimulus presentations -----------------------------------------------------------

    def stimulus_tables(self) -> list[tuple[str, dict[str, np.ndarray], np.ndarray]]:
        """``[(table_name, {column: values}, ids)]``: Gen-2 ``*_presentations`` tables in name
        order, or the Gen-1 ``epochs`` table.  ``tags``/``timeseries`` columns are skipped,
        string columns come back as object arrays of ``str``, numeric ones as stored."""
        iv = self.f.get("intervals")
        if iv is None:
            return []
        names = sorted(k for k in iv if k.endswith("_presentations"))
        if not names and "epochs" in iv:
            names = ["epochs"]
        out = []
        for tname in names:
            g = iv[tname]
            ids = g["id"][()].astype(np.int64) if "id" in g else None
            n = None if ids is None else ids.size
            cols: dict[str, np.ndarray] = {}
            colnames = _attr_list(g, "colnames") or _column_datasets(g)
            for c in colnames:
                if c in ("tags", "timeseries") or f"{c}_index" in g or c not in g:
                    continue
                ds = g[c]
                if not isinstance(ds, h5py.Dataset) or ds.ndim != 1:
                    continue
                if n is not None and ds.shape[0] != n:
                    continue
                if _is_string_dtype(ds.dtype):
                    cols[c] = read_strings(ds)
                elif ds.dtype.kind in "iufb":
                    cols[c] = ds[()]
            if ids is None:
                n = len(next(iter(cols.values()))) if cols else 0
                ids = np.arange(n, dtype=np.int64)
            out.append((tname, cols, ids))
        return out

    # -- invalid times -------------------------------------------------------------------

    def invalid_times(self) -> list[InvalidInterval]:
        """``/intervals/invalid_times`` (allen-nwb.md §1.5) in row order; ``[]`` when absent."""
        g = self.f.get("intervals/invalid_times")
        if g is None:
            return []
        start = g["start_time"][()].astype(np.float64)
        stop = g["stop_time"][()].astype(np.float64)
        if "tags" in g and "tags_index" in g:
            tags = read_strings(g["tags"]).tolist()
            off = offsets_from_index(read_index(g["tags_index"]))
            if off.size != start.size + 1 or off[-1] != len(tags):
                raise NwbError(f"{self.path}: invalid_times tags_index does not match its rows")
            row_tags = [tags[a:b] for a, b in zip(off[:-1], off[1:], strict=True)]
        else:
            row_tags = [[] for _ in range(start.size)]
        return [
            InvalidInterval(float(a), float(b), list(t))
            for a, b, t in zip(start, stop, row_tags, strict=True)
        ]

    # -- running speed -------------------------------------------------------------------

    def running_speed(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(start_time, end_time, velocity) float64; empty arrays when absent."""
        g = self.f.get("processing/running/running_speed")
        empty = np.empty(0, dtype=np.float64)
        if g is None or "data" not in g:
            return empty, empty, empty
        v = g["data"][()].astype(np.float64, copy=False)
        n = v.shape[0]
        ts = g["timestamps"][()] if "timestamps" in g else None
        end_g = self.f.get("processing/running/running_speed_end_times")
        if ts is not None and ts.ndim == 2:  # Gen-1: 2-D timestamps [start; end]
            if ts.shape[0] == 2 and ts.shape[1] == n:
                start, end = ts[0], ts[1]
            elif ts.shape[1] == 2 and ts.shape[0] == n:
                start, end = ts[:, 0], ts[:, 1]
            else:
                raise NwbError(f"{self.path}: running_speed timestamps shape {ts.shape}")
        else:
            if ts is None:
                raise NwbError(f"{self.path}: running_speed has no timestamps")
            start = ts
            if end_g is not None and "timestamps" in end_g:
                end = end_g["timestamps"][()]
            else:
                end = np.full(n, np.nan)
        return (
            np.ascontiguousarray(start, dtype=np.float64),
            np.ascontiguousarray(end, dtype=np.float64),
            np.ascontiguousarray(v),
        )


# --------------------------------------------------------------------------------------------
# probes and electrodes (session and LFP files)


def read_probes(f: h5py.File, path: Path) -> Probes:
    """Probes from the electrode groups (+ devices for Gen-2 sampling rates), one row per probe in
    probe-name order; for session and LFP files alike."""
    ee = f.get("general/extracellular_ephys")
    rows = []
    if ee is not None:
        for gname in ee:
            g = ee.get(gname)
            if not isinstance(g, h5py.Group) or gname == "electrodes":
                continue
            rows.append(_probe_row(f, path, gname, g))
    rows.sort(key=lambda r: (r[1], r[0]))
    return Probes(
        probe_id=np.array([r[0] for r in rows], dtype=np.int64),
        name=np.array([r[1] for r in rows], dtype=object),
        sampling_rate=np.array([r[2] for r in rows], dtype=np.float64),
        lfp_sampling_rate=np.array([r[3] for r in rows], dtype=np.float64),
        has_lfp_data=np.array([r[4] for r in rows], dtype=bool),
    )


def _probe_row(
    f: h5py.File, path: Path, gname: str, g: h5py.Group
) -> tuple[int, str, float, float, bool]:
    a = g.attrs
    if "probe_id" in a:  # Gen-2: group named probeX, id in an attribute
        pid = int(a["probe_id"])
        name = gname
    elif gname.isdigit():  # Gen-1: group named by the probe id, name in description
        pid = int(gname)
        name = _attr_str(g, "description") or gname
    else:
        raise NwbError(f"{path}: electrode group {gname!r} has no probe_id")
    sr = a.get("sampling_rate")
    if sr is None:
        dev = None
        try:
            dev = g.get("device")
        except (KeyError, ValueError):
            dev = None
        if dev is None:
            dev = f.get(f"general/devices/{gname}")
        if dev is not None:
            sr = dev.attrs.get("sampling_rate")
    lfp = a.get("lfp_sampling_rate")
    has = a.get("has_lfp_data")
    return (
        pid,
        name,
        float(sr) if sr is not None else np.nan,
        float(lfp) if lfp is not None else np.nan,
        bool(has) if has is not None else False,
    )


def read_electrodes(f: h5py.File, path: Path) -> Electrodes:
    """The electrodes table (session and LFP files alike), one row per channel in table order."""
    table = "general/extracellular_ephys/electrodes"
    if table not in f:
        raise NwbError(f"{path}: no {table} table")
    g = f[table]
    n = g["id"].shape[0]
    cols = set(g.keys())

    def num(name: str, dtype: type = np.float64) -> np.ndarray:
        if name not in cols:
            return np.full(n, np.nan, dtype=np.float64)
        ds = g[name]
        if _is_string_dtype(ds.dtype):
            return strings_to_float(read_strings(ds), what=f"{path}: electrodes/{name}")
        return ds[()].astype(dtype, copy=False)

    if "local_index" in cols and "probe_channel_number" in cols:
        raise NwbError(f"{path}: electrodes has both 'local_index' and 'probe_channel_number'")
    li_name = "local_index" if "local_index" in cols else "probe_channel_number"
    if li_name not in cols:
        raise NwbError(f"{path}: electrodes has neither 'local_index' nor 'probe_channel_number'")
    if "probe_id" in cols:
        probe_id = g["probe_id"][()].astype(np.int64)
    elif "group_name" in cols:
        names = read_strings(g["group_name"])
        p = read_probes(f, path)
        lut = dict(zip(p.name.tolist(), p.probe_id.tolist(), strict=True))
        probe_id = np.array([lut[x] for x in names], dtype=np.int64)
    else:
        raise NwbError(f"{path}: electrodes has no probe_id column")

    if "location" in cols:  # Gen-2
        acr = read_strings(g["location"])
    elif "manual_structure_acronym" in cols:  # Gen-1
        ds = g["manual_structure_acronym"]
        acr = read_strings(ds) if _is_string_dtype(ds.dtype) else ds[()].astype(object)
    else:
        acr = np.full(n, None, dtype=object)
    acr = np.array(
        [None if (a is None or a in ("", "None") or a != a) else str(a) for a in acr],
        dtype=object,
    )
    valid = g["valid_data"][()].astype(bool) if "valid_data" in cols else np.ones(n, bool)
    return Electrodes(
        channel_id=g["id"][()].astype(np.int64),
        probe_id=probe_id,
        local_index=g[li_name][()].astype(np.int64),
        probe_vertical_position=num("probe_vertical_position"),
        probe_horizontal_position=num("probe_horizontal_position"),
        anterior_posterior_ccf_coordinate=num("x"),
        dorsal_ventral_ccf_coordinate=num("y"),
        left_right_ccf_coordinate=num("z"),
        structure_acronym=acr,
        valid_data=valid,
    )


def _read_1d(ds: h5py.Dataset, start: int, stop: int, dtype: type) -> np.ndarray:
    out = np.empty(stop - start, dtype=ds.dtype)
    if stop > start:
        ds.read_direct(out, np.s_[start:stop], np.s_[0 : stop - start])
    return out.astype(dtype, copy=False)


def open_session(path: str | os.PathLike) -> NwbSession:
    """Open an Allen ecephys session NWB file; raises :class:`NwbError` naming the file."""
    return NwbSession(path)


# --------------------------------------------------------------------------------------------
# LFP file


@dataclass
class LfpInfo:
    path: Path
    probe_id: int
    session_id: int | None
    channel_ids: np.ndarray  # int64, in data column order
    local_index: np.ndarray  # int64
    n_samples: int
    n_channels: int
    data_dtype: np.dtype
    lfp_sampling_rate: float
    first_timestamp: float | None
    last_timestamp: float | None


def open_lfp(path: str | os.PathLike) -> LfpInfo:
    """Metadata of a per-probe LFP NWB (allen-nwb.md §3): probe id, channels, sample count."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    try:
        f = h5py.File(path, "r")
    except OSError as e:
        raise NwbError(f"{path} is not an HDF5 file: {e}") from e
    with f:
        if _attr_str(f, "nwb_version") is None and _attr_str(f, "neurodata_type") != "NWBFile":
            raise NwbError(f"{path} is not an NWB file (no nwb_version attribute)")
        ident = read_scalar_str(f, "identifier")
        acq = f.get("acquisition")
        series = None
        probe_id = None
        if acq is not None:
            for k in sorted(acq):
                m = re.fullmatch(r"probe_(\d+)_lfp", k)
                if m and isinstance(acq[k], h5py.Group):
                    probe_id = int(m.group(1))
                    inner = acq[k].get(f"probe_{probe_id}_lfp_data")
                    if inner is not None:
                        series = inner
                        break
        if series is None:
            raise NwbError(f"{path} is not an LFP NWB file (no /acquisition/probe_<id>_lfp)")
        data = series["data"]
        ts = series.get("timestamps")
        el = f.get("general/extracellular_ephys/electrodes")
        if el is None:
            raise NwbError(f"{path}: no electrodes table")
        li = "local_index" if "local_index" in el else "probe_channel_number"
        lfp_rate = np.nan
        ee = f["general/extracellular_ephys"]
        for gname in ee:
            if gname != "electrodes" and "lfp_sampling_rate" in ee[gname].attrs:
                lfp_rate = float(ee[gname].attrs["lfp_sampling_rate"])
        sid = read_scalar_str(f, "general/session_id")
        n_samples = int(data.shape[0])
        return LfpInfo(
            path=path,
            probe_id=probe_id if probe_id is not None else int(ident),
            session_id=int(sid) if sid and sid.isdigit() else None,
            channel_ids=el["id"][()].astype(np.int64),
            local_index=el[li][()].astype(np.int64) if li in el else np.empty(0, np.int64),
            n_samples=n_samples,
            n_channels=int(data.shape[1]) if data.ndim > 1 else 1,
            data_dtype=data.dtype,
            lfp_sampling_rate=lfp_rate,
            first_timestamp=float(ts[0]) if ts is not None and n_samples else None,
            last_timestamp=float(ts[n_samples - 1]) if ts is not None and n_samples else None,
        )


# ------------------------------------------------------------------------------ verification

_READ_BLOCK = 64 << 20  # bytes per read while checking that a dataset decodes


def _read_through(ds: h5py.Dataset, *, ends_only: bool = False) -> None:
    """Decode ``ds`` (every chunk, or its first and last rows only), a block at a time: a
    corrupt compressed chunk, a truncated file or a broken filter raises here."""
    if ds.shape is None or ds.size == 0:
        return
    if ds.ndim == 0:
        ds[()]
        return
    n = ds.shape[0]
    row_bytes = max(1, ds.dtype.itemsize * int(np.prod(ds.shape[1:], dtype=np.int64)))
    step = max(1, _READ_BLOCK // row_bytes)
    if ds.chunks:
        step = max(ds.chunks[0], step // ds.chunks[0] * ds.chunks[0])
    starts = [0, max(0, n - step)] if ends_only else range(0, n, step)
    for start in starts:
        ds[start : min(n, start + step)]


def file_problem(
    path: str | os.PathLike, session_id: int, probe_id: int | None = None
) -> str | None:
    """None if ``path`` is the session file of ``session_id`` (``probe_id=None``) or the LFP file
    of ``probe_id`` in that session, and it decodes; else one sentence saying what it is instead.

    Identity: the root ``identifier`` is the session id in a session file and the probe id in an
    LFP file (allen-nwb.md §1, §3), and an LFP file's ``session_id``, where present, is the
    session's. Content: every dataset of a session file is decoded end to end (the extraction
    reads nearly all of it); in an LFP file everything but the samples, and the first and last
    blocks of the samples (a whole LFP array takes minutes to decompress). A flipped byte in an
    uncompressed dataset keeps the file valid: only a published digest or a lock file sees it.
    """
    path = Path(path)
    try:
        f = h5py.File(path, "r")
    except OSError as e:
        return f"is not a readable HDF5 file (h5py: {e}); it is probably truncated or corrupt"
    what = "session" if probe_id is None else "LFP"
    want = int(session_id) if probe_id is None else int(probe_id)
    try:
        with f:
            ident = read_scalar_str(f, "identifier")
            if ident is None:
                return "is not an NWB file (no /identifier)"
            if ident.strip() != str(want):
                return (
                    f"is not the {what} file of {'session' if probe_id is None else 'probe'} "
                    f"{want}: its /identifier is {ident!r}"
                )
            if probe_id is not None:
                sid = read_scalar_str(f, "general/session_id")
                if sid is not None and sid.strip() != str(int(session_id)):
                    return (
                        f"is the LFP file of probe {want} but of session {sid!r}, "
                        f"not of session {int(session_id)}"
                    )
            samples = f"acquisition/probe_{want}_lfp/probe_{want}_lfp_data/data"
            datasets: list[tuple[str, h5py.Dataset]] = []
            f.visititems(
                lambda name, obj: (
                    datasets.append((name, obj)) if isinstance(obj, h5py.Dataset) else None
                )
            )
            for name, ds in datasets:
                try:
                    _read_through(ds, ends_only=probe_id is not None and name == samples)
                except (OSError, ValueError, RuntimeError) as e:
                    return f"has a dataset that does not decode (/{name}: {e}); it is corrupt"
    except (OSError, RuntimeError) as e:
        return f"is not a readable NWB file (h5py: {e}); it is probably truncated or corrupt"
    return None
