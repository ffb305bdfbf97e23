"""What the AllenSDK oracle read from one session NWB (tests/oracle/allensdk_oracle.py) compared
with our outputs of the same file: the helpers shared by tests/test_allensdk_oracle.py (synthetic
files) and tests/test_allensdk_writer.py (files written by AllenSDK's own writer). Every
comparison returns readable problem lines (table, column, row id, both values); ``check`` fails
with them.
"""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
from pathlib import Path

import h5py
import numpy as np
import pandas as pd

from ecephys_pipeline import lfp

ORACLE_SCRIPT = Path(__file__).parent / "oracle" / "allensdk_oracle.py"
ORACLE_TIMEOUT_S = 300


def allensdk_python() -> str | None:
    env = os.environ.get("ALLENSDK_PYTHON")
    if env:
        return env
    default = "/opt/allensdk-venv/bin/python"
    return default if Path(default).exists() else None


ALLENSDK_PYTHON = allensdk_python()


SKIP_REASON = (
    "no AllenSDK interpreter: set ALLENSDK_PYTHON (make oracle builds .venv-allensdk) "
    "or install AllenSDK 2.16.2 at /opt/allensdk-venv"
)


def missing(v) -> bool:
    return v is None or (isinstance(v, float) and math.isnan(v))


def same(a, b) -> bool:
    """Exact equality; NaN equals NaN, and None equals NaN (a missing value is missing)."""
    if missing(a) or missing(b):
        return missing(a) and missing(b)
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, bool) or isinstance(b, bool):
        return type(a) is type(b) and a == b
    return a == b


def py(v):
    if isinstance(v, (list, tuple, np.ndarray)):
        return [py(x) for x in v]
    if v is pd.NA or v is pd.NaT:
        return None
    return v.item() if hasattr(v, "item") and not isinstance(v, str) else v


def frame_rows(payload: dict) -> dict:
    """AllenSDK's frame (as the oracle wrote it) -> {row id: {column: value}}."""
    cols = payload["columns"]
    pairs = zip(payload["index"], payload["rows"], strict=True)
    return {i: dict(zip(cols, row, strict=True)) for i, row in pairs}


def dtype_name(dtype) -> str:
    # pandas 3 infers the "str" dtype where pandas 1.5 (AllenSDK's) has object
    name = str(dtype)
    return "object" if name in ("str", "string") else name


def compare_frame(what: str, ours: pd.DataFrame, theirs: dict, *, dtypes: bool = True) -> list:
    """Every difference between our frame and AllenSDK's, as readable lines."""
    problems = []
    if ours.index.name != theirs["index_name"]:
        problems.append(
            f"{what}: index name ours={ours.index.name!r} AllenSDK={theirs['index_name']!r}"
        )
    if list(ours.columns) != theirs["columns"]:
        problems.append(
            f"{what}: columns differ\n  ours    ={list(ours.columns)}"
            f"\n  AllenSDK={theirs['columns']}"
        )
    mine_ids = [py(i) for i in ours.index]
    if mine_ids != theirs["index"]:
        only_ours = sorted(set(mine_ids) - set(theirs["index"]))[:10]
        only_theirs = sorted(set(theirs["index"]) - set(mine_ids))[:10]
        problems.append(
            f"{what}: row ids (or their order) differ: only ours {only_ours}, "
            f"only AllenSDK {only_theirs}"
        )
    if dtypes:
        for col, theirs_dt in theirs["dtypes"].items():
            if col in ours.columns and dtype_name(ours[col].dtype) != theirs_dt:
                problems.append(
                    f"{what}: column {col} dtype ours={ours[col].dtype} AllenSDK={theirs_dt}"
                )
    rows = frame_rows(theirs)
    for rid, row in rows.items():
        if rid not in ours.index:
            continue
        for col, value in row.items():
            if col not in ours.columns:
                continue
            got = py(ours.at[rid, col])
            if not same(got, value):
                problems.append(f"{what}: id {rid} column {col}: ours={got!r} AllenSDK={value!r}")
    return problems


def check(problems: list, limit: int = 25) -> None:
    assert not problems, f"{len(problems)} difference(s) from AllenSDK:\n" + "\n".join(
        problems[:limit]
    )


def start_oracle(out: Path, **sections) -> tuple[subprocess.Popen, Path]:
    """Start tests/oracle/allensdk_oracle.py in AllenSDK's interpreter on a plan."""
    out.mkdir(parents=True)
    plan = out / "plan.json"
    plan.write_text(json.dumps({"out": str(out), **sections}, indent=1))
    log = open(out / "stderr.log", "w")  # noqa: SIM115 - closed in finish_oracle
    proc = subprocess.Popen(
        [ALLENSDK_PYTHON, str(ORACLE_SCRIPT), str(plan)],
        stdout=log, stderr=subprocess.STDOUT, cwd=out,
    )  # fmt: skip
    proc.log = log
    return proc, out


def finish_oracle(started: tuple[subprocess.Popen, Path], timeout: float) -> dict:
    proc, out = started
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        raise AssertionError(f"the AllenSDK oracle took more than {timeout} s") from None
    finally:
        proc.log.close()
    stderr = (out / "stderr.log").read_text()
    assert proc.returncode == 0, f"AllenSDK oracle failed ({proc.returncode}):\n{stderr[-5000:]}"
    return json.loads((out / "result.json").read_text())


def section(run, name: str) -> dict:
    got = run["result"].get(name)
    assert got is not None, f"the oracle did not run its {name!r} section"
    assert "error" not in got, f"AllenSDK failed in the {name!r} section:\n{got['error']}"
    return got


# ------------------------------------------------------------------------------ LFP files


def lfp_file_contents(path: Path, probe_id: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(data, timestamps, electrode ids) of an LFP NWB file, read with h5py."""
    with h5py.File(path, "r") as f:
        series = f[f"acquisition/probe_{probe_id}_lfp/probe_{probe_id}_lfp_data"]
        ids = f["general/extracellular_ephys/electrodes/id"][:]
        return series["data"][:], series["timestamps"][:], ids


def lfp_problems(summary: dict, path: Path, probe_id: int) -> list:
    data, _, ids = lfp_file_contents(path, probe_id)
    problems = []
    if summary["dims"] != ["time", "channel"]:
        problems.append(f"LFP dims {summary['dims']}")
    if summary["shape"] != list(data.shape):
        problems.append(f"LFP {probe_id} shape AllenSDK={summary['shape']} file={data.shape}")
    if summary["channel_ids"] != ids.tolist():
        problems.append(f"LFP {probe_id} channel ids AllenSDK={summary['channel_ids'][:5]}... "
                        f"file={ids.tolist()[:5]}...")  # fmt: skip
    return problems


def lfp_file_problems(got_lfp: dict, arrays: dict, lfp_files: dict) -> list:
    """AllenSDK's get_lfp (unmasked) of every LFP file = the file's data, timestamps, channels."""
    assert set(got_lfp) == set(lfp_files), "every LFP file of the session was opened"
    problems = []
    for pid, path in lfp_files.items():
        problems += lfp_problems(got_lfp[pid], Path(path), int(pid))
        data, times, _ = lfp_file_contents(Path(path), int(pid))
        theirs = arrays[f"lfp_data_{pid}"]
        if theirs.dtype != data.dtype or not np.array_equal(theirs, data):
            problems.append(f"LFP {pid}: AllenSDK's data differ from the file's")
        if not np.array_equal(arrays[f"lfp_time_{pid}"], times):
            problems.append(f"LFP {pid}: AllenSDK's timestamps differ from the file's")
    return problems


def lfp_store_problems(arrays: dict, stores: dict) -> tuple[list, int]:
    """Our Zarr store of every LFP file = AllenSDK's get_lfp(pid), unmasked and masked, value for
    value, time and channel ids. Returns (problems, samples AllenSDK masked)."""
    problems, masked_total = [], 0
    for pid, store in stores.items():
        ours = lfp.open_store(store).lfp
        for mode, key in ((False, "lfp"), (True, "lfp_masked")):
            theirs = arrays[f"{key}_data_{pid}"]
            mine = lfp.get_lfp(store, mask_invalid_intervals=mode)
            if mine.dtype != theirs.dtype or not np.array_equal(
                mine.values, theirs, equal_nan=True
            ):
                diff = int(
                    (~((mine.values == theirs) | (np.isnan(mine.values) & np.isnan(theirs)))).sum()
                )
                problems.append(f"get_lfp({pid}, mask={mode}): {diff} values differ "
                                f"(dtype ours={mine.dtype} AllenSDK={theirs.dtype})")  # fmt: skip
            for coord in ("time", "channel"):
                if not np.array_equal(mine[coord].values, arrays[f"{key}_{coord}_{pid}"]):
                    problems.append(f"get_lfp({pid}, mask={mode}): {coord} coordinate differs")
        masked_total += int(np.isnan(arrays[f"lfp_masked_data_{pid}"]).any(axis=1).sum())
        if list(ours.dims) != ["time", "channel"]:
            problems.append(f"store {pid}: dims {ours.dims}")
    return problems, masked_total


def invalid_times_problems(got_invalid: dict, store) -> list:
    """The store's invalid_times attribute = AllenSDK's session.invalid_times rows."""
    ours = lfp.open_store(store).lfp.attrs["invalid_times"]
    rows = [[i["start_time"], i["stop_time"], i["tags"]] for i in ours]
    if rows != got_invalid["rows"]:
        return [f"invalid_times: ours={rows} AllenSDK={got_invalid['rows']}"]
    return []


def csd_problems(arrays: dict, stores: dict) -> list:
    problems = []
    for pid, store in stores.items():
        csd = lfp.get_current_source_density(store)
        if list(csd.dims) != arrays[f"csd_dims_{pid}"].tolist():
            problems.append(f"CSD {pid}: dims ours={csd.dims} AllenSDK={arrays[f'csd_dims_{pid}']}")
        if not np.array_equal(csd.values, arrays[f"csd_data_{pid}"]):
            problems.append(f"CSD {pid}: values differ")
        for name in ("virtual_channel_index", "time", "vertical_position", "horizontal_position"):
            theirs = arrays[f"csd_{name}_{pid}"]
            if csd[name].dtype != theirs.dtype or not np.array_equal(csd[name].values, theirs):
                problems.append(f"CSD {pid}: {name} ours={csd[name].values[:3]} ({csd[name].dtype})"
                                f" AllenSDK={theirs[:3]} ({theirs.dtype})")  # fmt: skip
    return problems


# ------------------------------------------------------------------------------ session file

# AllenSDK's session.units column -> ours (docs/SCHEMA.md); the waveform_* and L_ratio renames
# are the same on both sides.
UNIT_RENAMES = {
    "structure_acronym": "ecephys_structure_acronym",
    "probe_channel_number": "channel_local_index",
    "probe_description": "probe_name",
}
# AllenSDK columns with no counterpart in our units table (constant per probe in the Allen files)
UNIT_NOT_OURS = {"filtering", "location"}
FILTER_METRICS = ("amplitude_cutoff", "presence_ratio", "isi_violations")


def units_problems(got: dict, ours_units: pd.DataFrame) -> list:
    """Unit ids and every shared column of session.units (filters off) vs our units (by id)."""
    theirs = set(got["index"])
    mine = set(ours_units.index.tolist())
    # AllenSDK cannot switch its metric filters off: a NaN metric fails `<= inf` / `>= -inf`.
    nan_metric = set(ours_units.index[ours_units[list(FILTER_METRICS)].isna().any(axis=1)])
    assert theirs <= mine, f"units only AllenSDK has: {sorted(theirs - mine)[:10]}"
    assert mine - theirs == nan_metric, (
        f"units only we have {sorted(mine - theirs)[:10]}; expected exactly the units with a NaN "
        f"{'/'.join(FILTER_METRICS)}: {sorted(nan_metric)[:10]}"
    )
    renamed = {**got, "columns": [UNIT_RENAMES.get(c, c) for c in got["columns"]]}
    missing_cols = set(renamed["columns"]) - set(ours_units.columns) - UNIT_NOT_OURS
    assert not missing_cols, f"session.units columns we do not have: {sorted(missing_cols)}"
    shared = [c for c in renamed["columns"] if c in ours_units.columns]
    rows = frame_rows(renamed)
    problems = []
    for uid, row in rows.items():
        for col in shared:
            got_v, want = py(ours_units.at[uid, col]), row[col]
            # AllenSDK's int64 probe positions are float64 in our schema: the value counts.
            # A metric stored as vlen strings for the whole session (AllenSDK's fill_df writes
            # ""/"None") reads as that string in AllenSDK and as NaN in ours (docs/SCHEMA.md).
            if want in ("", "None") and ours_units[col].dtype.kind == "f" and missing(got_v):
                continue
            if not same(got_v, want):
                problems.append(f"units: unit {uid} column {col}: ours={got_v!r} AllenSDK={want!r}")
    return problems


def default_units_problems(theirs_ids: list, ours_units: pd.DataFrame) -> list:
    """AllenSDK's default unit set = our passes_default_filters units."""
    theirs = set(theirs_ids)
    mine = set(ours_units.index[ours_units["passes_default_filters"]].tolist())
    if theirs == mine:
        return []
    return [f"default-filtered units: only AllenSDK {sorted(theirs - mine)[:10]}, "
            f"only our passes_default_filters {sorted(mine - theirs)[:10]}"]  # fmt: skip


def spike_problems(arrays: dict, spikes: pd.DataFrame) -> list:
    """Spike times and amplitudes per unit, bit for bit (dtype, order, every value)."""
    groups = {int(u): g for u, g in spikes.groupby("unit_id", sort=False)}
    problems, checked = [], 0
    for key, want in arrays.items():
        if not key.startswith("spike_times_"):
            continue
        uid = int(key.removeprefix("spike_times_"))
        amps = arrays[f"spike_amplitudes_{uid}"]
        g = groups.get(uid)
        times_ours = np.array([], dtype="f8") if g is None else g["spike_time"].to_numpy()
        amps_ours = np.array([], dtype="f8") if g is None else g["spike_amplitude"].to_numpy()
        for what, a, b in (("spike_time", times_ours, want), ("spike_amplitude", amps_ours, amps)):
            if a.shape != b.shape or a.dtype != b.dtype or a.tobytes() != b.tobytes():
                bad = (np.flatnonzero(a.view("u8") != b.view("u8"))[:1].tolist()
                       if a.shape == b.shape and a.dtype == b.dtype else "shape/dtype")  # fmt: skip
                problems.append(f"spikes: unit {uid} {what}: ours n={a.size} {a.dtype}, AllenSDK "
                                f"n={b.size} {b.dtype}, first differing index {bad}")  # fmt: skip
        checked += 1
    assert checked > 0
    extra = set(groups) - {int(k.removeprefix("spike_times_")) for k in arrays
                           if k.startswith("spike_times_")}  # fmt: skip
    if extra:
        problems.append(f"spikes: units with spikes in ours, not in AllenSDK: {sorted(extra)[:10]}")
    return problems


def waveform_problems(arrays: dict, wf: pd.DataFrame) -> list:
    """Every unit's mean waveform in AllenSDK's (channel_id, time) array = our rows per channel."""
    by_unit = {int(u): g for u, g in wf.groupby("unit_id", sort=False)}
    problems, checked = [], 0
    for key in arrays:
        if not key.startswith("waveform_channels_"):
            continue
        uid = int(key.removeprefix("waveform_channels_"))
        channels, data = arrays[key], arrays[f"waveform_{uid}"]
        assert arrays[f"waveform_dims_{uid}"].tolist() == ["channel_id", "time"]
        g = by_unit.get(uid)
        if g is None:
            problems.append(f"waveforms: unit {uid} is in AllenSDK's mean_waveforms, not ours")
            continue
        g = g.dropna(subset=["channel_id"]).set_index("channel_id")
        absent = sorted(set(channels.tolist()) - set(g.index.astype("int64")))
        if absent:
            problems.append(f"waveforms: unit {uid} channels missing in ours: {absent[:5]}")
            continue
        ours = np.stack(g.loc[channels, "waveform"].to_numpy())
        if ours.shape != data.shape or ours.dtype != data.dtype or not np.array_equal(ours, data):
            problems.append(f"waveforms: unit {uid}: ours {ours.shape} {ours.dtype} != AllenSDK "
                            f"{data.shape} {data.dtype}")  # fmt: skip
        checked += 1
    assert checked > 0
    return problems


# AllenSDK 2.16.2's reader takes the `color` values matching this pattern out of `color` (it
# shows null there) into `color_triplet`, which session.stimulus_presentations leaves out
RGB_TRIPLET = re.compile(r"\[(-{0,1}\d*\.\d*,\s*)*(-{0,1}\d*\.\d*)\]")


def _their_param(value):
    """AllenSDK's stimulus table cell -> None for "not applicable" ("null", NaN)."""
    return None if missing(value) or value == "null" else value


def stimulus_problems(sid: int, stim: pd.DataFrame, got: dict) -> list:
    what = f"stimulus_presentations (session {sid})"
    stim = stim.set_index("stimulus_presentation_id")
    if got["index_name"] != "stimulus_presentation_id" or got["index"] != stim.index.tolist():
        return [f"{what}: stimulus_presentation_id values or order differ from AllenSDK's"]
    # AllenSDK adds duration and stimulus_condition_id (derived) and leaves some stored columns
    # out (stimulus_index, units, ...); every column it shows must be ours too.
    derived = {"duration", "stimulus_condition_id"}
    not_ours = sorted(set(got["columns"]) - set(stim.columns) - derived)
    problems = [f"{what}: AllenSDK columns we lack: {not_ours}"] if not_ours else []
    shared = [c for c in got["columns"] if c in stim.columns]
    rows = frame_rows(got)
    for pid, row in rows.items():
        for col in shared:
            mine, theirs = py(stim.at[pid, col]), _their_param(row[col])
            if col in ("start_time", "stop_time"):
                ok = mine == theirs  # exact
            elif col == "color" and theirs is None and RGB_TRIPLET.match(str(mine)):
                ok = True  # AllenSDK moves triplets to a column it hides (color_triplet)
            elif missing(mine) or theirs is None:
                ok = missing(mine) and theirs is None
            elif pd.api.types.is_float_dtype(stim[col].dtype):
                ok = isinstance(theirs, (int, float, str)) and float(theirs) == mine
            else:  # our string columns hold the stored text; AllenSDK literal_evals some (color)
                ok = mine == (theirs if isinstance(theirs, str) else repr(theirs))
            if not ok:
                problems.append(
                    f"{what}: id {pid} column {col}: ours={mine!r} AllenSDK={row[col]!r}"
                )
    ours_duration = stim["stop_time"] - stim["start_time"]
    bad = [p for p in stim.index if rows[p]["duration"] != ours_duration[p]]
    if bad:
        problems.append(f"{what}: AllenSDK duration != our stop_time - start_time, ids {bad[:10]}")
    return problems


def running_problems(got: dict, arrays: dict, ours: pd.DataFrame) -> list:
    """Our running_speed = AllenSDK's session.running_speed, bit for bit, column by column."""
    assert got["running_columns"] == ["start_time", "end_time", "velocity"]
    problems = []
    for col in got["running_columns"]:
        a, b = ours[col].to_numpy(), arrays[f"running_{col}"]
        assert a.dtype == b.dtype and a.shape == b.shape, (col, a.dtype, a.shape, b.dtype, b.shape)
        bad = np.flatnonzero(a.view("u8") != b.view("u8"))
        if bad.size:
            problems.append(
                f"running_speed {col}: {bad.size} rows differ, first row {bad[0]}: "
                f"ours={a[bad[0]]!r} AllenSDK={b[bad[0]]!r}"
            )
    return problems
