"""Gen-1 (2019) session file variant (allen-nwb.md §4), written with h5py, and the full-size
benchmark file.

Gen-1 differences reproduced here (for reader tolerance tests): root ``nwb_version="2.0b"`` and
``session_description="EcephysSession"``, no cached spec, no ``object_id`` attributes, ``help``
attributes on typed objects, metadata in ``/general/lab_meta_data/metadata`` (AIBS_ecephys
EcephysLabMetaData), electrode groups and devices named by probe id, an electrodes table with only
``probe_id, valid_data, local_index, probe_vertical_position, probe_horizontal_position,
manual_structure_id`` (strings, ``""`` for none), ``manual_structure_acronym`` (``"None"`` for
none) and ``group``; spike times with invalid ``-1`` spikes and unsorted order; one
``/intervals/epochs`` table; running speed with 2-D ``(2, n)`` timestamps.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from .. import atomic
from . import nwb_writer as g2
from .records import N_CHANNELS, Knobs, build_records, rng_for

STR = h5py.string_dtype()
CORE = "core"


def _attrs(obj: h5py.HLObject, ndt: str, ns: str = CORE, **extra: Any) -> None:
    obj.attrs["namespace"] = ns
    obj.attrs["neurodata_type"] = ndt
    obj.attrs["help"] = f"{ndt} (Gen-1 layout)"
    for k, v in extra.items():
        obj.attrs[k] = v


def _str_ds(parent: h5py.Group, name: str, value: str | list[str]) -> h5py.Dataset:
    if isinstance(value, str):
        return parent.create_dataset(name, data=value, dtype=STR)
    return parent.create_dataset(name, data=np.array(value, dtype=object), dtype=STR)


def _column(
    table: h5py.Group, name: str, data: Any, description: str, dtype: Any = None
) -> h5py.Dataset:
    if dtype is None and isinstance(data, np.ndarray) and data.dtype == object:
        dtype = STR
    ds = table.create_dataset(name, data=data, dtype=dtype)
    _attrs(ds, "VectorData", description=description)
    return ds


def _index(table: h5py.Group, name: str, counts: np.ndarray, target: h5py.Dataset) -> None:
    ds = table.create_dataset(f"{name}_index", data=np.cumsum(counts).astype(np.int64))
    _attrs(ds, "VectorIndex")
    ds.attrs.create("target", target.ref, dtype=h5py.ref_dtype)


def _table(parent: h5py.Group, name: str, ndt: str, ids: np.ndarray, description: str, cols):
    t = parent.create_group(name)
    _attrs(t, ndt, description=description)
    t.attrs["colnames"] = np.array(cols, dtype=object).astype(STR)
    idd = t.create_dataset("id", data=np.asarray(ids, dtype=np.int64))
    _attrs(idd, "ElementIdentifiers")
    return t


def write_gen1_session_nwb(
    path: str | os.PathLike[str],
    seed: int = 0,
    *,
    probes: int = 3,
    units_per_probe: int = 12,
    duration_s: float = 120.0,
    invalid_spikes_per_unit: int = 3,
) -> Path:
    """Write a Gen-1 session NWB at ``path`` (deterministic for a seed) and return the path.

    Its content comes from a one-session synthetic catalogue (same records as ``make_dataset``
    would make for ``sessions=1``), so readers can compare Gen-1 and Gen-2 results.
    """
    path = Path(path)
    knobs = Knobs(sessions=1, probes_per_session=probes, units_per_probe=units_per_probe,
                  duration_s=duration_s)  # fmt: skip
    records = build_records(seed, knobs, realistic=False)
    sid = records["EcephysSession"][0]["id"]
    ctx = g2.session_context(records, seed, knobs, sid)
    s = ctx.session
    donor = s["specimen"]["donor"]
    t0 = g2._start_time(s).isoformat()
    with atomic.output_path(path) as tmp, h5py.File(tmp, "w", track_order=False) as f:
        f.attrs["namespace"] = CORE
        f.attrs["neurodata_type"] = "NWBFile"
        f.attrs["nwb_version"] = "2.0b"
        f.attrs["help"] = "an NWB:N file for storing cellular-based neurophysiology data"
        _str_ds(f, "identifier", str(sid))
        _str_ds(f, "session_description", "EcephysSession")
        _str_ds(f, "session_start_time", t0)
        _str_ds(f, "timestamps_reference_time", t0)
        _str_ds(f, "file_create_date", [g2.FILE_CREATE_DATE.replace(year=2019).isoformat()])
        for grp in ("acquisition", "analysis", "processing", "stimulus/presentation",
                    "stimulus/templates", "general/devices", "general/extracellular_ephys",
                    "intervals"):  # fmt: skip
            f.require_group(grp)
        meta = f.create_group("general/lab_meta_data/metadata")
        _attrs(meta, "EcephysLabMetaData", "AIBS_ecephys",
               specimen_name=s["specimen"]["name"], age_in_days=float(donor["age"]["days"]),
               full_genotype=donor["full_genotype"], strain="C57BL/6J", sex=donor["sex"],
               stimulus_name=s["stimulus_name"])  # fmt: skip
        # probes: device + EcephysProbe electrode group, both named by probe id
        groups = {}
        tabs = []
        for p in ctx.probes:
            name = str(p["id"])
            dev = f["general/devices"].create_group(name)
            _attrs(dev, "Device")
            grp = f["general/extracellular_ephys"].create_group(name)
            _attrs(grp, "EcephysProbe", "AIBS_ecephys", description=p["name"], location="",
                   sampling_rate=float(p["sampling_rate"]),
                   lfp_sampling_rate=float(p["lfp_sampling_rate"]),
                   has_lfp_data=bool(p["use_lfp_data"]))  # fmt: skip
            grp["device"] = h5py.SoftLink(dev.name)
            groups[p["id"]] = grp
            tabs.append((p, g2.probe_channel_table(ctx, p)))
        _write_electrodes(f, ctx, tabs, groups)
        _write_units(f, ctx, tabs, invalid_spikes_per_unit)
        _write_epochs(f, ctx)
        _write_running(f, ctx)
    return path


def _write_electrodes(f: h5py.File, ctx: g2.SessionContext, tabs, groups) -> None:
    ids = np.concatenate([t["id"] for _, t in tabs])
    cols = ["probe_id", "valid_data", "local_index", "probe_vertical_position",
            "probe_horizontal_position", "manual_structure_id", "manual_structure_acronym",
            "group"]  # fmt: skip
    el = _table(f["general/extracellular_ephys"], "electrodes", "DynamicTable", ids,
                "metadata about extracellular electrodes", cols)  # fmt: skip
    acr_to_id = {v: k for k, v in ctx.acronyms.items()}
    probe_id = np.concatenate([np.full(N_CHANNELS, p["id"], np.int64) for p, _ in tabs])
    loc = np.concatenate([t["location"] for _, t in tabs])
    _column(el, "probe_id", probe_id, "probe id")
    _column(el, "valid_data", np.concatenate([t["valid_data"] for _, t in tabs]), "valid data")
    _column(el, "local_index", np.concatenate([t["local_index"] for _, t in tabs]), "local index")
    for c in ("probe_vertical_position", "probe_horizontal_position"):
        _column(el, c, np.concatenate([t[c] for _, t in tabs]), c.replace("_", " "))
    # structure ids "stored as string in nwb 2" ("" for none); acronyms "None" for none
    sid = np.array([str(acr_to_id[a]) if a else "" for a in loc], dtype=object)
    _column(el, "manual_structure_id", sid, "structure id")
    acr = np.array([a if a else "None" for a in loc], dtype=object)
    _column(el, "manual_structure_acronym", acr, "structure acronym")
    refs = np.array([groups[p["id"]].ref for p, _ in tabs for _ in range(N_CHANNELS)],
                    dtype=h5py.ref_dtype)  # fmt: skip
    _column(el, "group", refs, "electrode group", dtype=h5py.ref_dtype)


def _write_units(f: h5py.File, ctx: g2.SessionContext, tabs, n_invalid: int) -> None:
    units = ctx.units
    n = len(units)
    chan = {}
    for p, t in tabs:
        for cid, li in zip(t["id"], t["local_index"], strict=True):
            chan[int(cid)] = (p, int(li))
    names = [c for c, _, _ in g2.UNIT_COLUMNS]
    cols = names + ["spike_times", "spike_amplitudes", "waveform_mean"]
    u = _table(f, "units", "Units", np.array([x["id"] for x in units]),
               "Autogenerated by NWBFile", cols)  # fmt: skip
    local_index = np.zeros(n, np.int64)
    per_probe: dict[int, int] = {}
    for k, x in enumerate(units):
        pid = chan[x["ecephys_channel_id"]][0]["id"]
        local_index[k] = per_probe.get(pid, 0)
        per_probe[pid] = local_index[k] + 1
    for col, wh, desc in g2.UNIT_COLUMNS:
        if col == "peak_channel_id":
            data: Any = np.array([x["ecephys_channel_id"] for x in units], np.int64)
        elif col == "local_index":
            data = local_index
        elif col == "cluster_id":
            data = local_index * 2 + 1
        elif col == "quality":
            data = np.array([x["quality"] for x in units], dtype=object)
        else:
            data = np.array([math.nan if x[wh] is None else x[wh] for x in units], np.float64)
        _column(u, col, data, desc)
    times, amps, counts = [], [], np.zeros(n, np.int64)
    for k, x in enumerate(units):
        t, a = g2.unit_spikes(ctx.seed, x, ctx.knobs.duration_s)
        rng = rng_for(ctx.seed, "gen1-invalid", x["id"])
        # Gen-1: invalid spikes at -1 and unsorted order (allen-nwb.md §0)
        t = np.concatenate([t, np.full(n_invalid, -1.0)])
        a = np.concatenate([a, rng.uniform(1e-5, 1e-4, n_invalid)])
        order = rng.permutation(len(t))
        times.append(t[order])
        amps.append(a[order])
        counts[k] = len(t)
    st = _column(u, "spike_times", np.concatenate(times), "times (s) of detected spiking events")
    _index(u, "spike_times", counts, st)
    sa = _column(u, "spike_amplitudes", np.concatenate(amps), "amplitude (s) of detected spiking events")  # fmt: skip # noqa: E501
    _index(u, "spike_amplitudes", counts, sa)
    peak = np.array([chan[x["ecephys_channel_id"]][1] for x in units])
    sr = np.array([chan[x["ecephys_channel_id"]][0]["sampling_rate"] for x in units])
    wf = g2.unit_waveforms(ctx.seed, units, peak, sr).reshape(n * N_CHANNELS, -1)
    w = _column(u, "waveform_mean", wf, "mean waveforms on peak channels (and over samples)")
    _index(u, "waveform_mean", np.full(n, N_CHANNELS), w)


def _write_epochs(f: h5py.File, ctx: g2.SessionContext) -> None:
    tabs = g2.stimulus_tables(ctx.seed, ctx.session["id"], ctx.session["stimulus_name"],
                              ctx.knobs.duration_s)  # fmt: skip
    keys = sorted({k for t in tabs.values() for k in t})
    rows: dict[str, list[Any]] = {k: [] for k in keys}
    for t in tabs.values():
        n = len(t["start_time"])
        for k in keys:
            rows[k] += list(t[k]) if k in t else [math.nan] * n
    order = np.argsort(np.asarray(rows["start_time"]), kind="stable")
    n = len(order)
    fixed = ["start_time", "stop_time", "tags"]
    params = [k for k in keys if k not in ("start_time", "stop_time")]
    ep = _table(f["intervals"], "epochs", "TimeIntervals", np.arange(n),
                "experimental epochs", fixed + params)  # fmt: skip
    for k in ("start_time", "stop_time"):
        _column(ep, k, np.asarray(rows[k], np.float64)[order], k.replace("_", " "))
    tags = _column(ep, "tags", np.array(["stimulus_epoch"] * n, dtype=object), "tags")
    _index(ep, "tags", np.ones(n, np.int64), tags)
    for k in params:
        vals = [rows[k][i] for i in order]
        if any(isinstance(v, str) for v in vals):
            # mixed str/NaN columns are filled with '' in Gen-1
            data = np.array([v if isinstance(v, str) else "" for v in vals], dtype=object)
        else:
            data = np.asarray(vals, np.float64)
        _column(ep, k, data, k)


def _write_running(f: h5py.File, ctx: g2.SessionContext) -> None:
    rng = rng_for(ctx.seed, "running", ctx.session["id"])
    dt = 1.0 / 60.0
    n = int(ctx.knobs.duration_s / dt) - 1
    start = 0.55 + np.arange(n) * dt
    v = np.clip(5.0 + np.cumsum(rng.normal(0, 0.3, n)) % 20.0, -3.0, 80.0)
    mod = f.create_group("processing/running")
    _attrs(mod, "ProcessingModule", description="running speed data")
    ts = mod.create_group("running_speed")
    _attrs(ts, "TimeSeries", description="no description", comments="no comments")
    d = ts.create_dataset("data", data=v)
    d.attrs["unit"] = "cm/s"
    d.attrs["conversion"] = 1.0
    d.attrs["resolution"] = -1.0
    tsd = ts.create_dataset("timestamps", data=np.stack([start, start + dt]))  # (2, n)
    tsd.attrs["interval"] = 1
    tsd.attrs["unit"] = "seconds"


# ------------------------------------------------------------------------------------------------
# full-size file


def make_full_size_session(
    path: str | os.PathLike[str],
    seed: int = 0,
    *,
    units: int = 850,
    spikes: float = 40e6,
    probes: int = 6,
    index_dtype: str | None = None,
) -> Path:
    """One session file at realistic scale (allen-nwb.md §7) for benchmarks: Gen-2 layout, same
    writer as the small files (so it opens in pynwb and AllenSDK), ``units`` units on ``probes``
    probes and at least ``spikes`` spikes in total (the recording length is chosen to reach it).

    Peak memory is about 3x the spike data (16 B/spike) plus the waveforms (~250 KB/unit), i.e.
    ~2.5 GB for the defaults. Deterministic for a seed.
    """
    path = Path(path)
    if not 1 <= probes <= 6:
        raise ValueError("probes must be in 1..6")
    per_probe = max(1, math.ceil(units / probes))
    knobs = Knobs(sessions=1, probes_per_session=probes, units_per_probe=per_probe,
                  duration_s=9600.0)  # fmt: skip
    records = build_records(seed, knobs, realistic=False)
    sid = records["EcephysSession"][0]["id"]
    # recording length that gives >= `spikes` expected spikes (allen-nwb.md §7: ~9,600-10,000 s
    # typical)
    rate = sum(u["firing_rate"] * (u["presence_ratio"] or 1.0) for u in records["EcephysUnit"])
    duration = max(1000.0, math.ceil(spikes * 1.03 / rate))
    knobs = Knobs(**{**knobs.to_json(), "duration_s": float(duration), "index_dtype": index_dtype})
    ctx = g2.session_context(records, seed, knobs, sid)
    with atomic.output_path(path, suffix=".tmp.nwb") as tmp:
        g2.write_session_nwb(tmp, ctx)
    return path
