"""Gen-2 Allen ecephys NWB writers, session and LFP files (allen-nwb.md §1, §3), for the synthetic
dataset.

Files are written with pynwb and the ndx-aibs-ecephys 0.2.0 extension (``spec/*.yaml``), then
post-edited with h5py so that AllenSDK 2.16.2 can read them like the released 2020 files
(allen-nwb.md §11): the electrodes table is typed ``DynamicTable`` in ``hdmf-common`` and the root
``nwb_version`` is ``"2.2.2"``. Object ids and dates come from the seed, so the same inputs give the
same bytes.
"""

from __future__ import annotations

import hashlib
import uuid
import warnings
from dataclasses import dataclass
from datetime import datetime
from functools import cache
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import h5py
import numpy as np

from .records import N_CHANNELS, Knobs, channel_geometry, rng_for

SPEC_DIR = Path(__file__).parent / "spec"
NAMESPACE = "ndx-aibs-ecephys"
NWB_VERSION = "2.2.2"
PACIFIC = ZoneInfo("America/Los_Angeles")
# Fixed creation date (the Gen-2 re-release was written in spring 2020; exact dates UNCONFIRMED).
FILE_CREATE_DATE = datetime(2020, 5, 27, 12, 0, 0, tzinfo=PACIFIC)
FILTERING = "AP band: 500 Hz high-pass; LFP band: 1000 Hz low-pass"
INSTITUTION = "Allen Institute for Brain Science"
WAVEFORM_SAMPLES = 82
WAVEFORM_PRE = 20
AMPLITUDE_SCALE = 0.195e-6  # volts per bit

# Waveform/metric columns, named as in the NWB units table (AllenSDK 2.16.2 Unit.__init__),
# from the warehouse names (duration/halfwidth -> waveform_duration/waveform_halfwidth).
UNIT_COLUMNS: tuple[tuple[str, str, str], ...] = (
    # (nwb column, warehouse field, description)
    ("peak_channel_id", "", "id of the channel with the largest peak-to-trough amplitude"),
    ("local_index", "", "within-probe unit index"),
    ("cluster_id", "", "Kilosort cluster id on the probe"),
    ("quality", "quality", "label from automated noise rejection"),
    ("firing_rate", "firing_rate", "mean firing rate (Hz)"),
    ("snr", "snr", "signal-to-noise ratio of the mean waveform"),
    ("isi_violations", "isi_violations", "rate of refractory-period violations"),
    ("presence_ratio", "presence_ratio", "fraction of the session in which the unit fired"),
    ("amplitude_cutoff", "amplitude_cutoff", "estimated fraction of missed spikes"),
    ("isolation_distance", "isolation_distance", "Mahalanobis isolation distance"),
    ("l_ratio", "l_ratio", "L-ratio"),
    ("d_prime", "d_prime", "LDA d-prime"),
    ("nn_hit_rate", "nn_hit_rate", "nearest-neighbour hit rate"),
    ("nn_miss_rate", "nn_miss_rate", "nearest-neighbour miss rate"),
    ("silhouette_score", "silhouette_score", "silhouette score"),
    ("max_drift", "max_drift", "maximum drift (um)"),
    ("cumulative_drift", "cumulative_drift", "cumulative drift (um)"),
    ("waveform_duration", "duration", "trough-to-peak duration (ms)"),
    ("waveform_halfwidth", "halfwidth", "spike width at half maximum (ms)"),
    ("PT_ratio", "PT_ratio", "peak-to-trough ratio"),
    ("repolarization_slope", "repolarization_slope", "repolarization slope"),
    ("recovery_slope", "recovery_slope", "recovery slope"),
    ("amplitude", "amplitude", "peak-to-trough amplitude (uV)"),
    ("spread", "spread", "spatial extent of the waveform (um)"),
    ("velocity_above", "velocity_above", "propagation velocity above the peak channel"),
    ("velocity_below", "velocity_below", "propagation velocity below the peak channel"),
)

_STIM_DESCRIPTIONS = {
    "start_time": "Start time of epoch, in seconds",
    "stop_time": "Stop time of epoch, in seconds",
    "stimulus_name": "the name of the stimulus",
    "stimulus_block": "the index of this stimulus block",
    "stimulus_index": "the index of this stimulus within the session",
}


# ------------------------------------------------------------------------------------------------
# extension classes


@cache
def ecephys_classes() -> dict[str, type]:
    """Register the ndx-aibs-ecephys namespace (once) and return its classes."""
    import pynwb

    ns_path = SPEC_DIR / f"{NAMESPACE}.namespace.yaml"
    try:
        pynwb.get_class("EcephysProbe", NAMESPACE)
    except Exception:  # noqa: BLE001 - not loaded yet
        pynwb.load_namespaces(str(ns_path))
    names = (
        "EcephysProbe",
        "EcephysElectrodeGroup",
        "EcephysSpecimen",
        "EcephysEyeTrackingRigMetadata",
        "EcephysCSD",
    )
    return {n: pynwb.get_class(n, NAMESPACE) for n in names}


# ------------------------------------------------------------------------------------------------
# context: the records of one session


@dataclass
class SessionContext:
    seed: int
    knobs: Knobs
    session: dict[str, Any]
    probes: list[dict[str, Any]]  # sorted by name (probeA..)
    channels: dict[int, list[dict[str, Any]]]  # probe id -> valid channel rows, by local_index
    units: list[dict[str, Any]]  # records order
    acronyms: dict[int, str]  # structure id -> acronym


def session_context(
    records: dict[str, list[dict[str, Any]]], seed: int, knobs: Knobs, session_id: int
) -> SessionContext:
    sessions = [s for s in records["EcephysSession"] if s["id"] == session_id]
    if not sessions:
        raise KeyError(f"session {session_id} is not in this synthetic dataset")
    probes = sorted(
        (p for p in records["EcephysProbe"] if p["ecephys_session_id"] == session_id),
        key=lambda p: p["name"],
    )
    pids = {p["id"] for p in probes}
    channels: dict[int, list[dict[str, Any]]] = {pid: [] for pid in pids}
    chan_probe: dict[int, int] = {}
    for c in records["EcephysChannel"]:
        if c["ecephys_probe_id"] in pids:
            channels[c["ecephys_probe_id"]].append(c)
            chan_probe[c["id"]] = c["ecephys_probe_id"]
    for rows in channels.values():
        rows.sort(key=lambda c: c["local_index"])
    units = [u for u in records["EcephysUnit"] if u["ecephys_channel_id"] in chan_probe]
    acronyms = {s["id"]: s["acronym"] for s in records["Structure"]}
    return SessionContext(seed, knobs, sessions[0], probes, channels, units, acronyms)


def probe_channel_table(ctx: SessionContext, probe: dict[str, Any]) -> dict[str, np.ndarray]:
    """All 384 channels of a probe, derived from its valid warehouse rows.

    Invalid channels (not served by the warehouse) take the id ``base + 2*local_index`` and the
    structure/CCF of the nearest valid channel.
    """
    rows = ctx.channels[probe["id"]]
    if not rows:
        raise ValueError(f"probe {probe['id']} has no channels")
    base = rows[0]["id"] - 2 * rows[0]["local_index"]
    li_valid = np.array([r["local_index"] for r in rows])
    li = np.arange(N_CHANNELS)
    nearest = np.abs(li[:, None] - li_valid[None, :]).argmin(axis=1)
    vert, horiz = channel_geometry(li)

    def col(name: str) -> np.ndarray:
        vals = [rows[j][name] for j in nearest]
        return np.array([np.nan if v is None else v for v in vals], dtype=np.float64)

    loc = []
    for j in nearest:
        sid = rows[j]["structure_id"]
        loc.append(ctx.acronyms[sid] if sid is not None else "")
    valid = np.zeros(N_CHANNELS, dtype=bool)
    valid[li_valid] = True
    ids = base + 2 * li
    ids[li_valid] = [r["id"] for r in rows]
    return {
        "id": ids.astype(np.int64),
        "x": col("anterior_posterior_ccf_coordinate"),
        "y": col("dorsal_ventral_ccf_coordinate"),
        "z": col("left_right_ccf_coordinate"),
        "location": np.array(loc, dtype=object),
        "probe_vertical_position": vert.astype(np.int64),
        "probe_horizontal_position": horiz.astype(np.int64),
        "local_index": li.astype(np.int64),
        "valid_data": valid,
    }


# ------------------------------------------------------------------------------------------------
# shared pieces


def _start_time(session: dict[str, Any]) -> datetime:
    utc = datetime.fromisoformat(session["date_of_acquisition"].replace("Z", "+00:00"))
    return utc.astimezone(PACIFIC)


def _add_subject(nwbfile: Any, session: dict[str, Any]) -> None:
    cls = ecephys_classes()
    donor = session["specimen"]["donor"]
    days = int(donor["age"]["days"])
    geno = donor["full_genotype"] or "wt"
    strain = "C57BL/6J" if geno.startswith("wt") else geno.split("/")[0]  # UNCONFIRMED values
    nwbfile.subject = cls["EcephysSpecimen"](
        subject_id=str(donor["id"]),
        age=f"P{days}D",
        sex=donor["sex"],
        species="Mus musculus",
        genotype=geno,
        specimen_name=session["specimen"]["name"],
        age_in_days=float(days),
        strain=strain,
    )


def _add_probe(nwbfile: Any, probe: dict[str, Any]) -> Any:
    cls = ecephys_classes()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "manufacturer" is deprecated in NWB 2.9; kept as in 2020
        device = cls["EcephysProbe"](
            name=probe["name"],
            description="Neuropixels 1.0 Probe",
            manufacturer="imec",
            probe_id=int(probe["id"]),
            sampling_rate=float(probe["sampling_rate"]),
        )
    nwbfile.add_device(device)
    group = cls["EcephysElectrodeGroup"](
        name=probe["name"],
        description="Ecephys Electrode Group",
        location="See electrode locations",
        device=device,
        probe_id=int(probe["id"]),
        lfp_sampling_rate=float(probe["lfp_sampling_rate"]),
        has_lfp_data=bool(probe["use_lfp_data"]),
    )
    nwbfile.add_electrode_group(group)
    return group


_ELECTRODE_EXTRA = (
    ("probe_vertical_position", "Length-wise position of electrode/channel on device (microns)"),
    ("probe_horizontal_position", "Width-wise position of electrode/channel on device (microns)"),
    ("probe_id", "The unique id of this electrode's/channel's device"),
    ("local_index", "The local index of electrode/channel on device"),
    ("valid_data", "Whether data from this electrode/channel is usable"),
)


def _add_electrodes(nwbfile: Any, groups: list[tuple[Any, dict[str, np.ndarray], np.ndarray]]):
    """Set the electrodes table: (group, channel table, row mask) per probe, in probe order.

    Built column-wise (``add_electrode`` is slow and refuses the empty ``location`` that
    out-of-brain channels have in the Allen files).
    """
    from hdmf.common import VectorData
    from pynwb.ecephys import ElectrodesTable

    sel = [(g, t, np.flatnonzero(m)) for g, t, m in groups]

    def cat(key: str) -> np.ndarray:
        return np.concatenate([t[key][i] for _, t, i in sel])

    n = sum(len(i) for _, _, i in sel)
    group_col = [g for g, _, i in sel for _ in range(len(i))]
    cols = {
        "x": (cat("x"), "x coordinate of the channel location in the brain (AP CCF, um)"),
        "y": (cat("y"), "y coordinate of the channel location in the brain (DV CCF, um)"),
        "z": (cat("z"), "z coordinate of the channel location in the brain (LR CCF, um)"),
        "imp": (np.full(n, np.nan), "the impedance of the channel"),
        "location": (
            cat("location"),
            "the location of channel within the subject e.g. brain region",
        ),
        "filtering": (np.array([FILTERING] * n, dtype=object), "description of hardware filtering"),
        "group": (group_col, "a reference to the ElectrodeGroup this electrode is a part of"),
        "group_name": (
            np.array([g.name for g in group_col], dtype=object),
            "the name of the ElectrodeGroup this electrode is a part of",
        ),
    }
    for name, desc in _ELECTRODE_EXTRA:
        if name == "probe_id":
            data = np.concatenate([np.full(len(i), g.probe_id, np.int64) for g, _, i in sel])
        else:
            data = cat(name)
        cols[name] = (data, desc)
    table = ElectrodesTable(
        id=cat("id"),
        columns=[VectorData(name=k, description=d, data=v) for k, (v, d) in cols.items()],
        colnames=list(cols),
    )
    nwbfile.electrodes = table


def _assign_object_ids(nwbfile: Any, key: str) -> None:
    """Replace the random uuid4 object ids by ids derived from ``key`` (deterministic bytes)."""
    for i, obj in enumerate(nwbfile.all_children()):
        h = hashlib.sha256(f"{key}:{i}:{type(obj).__name__}:{obj.name}".encode()).digest()
        oid = str(uuid.UUID(bytes=h[:16], version=4))
        obj._AbstractContainer__object_id = oid  # hdmf has no public setter


def _write(nwbfile: Any, path: Path) -> None:
    from pynwb import NWBHDF5IO

    with warnings.catch_warnings():
        # Expected and harmless here: ragged waveform_mean (predefined non-ragged since NWB 2.3),
        # the extension's strain attribute shadowed by core Subject.strain (fixed in post_edit),
        # the LFP electrodes region created before the LFP container is attached.
        warnings.filterwarnings("ignore", message=".*predefined.*")
        warnings.filterwarnings("ignore", message=".*missing required value for attribute.*")
        warnings.filterwarnings("ignore", message=".*does not share an ancestor.*")
        with NWBHDF5IO(str(path), "w") as io:
            io.write(nwbfile, cache_spec=True)


# electrodes colnames in pynwb 1.x add_electrode order (allen-nwb.md §1.2, order UNCONFIRMED)
ELECTRODE_COLNAMES = (
    "x", "y", "z", "imp", "location", "filtering", "group", "group_name",
    "probe_vertical_position", "probe_horizontal_position", "probe_id", "local_index", "valid_data",
)  # fmt: skip


def post_edit(path: Path, index_dtype: str | None = None) -> None:
    """h5py edits for AllenSDK 2.16.2 / NWB 2.2.2 fidelity (allen-nwb.md §11), optional index
    dtype rewrite.

    ``index_dtype``: every VectorIndex dataset whose values fit that integer type is rewritten to
    it (reader-tolerance tests); one whose values do not fit keeps the type hdmf chose.
    """
    with h5py.File(path, "r+") as f:
        f.attrs["nwb_version"] = NWB_VERSION
        el = f["general/extracellular_ephys/electrodes"]
        el.attrs["neurodata_type"] = "DynamicTable"
        el.attrs["namespace"] = "hdmf-common"
        el.attrs["colnames"] = np.array(
            [c for c in ELECTRODE_COLNAMES if c in el], dtype=h5py.string_dtype()
        )
        subj = f.get("general/subject")
        if subj is not None and "strain" in subj and isinstance(subj["strain"], h5py.Dataset):
            # NWB 2.2.2 core Subject has no strain dataset; the extension's attribute holds it
            strain = subj["strain"][()]
            del subj["strain"]
            subj.attrs["strain"] = strain.decode() if isinstance(strain, bytes) else str(strain)
        if index_dtype is not None:
            dt = np.dtype(index_dtype)
            names: list[str] = []
            f.visititems(
                lambda n, o: (
                    names.append(n)
                    if isinstance(o, h5py.Dataset)
                    and o.attrs.get("neurodata_type") == "VectorIndex"
                    else None
                )
            )
            for n in sorted(names):
                _rewrite_dtype(f, n, dt)


def _rewrite_dtype(f: h5py.File, name: str, dt: np.dtype) -> None:
    ds = f[name]
    data = ds[()]
    if data.size and int(data.max()) > np.iinfo(dt).max:
        return  # keeps hdmf's type (e.g. waveform_mean_index, multiples of 384, never fits uint8)
    attrs = {k: ds.attrs[k] for k in ds.attrs}
    parent = ds.parent
    base = name.rsplit("/", 1)[-1]
    del parent[base]
    new = parent.create_dataset(base, data=data.astype(dt))
    for k, v in attrs.items():
        if k == "target":
            new.attrs.create(k, v, dtype=h5py.ref_dtype)
        else:
            new.attrs[k] = v


# ------------------------------------------------------------------------------------------------
# spikes and waveforms


def unit_spikes(
    seed: int, unit: dict[str, Any], duration_s: float
) -> tuple[np.ndarray, np.ndarray]:
    """Sorted spike times (s, >= 0) and amplitudes (V) of one unit (RNG seeded by seed, unit id)."""
    rng = rng_for(seed, "spikes", unit["id"])
    pr = unit["presence_ratio"] if unit["presence_ratio"] is not None else 1.0
    active = duration_s * max(min(pr, 1.0), 0.05)
    t0 = float(rng.uniform(0.0, duration_s - active)) if active < duration_s else 0.0
    n = int(rng.poisson(unit["firing_rate"] * active))
    times = np.sort(rng.uniform(t0, t0 + active, n))
    amp_uv = unit["amplitude"] if unit["amplitude"] is not None else 100.0
    amps = amp_uv * 1e-6 * rng.lognormal(0.0, 0.2, n)
    return times.astype(np.float64), amps.astype(np.float64)


def unit_waveforms(
    seed: int, units: list[dict[str, Any]], peak_local: np.ndarray, sampling_rate: np.ndarray
) -> np.ndarray:
    """Mean waveforms (n_units, 384, 82) in µV; first sample of every channel is 0."""
    n = len(units)
    out = np.empty((n, N_CHANNELS, WAVEFORM_SAMPLES), dtype=np.float64)
    vert, horiz = channel_geometry(np.arange(N_CHANNELS))
    for k, u in enumerate(units):
        rng = rng_for(seed, "waveform", u["id"])
        t_ms = (np.arange(WAVEFORM_SAMPLES) - WAVEFORM_PRE) / (sampling_rate[k] / 1000.0)
        amp = u["amplitude"] or 100.0
        hw = u["waveform_halfwidth"] if "waveform_halfwidth" in u else u["halfwidth"]
        dur = u["waveform_duration"] if "waveform_duration" in u else u["duration"]
        hw = hw or 0.3
        dur = dur or 0.6
        ptr = u["PT_ratio"] or 0.5
        trough = -np.exp(-0.5 * (t_ms / (hw / 2.355)) ** 2)
        peak = ptr * np.exp(-0.5 * ((t_ms - dur) / 0.25) ** 2)
        shape = amp * (trough + peak) / (1.0 + ptr)
        p = int(peak_local[k])
        dist = np.hypot(vert - vert[p], horiz - horiz[p])
        spread = u["spread"] or 60.0
        w = np.exp(-dist / (spread / 2.0))
        wf = w[:, None] * shape[None, :] + rng.normal(0.0, 1.5, (N_CHANNELS, WAVEFORM_SAMPLES))
        out[k] = wf - wf[:, :1]
    return out


# ------------------------------------------------------------------------------------------------
# stimulus presentations

BO_STIMULI = ("spontaneous", "gabors", "flashes", "drifting_gratings", "natural_scenes")
FC_STIMULI = ("spontaneous", "gabors", "flashes", "drifting_gratings_contrast", "dot_motion")


def stimulus_tables(seed: int, session_id: int, session_type: str, duration_s: float):
    """Presentation tables {stimulus_name: {column: array}} covering ~[1 s, 0.95·duration]."""
    rng = rng_for(seed, "stimulus", session_id)
    names = BO_STIMULI if session_type == "brain_observatory_1.1" else FC_STIMULI
    span = duration_s * 0.95 - 1.0
    # block order: spontaneous, then the others, then spontaneous again between some blocks
    order = ["spontaneous"] + [n for n in names if n != "spontaneous"]
    order = order[:2] + ["spontaneous"] + order[2:]
    seg = span / len(order)
    t = 1.0
    tables: dict[str, dict[str, list[Any]]] = {}
    block = 0
    stim_index = {n: float(i) for i, n in enumerate(names)}
    for name in order:
        tab = tables.setdefault(name, {"start_time": [], "stop_time": []})
        end = t + seg
        starts, stops, params = _presentations(name, t, end, rng)
        tab["start_time"] += starts
        tab["stop_time"] += stops
        tab.setdefault("stimulus_name", []).extend([name] * len(starts))
        blk = float("nan") if name == "spontaneous" else float(block)
        tab.setdefault("stimulus_block", []).extend([blk] * len(starts))
        si = float("nan") if name == "spontaneous" else stim_index[name]
        tab.setdefault("stimulus_index", []).extend([si] * len(starts))
        for k, v in params.items():
            tab.setdefault(k, []).extend(v)
        if name != "spontaneous":
            block += 1
        t = end
    out = {}
    for name in sorted(tables):
        cols = tables[name]
        out[name] = {k: _as_array(v) for k, v in cols.items()}
    return out


def _as_array(v: list[Any]) -> np.ndarray:
    if v and isinstance(v[0], str):
        return np.array(v, dtype=object)
    return np.asarray(v, dtype=np.float64)


def _presentations(name: str, t0: float, t1: float, rng: np.random.Generator):
    params: dict[str, list[Any]] = {}
    if name == "spontaneous":
        return [t0], [t1], params
    on, off = {
        "gabors": (0.25, 0.0),
        "flashes": (0.25, 1.75),
        "drifting_gratings": (2.0, 1.0),
        "drifting_gratings_contrast": (0.5, 0.5),
        "natural_scenes": (0.25, 0.0),
        "dot_motion": (1.0, 0.0),
    }[name]
    starts = list(np.round(np.arange(t0, t1 - on, on + off), 5))
    stops = [round(s + on, 5) for s in starts]
    n = len(starts)
    if name == "gabors":
        params["orientation"] = list(rng.choice([0.0, 45.0, 90.0], n))
        params["x_position"] = list(rng.choice([-40.0, -30.0, -20.0, -10.0, 0.0, 10.0, 20.0], n))
        params["y_position"] = list(rng.choice([-30.0, -20.0, -10.0, 0.0, 10.0, 20.0, 30.0], n))
        params["contrast"] = [0.8] * n
        params["spatial_frequency"] = ["0.08"] * n
        params["temporal_frequency"] = [4.0] * n
        params["phase"] = ["[3644.93333333, 3644.93333333]"] * n
        params["size"] = ["[20.0, 20.0]"] * n
        params["units"] = ["deg"] * n
    elif name == "flashes":
        # a string column in the released files: "-1.0"/"1.0" or an "[r, g, b]" triplet; AllenSDK's
        # get_stimulus_presentations str-matches it (a float column fails there)
        params["color"] = [str(c) for c in rng.choice([-1.0, 1.0], n)]
        params["contrast"] = [0.8] * n
        params["size"] = ["[300.0, 300.0]"] * n
        params["units"] = ["deg"] * n
    elif name in ("drifting_gratings", "drifting_gratings_contrast"):
        blank = rng.random(n) < 0.08
        ori = rng.choice([0.0, 45.0, 90.0, 135.0, 180.0, 225.0, 270.0, 315.0], n)
        params["orientation"] = list(np.where(blank, np.nan, ori))
        if name == "drifting_gratings":
            tf = rng.choice([1.0, 2.0, 4.0, 8.0, 15.0], n)
            params["temporal_frequency"] = list(np.where(blank, np.nan, tf))
            params["contrast"] = [0.8] * n
        else:
            c = rng.choice([0.01, 0.02, 0.04, 0.08, 0.13, 0.2, 0.35, 0.6, 1.0], n)
            params["contrast"] = list(np.where(blank, np.nan, c))
            params["temporal_frequency"] = list(np.where(blank, np.nan, 2.0))
        params["spatial_frequency"] = ["N/A" if b else "0.04" for b in blank]
        params["phase"] = ["N/A" if b else "[42471.86666667, 42471.86666667]" for b in blank]
        params["size"] = ["[250.0, 250.0]"] * n
        params["units"] = ["deg"] * n
    elif name == "natural_scenes":
        params["frame"] = list(rng.integers(-1, 118, n).astype(float))
    elif name == "dot_motion":
        params["Dir"] = list(rng.choice([-45.0, 0.0, 45.0, 90.0, 135.0, 180.0], n))
        params["Speed"] = list(rng.choice([0.001, 0.005, 0.01, 0.02, 0.04], n))
        params["coherence"] = [1.0] * n  # UNCONFIRMED column set for dot_motion
        params["dotLife"] = ["None"] * n
    return starts, stops, params


def _add_stimuli(nwbfile: Any, ctx: SessionContext) -> None:
    from hdmf.common import VectorData, VectorIndex
    from pynwb import TimeSeries
    from pynwb.base import TimeSeriesReference, TimeSeriesReferenceVectorData
    from pynwb.epoch import TimeIntervals

    tabs = stimulus_tables(
        ctx.seed, ctx.session["id"], ctx.session["stimulus_name"], ctx.knobs.duration_s
    )
    all_starts = np.sort(np.concatenate([t["start_time"] for t in tabs.values()]))
    ts = TimeSeries(name="timestamps", data=all_starts, timestamps=all_starts, unit="s")
    mod = nwbfile.create_processing_module("stimulus", "Stimulus Times processing")
    mod.add(ts)
    for name, cols in tabs.items():
        n = len(cols["start_time"])
        idx = np.searchsorted(all_starts, cols["start_time"])
        tags = VectorData(name="tags", description="user-defined tags", data=[
            "stimulus_time_interval"
        ] * n)  # fmt: skip
        tsr = TimeSeriesReferenceVectorData(
            name="timeseries",
            description="index into a TimeSeries object",
            data=[TimeSeriesReference(int(i), 1, ts) for i in idx],
        )
        columns = [
            VectorData(name="start_time", description=_STIM_DESCRIPTIONS["start_time"],
                       data=cols["start_time"]),
            VectorData(name="stop_time", description=_STIM_DESCRIPTIONS["stop_time"],
                       data=cols["stop_time"]),
            tags,
            VectorIndex(name="tags_index", data=np.arange(1, n + 1), target=tags),
            tsr,
            VectorIndex(name="timeseries_index", data=np.arange(1, n + 1), target=tsr),
        ]  # fmt: skip
        colnames = ["start_time", "stop_time", "tags", "timeseries"]
        for k, v in cols.items():
            if k in ("start_time", "stop_time"):
                continue
            columns.append(VectorData(name=k, description=_STIM_DESCRIPTIONS.get(k, k), data=v))
            colnames.append(k)
        nwbfile.add_time_intervals(
            TimeIntervals(
                name=f"{name}_presentations",
                description=f"Presentation times and stimuli details for '{name}' stimuli",
                id=np.arange(n),
                columns=columns,
                colnames=colnames,
            )
        )


def _add_running(nwbfile: Any, ctx: SessionContext) -> None:
    from pynwb import TimeSeries

    rng = rng_for(ctx.seed, "running", ctx.session["id"])
    dur = ctx.knobs.duration_s
    dt = 1.0 / 60.0
    n = int(dur / dt) - 1
    start = 0.55 + np.arange(n) * dt
    end = start + dt
    v = np.convolve(rng.normal(0, 6.0, n + 120), np.ones(120) / 120 * 3.0, mode="valid")[:n]
    v = np.clip(v + 5.0, -3.0, 80.0)
    rot = v * dt / 6.5  # radians for a 6.5 cm wheel radius (UNCONFIRMED radius)
    mod = nwbfile.create_processing_module("running", "running speed data")
    speed = TimeSeries(name="running_speed", data=v, timestamps=start, unit="cm/s")
    mod.add(speed)
    mod.add(
        TimeSeries(
            name="running_speed_end_times",
            data=np.full(n, np.nan),
            timestamps=end,
            unit="cm/s",
        )
    )
    mod.add(TimeSeries(name="running_wheel_rotation", data=rot, timestamps=speed, unit="radians"))
    raw = TimeSeries(name="raw_running_wheel_rotation", data=rot, timestamps=start, unit="radians")
    nwbfile.add_acquisition(raw)
    vsig = 2.5 + np.cumsum(rot) % 5.0 - 2.5
    nwbfile.add_acquisition(
        TimeSeries(name="running_wheel_signal_voltage", data=vsig, timestamps=raw, unit="V")
    )
    nwbfile.add_acquisition(
        TimeSeries(
            name="running_wheel_supply_voltage",
            data=np.full(n, 5.0) + rng.normal(0, 0.001, n),
            timestamps=raw,
            unit="V",
        )
    )


def first_flash_time(ctx: SessionContext) -> float:
    """Start of the session's first flash presentation: the synthetic LFP (a short excerpt of
    the session, unlike the real files, which span it all from ~13.5 s) is placed around it."""
    tabs = stimulus_tables(
        ctx.seed, ctx.session["id"], ctx.session["stimulus_name"], ctx.knobs.duration_s
    )
    return float(tabs["flashes"]["start_time"][0])


# Invalid intervals (s, relative to the first flash) inside every probe's LFP excerpt, which
# covers [flash - 1, flash + 2] at the default 4 s; none tagged "stimulus", so stimulus
# presentations stay unmasked.
INVALID_ALL_PROBES = (-0.9, -0.7)
INVALID_FIRST_LFP_PROBE = (0.5, 1.0)


def _add_invalid_times(nwbfile: Any, ctx: SessionContext) -> None:
    """``/intervals/invalid_times`` (allen-nwb.md §1.5) as AllenSDK's ``add_invalid_times`` writes
    it: one session-wide ``all_probes`` interval and one for the first probe with LFP."""
    sid = str(ctx.session["id"])
    flash = first_flash_time(ctx)
    nwbfile.add_invalid_time_interval(
        start_time=flash + INVALID_ALL_PROBES[0],
        stop_time=flash + INVALID_ALL_PROBES[1],
        tags=["EcephysSession", sid, "all_probes"],
    )
    lfp_probe = next((p for p in ctx.probes if p["use_lfp_data"]), None)
    if lfp_probe is not None:
        nwbfile.add_invalid_time_interval(
            start_time=flash + INVALID_FIRST_LFP_PROBE[0],
            stop_time=flash + INVALID_FIRST_LFP_PROBE[1],
            tags=["EcephysProbe", str(lfp_probe["id"]), lfp_probe["name"]],
        )


def _add_rig_metadata(nwbfile: Any) -> None:
    cls = ecephys_classes()["EcephysEyeTrackingRigMetadata"]
    mod = nwbfile.create_processing_module("eye_tracking_rig_metadata", "Eye tracking rig metadata")
    f32 = np.float32
    mod.add(
        cls(
            name="eye_tracking_rig_metadata",
            equipment="NP.1",
            monitor_position=np.array([170.0, 0.0, 0.0], f32),
            monitor_position__unit="mm",
            camera_position=np.array([130.0, 0.0, 0.0], f32),
            camera_position__unit="mm",
            led_position=np.array([265.1, -39.3, 1.0], f32),
            led_position__unit="mm",
            monitor_rotation=np.array([0.0, 0.0, 0.0], f32),
            monitor_rotation__unit="deg",
            camera_rotation=np.array([0.0, 0.0, 2.8], f32),
            camera_rotation__unit="deg",
        )
    )


# ------------------------------------------------------------------------------------------------
# units table


def _cluster_ids(seed: int, probe_id: int, n: int) -> np.ndarray:
    rng = rng_for(seed, "clusters", probe_id)
    return np.cumsum(rng.integers(1, 4, n)) - 1


def _units_table(ctx: SessionContext, electrode_rows: dict[int, tuple[int, int, float]]):
    """Build the pynwb Units table (scalar columns + the three ragged columns)."""
    from hdmf.common import VectorData, VectorIndex
    from pynwb.misc import Units

    units = ctx.units
    n = len(units)
    # probe of each unit, local index within probe, cluster ids
    probe_of = np.array([electrode_rows[u["ecephys_channel_id"]][0] for u in units], np.int64)
    peak_local = np.array([electrode_rows[u["ecephys_channel_id"]][1] for u in units], np.int64)
    sr = np.array([electrode_rows[u["ecephys_channel_id"]][2] for u in units])
    local_index = np.zeros(n, np.int64)
    cluster_id = np.zeros(n, np.int64)
    for pid in dict.fromkeys(probe_of.tolist()):
        sel = np.flatnonzero(probe_of == pid)
        local_index[sel] = np.arange(len(sel))
        cluster_id[sel] = _cluster_ids(ctx.seed, pid, len(sel))

    columns: list[Any] = []
    colnames: list[str] = []
    for col, wh, desc in UNIT_COLUMNS:
        if col == "peak_channel_id":
            data: Any = np.array([u["ecephys_channel_id"] for u in units], np.int64)
        elif col == "local_index":
            data = local_index
        elif col == "cluster_id":
            data = cluster_id
        elif col == "quality":
            data = np.array([u["quality"] for u in units], dtype=object)
        else:
            vals = np.array([np.nan if u[wh] is None else u[wh] for u in units], np.float64)
            if n and np.isnan(vals).all():
                # fill_df quirk (allen-nwb.md §1.3): an all-NaN column is written as empty strings
                data = np.array([""] * n, dtype=object)
            else:
                data = vals
        columns.append(VectorData(name=col, description=desc, data=data))
        colnames.append(col)

    dur = ctx.knobs.duration_s
    times, amps, counts = [], [], np.zeros(n, np.int64)
    for k, u in enumerate(units):
        t, a = unit_spikes(ctx.seed, u, dur)
        times.append(t)
        amps.append(a)
        counts[k] = len(t)
    st = np.concatenate(times) if times else np.zeros(0)
    sa = np.concatenate(amps) if amps else np.zeros(0)
    cum = np.cumsum(counts)
    wf = unit_waveforms(ctx.seed, units, peak_local, sr).reshape(n * N_CHANNELS, WAVEFORM_SAMPLES)
    wf_idx = np.arange(1, n + 1, dtype=np.int64) * N_CHANNELS
    ragged = (
        ("spike_times", "times (s) of detected spiking events", st, cum),
        ("spike_amplitudes", "amplitude (s) of detected spiking events", sa, cum),
        ("waveform_mean", "mean waveforms on peak channels (and over samples)", wf, wf_idx),
    )
    for name, desc, data, idx in ragged:
        vd = VectorData(name=name, description=desc, data=data)
        columns += [vd, VectorIndex(name=f"{name}_index", data=idx, target=vd)]
        colnames.append(name)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        table = Units(
            name="units",
            description="Autogenerated by NWBFile",
            id=np.array([u["id"] for u in units], np.int64),
            columns=columns,
            colnames=colnames,
        )
    return table


# ------------------------------------------------------------------------------------------------
# files


def write_session_nwb(path: Path, ctx: SessionContext) -> None:
    """Write the Gen-2 session file for ``ctx`` at ``path`` (then post-edit it)."""
    from pynwb import NWBFile

    s = ctx.session
    sid = int(s["id"])
    t0 = _start_time(s)
    nwbfile = NWBFile(
        session_description="Data and metadata for an Ecephys session",
        identifier=str(sid),
        session_id=str(sid),
        session_start_time=t0,
        timestamps_reference_time=t0,
        file_create_date=[FILE_CREATE_DATE],
        institution=INSTITUTION,
        stimulus_notes=s["stimulus_name"],
    )
    _add_subject(nwbfile, s)
    groups = []
    electrode_rows: dict[int, tuple[int, int, float]] = {}
    for p in ctx.probes:
        g = _add_probe(nwbfile, p)
        tab = probe_channel_table(ctx, p)
        groups.append((g, tab, np.ones(N_CHANNELS, dtype=bool)))
        for cid, li in zip(tab["id"], tab["local_index"], strict=True):
            electrode_rows[int(cid)] = (int(p["id"]), int(li), float(p["sampling_rate"]))
    _add_electrodes(nwbfile, groups)
    nwbfile.units = _units_table(ctx, electrode_rows)
    _add_stimuli(nwbfile, ctx)
    _add_running(nwbfile, ctx)
    _add_invalid_times(nwbfile, ctx)
    _add_rig_metadata(nwbfile)
    _assign_object_ids(nwbfile, f"{ctx.seed}:session:{sid}")
    _write(nwbfile, path)
    post_edit(path, ctx.knobs.index_dtype)


def lfp_channel_mask(tab: dict[str, np.ndarray]) -> np.ndarray:
    """LFP channels: every 4th channel (local_index % 4 == 2) among valid ones (allen-nwb.md §3)."""
    return (tab["local_index"] % 4 == 2) & tab["valid_data"]


def write_lfp_nwb(path: Path, ctx: SessionContext, probe_id: int) -> None:
    """Write the Gen-2 LFP file of one probe: ``lfp_duration_s`` seconds starting 1-2 s before the
    session's first flash (see :func:`first_flash_time`), and a CSD."""
    from pynwb import NWBFile, TimeSeries
    from pynwb.ecephys import LFP

    probe = next((p for p in ctx.probes if p["id"] == probe_id), None)
    if probe is None:
        raise KeyError(f"probe {probe_id} is not in session {ctx.session['id']}")
    if not probe["use_lfp_data"]:
        raise ValueError(f"probe {probe_id} has no LFP data (use_lfp_data is false)")
    s = ctx.session
    t0 = _start_time(s)
    nwbfile = NWBFile(
        session_description="LFP data and associated channel info for a single Ecephys probe",
        identifier=str(probe_id),
        session_id=str(s["id"]),
        session_start_time=t0,
        timestamps_reference_time=t0,
        file_create_date=[FILE_CREATE_DATE],
        institution=INSTITUTION,
    )
    _add_subject(nwbfile, s)
    g = _add_probe(nwbfile, probe)
    tab = probe_channel_table(ctx, probe)
    mask = lfp_channel_mask(tab)
    _add_electrodes(nwbfile, [(g, tab, mask)])
    n_ch = int(mask.sum())
    rng = rng_for(ctx.seed, "lfp", probe_id)
    fs = float(probe["lfp_sampling_rate"])
    n = int(ctx.knobs.lfp_duration_s * fs)
    t_start = first_flash_time(ctx) - 2.0 + float(rng.uniform(0, 1))
    ts = t_start + np.arange(n) / fs
    # correlated slow waves + noise, in volts (int16 * 0.195 µV)
    slow = np.sin(2 * np.pi * 4.0 * ts)[:, None] * np.linspace(50, 200, n_ch)[None, :]
    raw = np.round((slow + rng.normal(0, 30, (n, n_ch))) / 0.195)
    data = (raw * AMPLITUDE_SCALE).astype(np.float32)
    from hdmf.backends.hdf5 import H5DataIO

    region = nwbfile.create_electrode_table_region(
        region=list(range(n_ch)), description=f"lfp channels on probe {probe_id}"
    )
    lfp = LFP(name=f"probe_{probe_id}_lfp")
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*does not share an ancestor.*")
        es = lfp.create_electrical_series(
            name=f"probe_{probe_id}_lfp_data",
            data=H5DataIO(data, compression="gzip", compression_opts=9),
            timestamps=H5DataIO(ts, compression="gzip", compression_opts=9),
            electrodes=region,
        )
    nwbfile.add_acquisition(es)
    nwbfile.add_acquisition(lfp)
    # CSD: (875 time, 384 virtual channels) at 2500 Hz from -0.1 s
    csd_t = -0.1 + np.arange(875) / 2500.0
    depth = np.arange(384) * 10.0
    csd = np.sin(2 * np.pi * depth[None, :] / 800.0) * np.exp(
        -(((csd_t[:, None] - 0.05) / 0.03) ** 2)
    ) * 1e3 + rng.normal(0, 5.0, (875, 384))
    mod = nwbfile.create_processing_module(
        "current_source_density",
        "Precalculated current source density from interpolated channel locations.",
    )
    csd_ts = TimeSeries(name="current_source_density", data=csd, timestamps=csd_t, unit="V/cm^2")
    mod.add(
        ecephys_classes()["EcephysCSD"](
            name="ecephys_csd",
            time_series=csd_ts,
            virtual_electrode_x_positions=np.full(384, 24.0, np.float32),
            virtual_electrode_x_positions__unit="um",
            virtual_electrode_y_positions=depth.astype(np.float32),
            virtual_electrode_y_positions__unit="um",
        )
    )
    _assign_object_ids(nwbfile, f"{ctx.seed}:lfp:{probe_id}")
    _write(nwbfile, path)
    post_edit(path, None)
