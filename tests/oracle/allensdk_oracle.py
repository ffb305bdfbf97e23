"""Ask AllenSDK 2.16.2 what it sees; run BY the AllenSDK interpreter, never imported by pytest.

    <allensdk python> tests/oracle/allensdk_oracle.py PLAN.json

``PLAN.json`` names an output directory ``out`` and any of three sections (each is optional and
runs independently; a failure is recorded as ``{"error": traceback}`` and the others still run):

``warehouse``  {host, manifest, session_id, lfp_probe_id, no_lfp_probe_id}
    ``EcephysProjectCache.from_warehouse`` against a (fake) warehouse: the four tables, the
    session NWB download, one LFP download, and the error for a probe without LFP.
``offline``    {host, manifest, session_id, lfp_probe_id}
    The same cache class opened on a directory written by our workflow, with ``host`` a server
    that must never be asked for anything.
``catalogue``  {host, manifest, session_id, lfp_session_id, lfp_probe_id}
    The realistic (58-session) catalogue: the four tables through the cache (errors recorded),
    one session NWB and one probe's LFP.
``analysis``   {sessions: {session_id: path}, bins: {stimulus_name: [edges]}, default_bins: [edges]}
    ``EcephysSession.from_nwb_path`` (unit filters off) on each file: ``stimulus_conditions``,
    each presentation's condition id, and per stimulus ``presentationwise_spike_counts``,
    ``presentationwise_spike_times`` and ``conditionwise_spike_statistics`` (both ``use_rates``)
    for every unit of ``session.units`` (arrays go to ``out/analysis_arrays.npz``).
``nwb``        {path, lfp: {probe_id: lfp_path}, stimulus_paths: {session_id: path}}
    ``EcephysSession.from_nwb_path`` on one session file, with unit filters off and with
    AllenSDK's defaults (arrays go to ``out/nwb_arrays.npz``), and the stimulus presentations
    of every file in ``stimulus_paths``; for every LFP probe also ``get_lfp`` with masking and
    ``get_current_source_density``.

Everything AllenSDK returned is written to ``out/result.json`` (frames as plain JSON: index,
columns, dtypes, rows; NaN stays NaN) and ``.npz`` arrays: no pickles cross the pandas versions.
"""

import json
import sys
import time
import traceback
import warnings
from functools import partial
from pathlib import Path

warnings.simplefilter("ignore")
import logging  # noqa: E402

logging.disable(logging.WARNING)

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402


def py(value):
    """A JSON-able Python value for one cell (numpy scalars unwrapped, containers recursed)."""
    if isinstance(value, dict):
        return {str(k): py(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, np.ndarray)):
        return [py(v) for v in value]
    if hasattr(value, "item") and not isinstance(value, str):
        return value.item()
    return value


def frame(df: pd.DataFrame) -> dict:
    return {
        "index_name": df.index.name,
        "index": [py(i) for i in df.index],
        "columns": [str(c) for c in df.columns],
        "dtypes": {str(c): str(t) for c, t in df.dtypes.items()},
        "rows": [[py(v) for v in row] for row in df.itertuples(index=False, name=None)],
    }


def lfp_summary(lfp, arrays: dict | None = None, key: str = "") -> dict:
    if arrays is not None:
        arrays[f"lfp_data_{key}"] = np.asarray(lfp.values)
        arrays[f"lfp_time_{key}"] = np.asarray(lfp["time"].values)
        arrays[f"lfp_channel_{key}"] = np.asarray(lfp["channel"].values)
    return {
        "dims": list(lfp.dims),
        "shape": list(lfp.shape),
        "dtype": str(lfp.dtype),
        "channel_ids": [int(c) for c in lfp["channel"].values],
        "n_time": int(lfp["time"].size),
    }


def run_warehouse(spec: dict) -> dict:
    from allensdk.brain_observatory.ecephys.ecephys_project_cache import EcephysProjectCache

    cache = EcephysProjectCache.from_warehouse(
        scheme="http", host=spec["host"], manifest=spec["manifest"], fetch_tries=1, timeout=120
    )
    out = {
        "session_table": frame(cache.get_session_table()),
        "probes": frame(cache.get_probes()),
        "channels": frame(cache.get_channels()),
        "units_default": frame(cache.get_units()),
        "units_unfiltered": frame(
            cache.get_units(
                amplitude_cutoff_maximum=np.inf,
                presence_ratio_minimum=-np.inf,
                isi_violations_maximum=np.inf,
            )
        ),
    }
    session = cache.get_session_data(spec["session_id"])
    out["session_units_default"] = [int(i) for i in session.units.index]
    # the cache's session merges the warehouse's channel columns into the NWB's channels
    out["session_channels"] = frame(session.channels)
    out["lfp"] = lfp_summary(session.get_lfp(spec["lfp_probe_id"], mask_invalid_intervals=False))
    try:
        session.get_lfp(spec["no_lfp_probe_id"], mask_invalid_intervals=False)
        out["no_lfp_error"] = None
    except Exception as exc:  # noqa: BLE001 - the message is what we compare
        out["no_lfp_error"] = f"{type(exc).__name__}: {exc}"
    return out


def run_offline(spec: dict) -> dict:
    from allensdk.brain_observatory.ecephys.ecephys_project_cache import EcephysProjectCache

    cache = EcephysProjectCache.from_warehouse(
        scheme="http", host=spec["host"], manifest=spec["manifest"], fetch_tries=1, timeout=10
    )
    out = {"session_table": frame(cache.get_session_table())}
    session = cache.get_session_data(spec["session_id"])
    out["session_units_default"] = [int(i) for i in session.units.index]
    if spec.get("lfp_probe_id") is not None:
        out["lfp"] = lfp_summary(
            session.get_lfp(spec["lfp_probe_id"], mask_invalid_intervals=False)
        )
    return out


def _attempt(call):
    try:
        return call()
    except Exception as exc:  # noqa: BLE001 - the error is the result
        return {"error": f"{type(exc).__name__}: {exc}"[:2000]}


def run_catalogue(spec: dict) -> dict:
    """The realistic catalogue through the cache: tables, one session, one probe's LFP."""
    from allensdk.brain_observatory.ecephys.ecephys_project_cache import EcephysProjectCache

    cache = EcephysProjectCache.from_warehouse(
        scheme="http", host=spec["host"], manifest=spec["manifest"], fetch_tries=1, timeout=120
    )

    def ids(df):
        return {"index": [py(i) for i in df.index], "unique": bool(df.index.is_unique)}

    out = {
        "session_table": _attempt(lambda: ids(cache.get_session_table())),
        "probes": _attempt(lambda: ids(cache.get_probes())),
        "channels": _attempt(lambda: ids(cache.get_channels())),
        "units": _attempt(lambda: ids(cache.get_units())),
    }

    def session_id(sid):
        return {"ecephys_session_id": int(cache.get_session_data(sid).ecephys_session_id)}

    def lfp(sid, pid):
        session = cache.get_session_data(sid)
        return lfp_summary(session.get_lfp(pid, mask_invalid_intervals=False))

    out["session"] = _attempt(lambda: session_id(spec["session_id"]))
    out["lfp"] = _attempt(lambda: lfp(spec["lfp_session_id"], spec["lfp_probe_id"]))
    return out


def run_nwb(spec: dict, out_dir: Path) -> dict:
    from allensdk.brain_observatory.ecephys.ecephys_project_cache import read_nwb
    from allensdk.brain_observatory.ecephys.ecephys_session import EcephysSession

    lfp_paths = {int(pid): partial(read_nwb, path) for pid, path in spec.get("lfp", {}).items()}
    filters_off = {
        "amplitude_cutoff_maximum": None,  # None -> the filter's "missing" value (+-inf)
        "presence_ratio_minimum": None,
        "isi_violations_maximum": None,
        "filter_by_validity": False,
        "filter_out_of_brain_units": False,
        "probe_lfp_paths": lfp_paths,
    }
    session = EcephysSession.from_nwb_path(spec["path"], api_kwargs=filters_off)
    arrays: dict[str, np.ndarray] = {}
    for uid, times in session.spike_times.items():
        arrays[f"spike_times_{int(uid)}"] = np.asarray(times)
    for uid, amps in session.spike_amplitudes.items():
        arrays[f"spike_amplitudes_{int(uid)}"] = np.asarray(amps)
    for uid, wf in session.mean_waveforms.items():
        arrays[f"waveform_{int(uid)}"] = np.asarray(wf.values)
        arrays[f"waveform_channels_{int(uid)}"] = np.asarray(wf["channel_id"].values)
        arrays[f"waveform_dims_{int(uid)}"] = np.array(wf.dims)
    running = session.running_speed
    for column in running.columns:
        arrays[f"running_{column}"] = running[column].to_numpy()
    out = {
        "units": frame(session.units),
        "stimulus_presentations": frame(session.stimulus_presentations),
        "running_columns": [str(c) for c in running.columns],
        "probes": frame(session.probes),
        "channels": frame(session.channels),
        "lfp": {
            str(pid): lfp_summary(
                session.get_lfp(pid, mask_invalid_intervals=False), arrays, str(pid)
            )
            for pid in lfp_paths
        },
    }
    # masked LFP and CSD, compared with our Zarr stores (issue 16)
    for pid in lfp_paths:
        masked = session.get_lfp(pid, mask_invalid_intervals=True)
        arrays[f"lfp_masked_data_{pid}"] = np.asarray(masked.values)
        arrays[f"lfp_masked_time_{pid}"] = np.asarray(masked["time"].values)
        arrays[f"lfp_masked_channel_{pid}"] = np.asarray(masked["channel"].values)
        csd = session.get_current_source_density(pid)
        arrays[f"csd_dims_{pid}"] = np.array(csd.dims)
        for name in ("virtual_channel_index", "time", "vertical_position", "horizontal_position"):
            arrays[f"csd_{name}_{pid}"] = np.asarray(csd[name].values)
        arrays[f"csd_data_{pid}"] = np.asarray(csd.values)
    out["invalid_times"] = frame(session.invalid_times)
    out["stimulus_by_session"] = {
        str(sid): frame(EcephysSession.from_nwb_path(path).stimulus_presentations)
        for sid, path in spec.get("stimulus_paths", {}).items()
    }
    default = EcephysSession.from_nwb_path(spec["path"])
    out["units_default"] = [int(i) for i in default.units.index]
    np.savez(out_dir / "nwb_arrays.npz", **arrays)
    return out


def run_analysis(spec: dict, out_dir: Path) -> dict:
    from allensdk.brain_observatory.ecephys.ecephys_session import EcephysSession

    filters_off = {
        "amplitude_cutoff_maximum": None,
        "presence_ratio_minimum": None,
        "isi_violations_maximum": None,
        "filter_by_validity": False,
        "filter_out_of_brain_units": False,
    }
    arrays: dict[str, np.ndarray] = {}
    out: dict = {}
    for sid, path in spec["sessions"].items():
        session = EcephysSession.from_nwb_path(path, api_kwargs=filters_off)
        stim = session.stimulus_presentations
        unit_ids = np.sort(session.units.index.values)
        got = {
            "conditions": frame(session.stimulus_conditions),
            "presentation_ids": [int(i) for i in stim.index],
            "presentation_conditions": [int(c) for c in stim["stimulus_condition_id"]],
            "unit_ids": [int(u) for u in unit_ids],
            "stimuli": {},
        }
        arrays[f"{sid}_condition_ids"] = stim["stimulus_condition_id"].to_numpy()
        for name in sorted(stim["stimulus_name"].unique()):
            edges = np.array(spec["bins"].get(name, spec["default_bins"]), dtype=np.float64)
            ids = stim.index[stim["stimulus_name"] == name].values
            key = f"{sid}_{name}"
            counts = session.presentationwise_spike_counts(edges, ids, unit_ids)
            arrays[f"{key}_counts"] = np.asarray(counts.values)  # (presentation, bin, unit)
            times = session.presentationwise_spike_times(ids, unit_ids)
            arrays[f"{key}_times"] = times.index.to_numpy(dtype=np.float64)
            for col in ("stimulus_presentation_id", "unit_id"):
                arrays[f"{key}_times_{col}"] = times[col].to_numpy(dtype=np.int64)
            arrays[f"{key}_times_since_onset"] = times[
                "time_since_stimulus_presentation_onset"
            ].to_numpy(dtype=np.float64)
            got["stimuli"][name] = {
                "presentation_ids": [int(i) for i in ids],
                "statistics": frame(
                    session.conditionwise_spike_statistics(ids, unit_ids).reset_index()
                ),
                "rate_statistics": frame(
                    session.conditionwise_spike_statistics(
                        ids, unit_ids, use_rates=True
                    ).reset_index()
                ),
            }
        out[str(sid)] = got
    np.savez(out_dir / "analysis_arrays.npz", **arrays)
    return out


def main(plan_path: str) -> int:
    plan = json.loads(Path(plan_path).read_text())
    out_dir = Path(plan["out"])
    out_dir.mkdir(parents=True, exist_ok=True)
    import allensdk

    result = {"allensdk_version": allensdk.__version__, "pandas_version": pd.__version__}
    runners = {
        "warehouse": lambda s: run_warehouse(s),
        "offline": lambda s: run_offline(s),
        "nwb": lambda s: run_nwb(s, out_dir),
        "catalogue": lambda s: run_catalogue(s),
        "analysis": lambda s: run_analysis(s, out_dir),
    }
    for name, runner in runners.items():
        if plan.get(name) is None:
            continue
        t0 = time.monotonic()
        try:
            result[name] = runner(plan[name])
        except Exception:  # noqa: BLE001 - reported to the test, which fails with it
            result[name] = {"error": traceback.format_exc()}
        result[name]["seconds"] = round(time.monotonic() - t0, 2)
    (out_dir / "result.json").write_text(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
