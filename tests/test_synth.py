"""The synthetic dataset generator: records, NWB layout (h5py), pynwb and AllenSDK readability,
determinism, knobs, realistic catalogue, Gen-1 variant, CLI. Real files, no mocks."""

from __future__ import annotations

import hashlib
import json
import math
import os
import subprocess
import sys
import textwrap
import warnings
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import pytest

from ecephys_pipeline import synth
from ecephys_pipeline.synth import catalog_real

UNIT_COLUMNS = (
    "peak_channel_id local_index cluster_id quality firing_rate isi_violations presence_ratio "
    "amplitude_cutoff isolation_distance l_ratio d_prime nn_hit_rate nn_miss_rate max_drift "
    "cumulative_drift silhouette_score waveform_duration waveform_halfwidth PT_ratio "
    "repolarization_slope recovery_slope amplitude spread velocity_above velocity_below snr"
).split()
WAREHOUSE_NAME = {"waveform_duration": "duration", "waveform_halfwidth": "halfwidth"}


def _sha(p: Path) -> str:
    return hashlib.sha256(p.read_bytes()).hexdigest()


def _tree_hashes(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): _sha(p)
        for p in sorted(root.rglob("*"))
        if p.is_file() and p.name != "dataset.json"
    }


def _records(ds: Path) -> dict[str, list]:
    return {m: json.loads((ds / "warehouse" / f"{m}.json").read_text()) for m in synth.MODELS}


def _read_nwb(path: Path):
    from pynwb import NWBHDF5IO

    io = NWBHDF5IO(str(path), "r", load_namespaces=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return io, io.read()


# ------------------------------------------------------------------------------------------------
# records


def test_dataset_layout_and_records(synth_dataset):
    ds = synth_dataset
    meta = json.loads((ds / "dataset.json").read_text())
    assert meta["format"] == 1 and meta["seed"] == 0 and meta["realistic"] is False
    rec = _records(ds)
    sessions, probes = rec["EcephysSession"], rec["EcephysProbe"]
    assert len(sessions) == 2
    assert {s["stimulus_name"] for s in sessions} == {
        "brain_observatory_1.1",
        "functional_connectivity",
    }
    for s in sessions:
        assert 715_000_000 <= s["id"] <= 847_000_000
        assert s["published_at"] == "2019-10-03T00:00:00Z"
        assert isinstance(s["fail_eye_tracking"], bool)
        donor = s["specimen"]["donor"]
        assert set(donor) == {"id", "name", "sex", "full_genotype", "age"}
        assert 96 <= donor["age"]["days"] <= 129
    assert len(probes) == 6
    assert all(p["name"] in ("probeA", "probeB", "probeC") for p in probes)
    assert all(29999 < p["sampling_rate"] < 30001 and 1249 < p["lfp_sampling_rate"] < 1251
               for p in probes)  # fmt: skip
    no_lfp = [p for p in probes if not p["use_lfp_data"]]
    assert len(no_lfp) >= 1
    # channels: only valid ones, 358-374 per probe, NP1.0 geometry, structure or null
    chans = pd.DataFrame(rec["EcephysChannel"])
    assert chans["valid_data"].all()
    counts = chans.groupby("ecephys_probe_id").size()
    assert counts.between(358, 374).all()
    assert (
        (chans["id"] - 2 * chans["local_index"])
        .groupby(chans["ecephys_probe_id"])
        .nunique()
        .eq(1)
        .all()
    )
    assert set(chans["probe_horizontal_position"]) == {11, 27, 43, 59}
    assert chans["structure_id"].isna().any() and chans["structure_id"].notna().any()
    struct_ids = {s["id"] for s in rec["Structure"]}
    assert set(chans["structure_id"].dropna().astype(int)) <= struct_ids
    assert {"VISp": 385, "CA1": 382, "grey": 8}.items() >= {
        (s["acronym"], s["id"]) for s in rec["Structure"] if s["acronym"] in ("VISp", "CA1", "grey")
    }
    # units: every default filter fails for a few; some noise; some out of brain
    units = pd.DataFrame(rec["EcephysUnit"])
    assert set(units.columns) == {
        "id", "ecephys_channel_id", "quality", "snr", "firing_rate", "isi_violations",
        "presence_ratio", "amplitude_cutoff", "isolation_distance", "l_ratio", "d_prime",
        "nn_hit_rate", "nn_miss_rate", "silhouette_score", "max_drift", "cumulative_drift",
        "epoch_name_quality_metrics", "epoch_name_waveform_metrics", "duration", "halfwidth",
        "PT_ratio", "repolarization_slope", "recovery_slope", "amplitude", "spread",
        "velocity_above", "velocity_below",
    }  # fmt: skip
    assert units["id"].is_unique and units["id"].between(9.0e8, 9.6e8).all()
    assert (units["quality"] == "noise").sum() >= 2
    assert (units["amplitude_cutoff"] > 0.1).sum() >= 2
    assert (units["presence_ratio"] < 0.95).sum() >= 2
    assert (units["isi_violations"] > 0.5).sum() >= 2
    peak = chans.set_index("id").loc[units["ecephys_channel_id"]]
    assert peak["structure_id"].isna().sum() >= 2
    # WellKnownFiles: one NWB per session, one LFP per probe with use_lfp_data
    wkf = rec["WellKnownFile"]
    nwb = [w for w in wkf if w["well_known_file_type"]["name"] == "EcephysNwb"]
    lfp = [w for w in wkf if w["well_known_file_type"]["name"] == "EcephysLfpNwb"]
    assert sorted(w["attachable_id"] for w in nwb) == sorted(s["id"] for s in sessions)
    assert sorted(w["attachable_id"] for w in lfp) == sorted(
        p["id"] for p in probes if p["use_lfp_data"]
    )
    for w in wkf:
        assert w["download_link"] == f"/api/v2/well_known_file_download/{w['id']}"
        assert w["well_known_file_type_id"] == w["well_known_file_type"]["id"]
    # files: session NWBs, LFP NWBs only for use_lfp_data probes
    for s in sessions:
        assert synth.session_nwb_path(ds, s["id"]).is_file()
    for p in probes:
        path = synth.lfp_nwb_path(ds, p["ecephys_session_id"], p["id"])
        assert path.is_file() == p["use_lfp_data"]
    # spikes in the 1e5 range in total
    total = 0
    for s in sessions:
        with h5py.File(synth.session_nwb_path(ds, s["id"]), "r") as f:
            total += len(f["units/spike_times"])
    assert 5e4 < total < 1e6


def test_s3_objects(synth_dataset):
    s3 = synth_dataset / "s3"
    manifest = json.loads((s3 / "manifest.json").read_text())
    entries = manifest["manifest"]
    assert entries[0] == {"type": "manifest_version", "value": "0.3.0"}
    keys = [e.get("key") for e in entries[1:]]
    assert keys[:5] == ["BASEDIR", "sessions", "probes", "channels", "units"]
    assert {"key": "probe_lfp_nwb", "type": "file", "spec": "probe_%d_lfp.nwb",
            "parent_key": "session_data"} in entries  # fmt: skip
    rec = _records(synth_dataset)
    sessions = pd.read_csv(s3 / "sessions.csv", index_col="id")
    assert list(sessions.columns) == [
        "date_of_acquisition", "isi_experiment_id", "published_at", "specimen_id",
        "session_type", "age_in_days", "sex", "genotype", "has_nwb",
    ]  # fmt: skip
    assert sessions["has_nwb"].all()
    probes = pd.read_csv(s3 / "probes.csv", index_col="id")
    assert list(probes.columns) == [
        "ecephys_session_id", "lfp_sampling_rate", "name", "phase", "sampling_rate", "has_lfp_data",
    ]  # fmt: skip
    assert (~probes["has_lfp_data"]).sum() == sum(
        not p["use_lfp_data"] for p in rec["EcephysProbe"]
    )
    channels = pd.read_csv(s3 / "channels.csv", index_col="id")
    assert list(channels.columns) == [
        "ecephys_probe_id", "local_index", "probe_horizontal_position", "probe_vertical_position",
        "anterior_posterior_ccf_coordinate", "dorsal_ventral_ccf_coordinate",
        "left_right_ccf_coordinate", "ecephys_structure_id", "ecephys_structure_acronym",
    ]  # fmt: skip
    assert len(channels) == len(rec["EcephysChannel"])
    units = pd.read_csv(s3 / "units.csv", index_col="id")
    assert len(units) == len(rec["EcephysUnit"])
    assert "ecephys_channel_id" in units.columns and "l_ratio" in units.columns


# ------------------------------------------------------------------------------------------------
# NWB layout (h5py) and consistency with the records


def test_session_nwb_layout_matches_records(synth_dataset):
    ds = synth_dataset
    rec = _records(ds)
    acr = {s["id"]: s["acronym"] for s in rec["Structure"]}
    chan = {c["id"]: c for c in rec["EcephysChannel"]}
    for s in rec["EcephysSession"]:
        sid = s["id"]
        probes = sorted(
            (p for p in rec["EcephysProbe"] if p["ecephys_session_id"] == sid),
            key=lambda p: p["name"],
        )
        pids = {p["id"] for p in probes}
        units = [
            u
            for u in rec["EcephysUnit"]
            if chan[u["ecephys_channel_id"]]["ecephys_probe_id"] in pids
        ]
        with h5py.File(synth.session_nwb_path(ds, sid), "r") as f:
            assert f.attrs["nwb_version"] == "2.2.2"
            assert f.attrs["neurodata_type"] == "NWBFile" and f.attrs["namespace"] == "core"
            assert f["identifier"][()].decode() == str(sid)
            assert f["general/session_id"][()].decode() == str(sid)
            assert f["general/institution"][()].decode() == "Allen Institute for Brain Science"
            assert f["general/stimulus"][()].decode() == s["stimulus_name"]
            assert "ndx-aibs-ecephys" in f["specifications"]
            assert "0.2.0" in f["specifications/ndx-aibs-ecephys"]
            subj = f["general/subject"]
            assert subj.attrs["neurodata_type"] == "EcephysSpecimen"
            donor = s["specimen"]["donor"]
            assert subj["age"][()].decode() == f"P{donor['age']['days']}D"
            assert subj.attrs["age_in_days"] == donor["age"]["days"]
            assert subj["genotype"][()].decode() == donor["full_genotype"]
            assert subj.attrs["specimen_name"] == s["specimen"]["name"]
            assert "strain" in subj.attrs
            for p in probes:
                dev = f[f"general/devices/{p['name']}"]
                grp = f[f"general/extracellular_ephys/{p['name']}"]
                assert dev.attrs["neurodata_type"] == "EcephysProbe"
                assert dev.attrs["probe_id"] == p["id"]
                assert dev.attrs["sampling_rate"] == p["sampling_rate"]
                assert grp.attrs["neurodata_type"] == "EcephysElectrodeGroup"
                assert grp.attrs["probe_id"] == p["id"]
                assert grp.attrs["lfp_sampling_rate"] == p["lfp_sampling_rate"]
                assert bool(grp.attrs["has_lfp_data"]) == p["use_lfp_data"]
                assert f[grp.name]["device"] == dev
            el = f["general/extracellular_ephys/electrodes"]
            assert el.attrs["neurodata_type"] == "DynamicTable"
            assert el.attrs["namespace"] == "hdmf-common"
            assert list(el.attrs["colnames"]) == [
                "x", "y", "z", "imp", "location", "filtering", "group", "group_name",
                "probe_vertical_position", "probe_horizontal_position", "probe_id",
                "local_index", "valid_data",
            ]  # fmt: skip
            ids = el["id"][:]
            assert len(ids) == 384 * len(probes)
            loc = el["location"].asstr()[:]
            valid = el["valid_data"][:]
            li = el["local_index"][:]
            assert (li.reshape(len(probes), 384) == np.arange(384)).all()
            assert list(el["group_name"].asstr()[::384]) == [p["name"] for p in probes]
            # valid channels == warehouse records (ids, structures, CCF)
            wh = {c["id"]: c for c in rec["EcephysChannel"] if c["ecephys_probe_id"] in pids}
            assert set(ids[valid.astype(bool)]) == set(wh)
            x = el["x"][:]
            for i in np.flatnonzero(valid):
                c = wh[int(ids[i])]
                assert loc[i] == (acr[c["structure_id"]] if c["structure_id"] is not None else "")
                ap = c["anterior_posterior_ccf_coordinate"]
                assert (math.isnan(x[i]) and ap is None) or x[i] == ap
                assert li[i] == c["local_index"]
            # units == warehouse units (order, ids, peak channels, metrics)
            u = f["units"]
            assert u.attrs["neurodata_type"] == "Units"
            assert list(u.attrs["colnames"]) == UNIT_COLUMNS[:3] + [
                "quality", "firing_rate", "snr", "isi_violations", "presence_ratio",
                "amplitude_cutoff", "isolation_distance", "l_ratio", "d_prime", "nn_hit_rate",
                "nn_miss_rate", "silhouette_score", "max_drift", "cumulative_drift",
                "waveform_duration", "waveform_halfwidth", "PT_ratio", "repolarization_slope",
                "recovery_slope", "amplitude", "spread", "velocity_above", "velocity_below",
                "spike_times", "spike_amplitudes", "waveform_mean",
            ]  # fmt: skip
            assert list(u["id"][:]) == [x["id"] for x in units]
            assert list(u["peak_channel_id"][:]) == [x["ecephys_channel_id"] for x in units]
            assert list(u["quality"].asstr()[:]) == [x["quality"] for x in units]
            for col in UNIT_COLUMNS[4:]:
                got = u[col][:]
                want = np.array(
                    [np.nan if x[WAREHOUSE_NAME.get(col, col)] is None
                     else x[WAREHOUSE_NAME.get(col, col)] for x in units],
                    dtype=float,
                )  # fmt: skip
                np.testing.assert_array_equal(got, want, err_msg=col)
            # ragged columns
            n = len(units)
            st_idx = u["spike_times_index"][:].astype(np.int64)
            assert len(st_idx) == n and st_idx[-1] == len(u["spike_times"])
            assert (np.diff(st_idx) >= 0).all()
            np.testing.assert_array_equal(u["spike_amplitudes_index"][:], u["spike_times_index"][:])
            assert (
                u["spike_times"].dtype == np.float64 and u["spike_amplitudes"].dtype == np.float64
            )
            st = u["spike_times"][:]
            for seg in np.split(st, st_idx[:-1]):
                assert (seg >= 0).all() and (np.diff(seg) >= 0).all()
            amps = u["spike_amplitudes"][:]
            assert 1e-6 < np.median(amps) < 1e-3  # volts
            for name in ("spike_times_index", "spike_amplitudes_index", "waveform_mean_index"):
                assert u[name].attrs["neurodata_type"] == "VectorIndex"
                assert f[u[name].attrs["target"]] == u[name.removesuffix("_index")]
            wf = u["waveform_mean"]
            assert wf.shape == (n * 384, 82)
            np.testing.assert_array_equal(u["waveform_mean_index"][:], np.arange(1, n + 1) * 384)
            block = wf[:384]
            assert (block[:, 0] == 0).all()
            peak_li = chan[units[0]["ecephys_channel_id"]]["local_index"]
            assert np.abs(block).max(axis=1).argmax() == peak_li
            assert 20 < -block[peak_li].min() < 1000  # µV
            # stimulus tables, timestamps, running speed
            tabs = [k for k in f["intervals"] if k.endswith("_presentations")]
            assert len(tabs) >= 2
            str_col = num_nan = False
            for k in tabs:
                t = f["intervals"][k]
                assert t.attrs["neurodata_type"] == "TimeIntervals"
                for col in ("start_time", "stop_time", "stimulus_name", "stimulus_block",
                            "stimulus_index", "tags", "tags_index", "timeseries"):  # fmt: skip
                    assert col in t, (k, col)
                assert set(t["stimulus_name"].asstr()[:]) == {k.removesuffix("_presentations")}
                for col in t.attrs["colnames"]:
                    if col in ("tags", "timeseries", "stimulus_name"):
                        continue
                    if t[col].dtype.kind == "O":
                        str_col = True
                    elif t[col].dtype.kind == "f" and col not in (
                        "stimulus_block",
                        "stimulus_index",
                    ):
                        num_nan |= bool(np.isnan(t[col][:]).any())
            assert str_col and num_nan
            ts = f["processing/stimulus/timestamps"]
            assert ts["data"].shape == ts["timestamps"].shape
            run = f["processing/running"]
            n_run = len(run["running_speed/data"])
            assert run["running_speed/timestamps"].shape == (n_run,)
            assert run["running_speed_end_times/timestamps"].shape == (n_run,)
            assert np.isnan(run["running_speed_end_times/data"][:]).all()
            assert "running_wheel_rotation" in run


def test_lfp_nwb_layout(synth_dataset):
    rec = _records(synth_dataset)
    chans = pd.DataFrame(rec["EcephysChannel"])
    p = next(p for p in rec["EcephysProbe"] if p["use_lfp_data"])
    pid = p["id"]
    path = synth.lfp_nwb_path(synth_dataset, p["ecephys_session_id"], pid)
    with h5py.File(path, "r") as f:
        assert f.attrs["nwb_version"] == "2.2.2"
        assert f["identifier"][()].decode() == str(pid)
        assert f["general/session_id"][()].decode() == str(p["ecephys_session_id"])
        es = f[f"acquisition/probe_{pid}_lfp/probe_{pid}_lfp_data"]
        data = es["data"]
        assert data.dtype == np.float32 and data.ndim == 2
        el = f["general/extracellular_ephys/electrodes"]
        assert el.attrs["neurodata_type"] == "DynamicTable"
        ids = el["id"][:]
        assert data.shape[1] == len(ids) == len(es["electrodes"])
        assert es["timestamps"].shape == (data.shape[0],) and es["timestamps"][0] > 0
        assert 1e-6 < np.abs(data[:]).mean() < 1e-3  # volts
        mine = chans[chans["ecephys_probe_id"] == pid].set_index("id")
        assert set(ids) <= set(mine.index)
        assert (mine.loc[ids, "local_index"] % 4 == 2).all()
        assert 80 <= len(ids) <= 96
        csd = f["processing/current_source_density/ecephys_csd"]
        assert csd.attrs["neurodata_type"] == "EcephysCSD"
        assert csd["current_source_density/data"].shape == (875, 384)
        assert csd["virtual_electrode_y_positions"].shape == (384,)


# ------------------------------------------------------------------------------------------------
# pynwb 4.2 reads what we write


def test_pynwb_reads_session_and_lfp(synth_dataset):
    rec = _records(synth_dataset)
    s = rec["EcephysSession"][0]
    io, nwb = _read_nwb(synth.session_nwb_path(synth_dataset, s["id"]))
    with io:
        assert int(nwb.identifier) == s["id"]
        units = nwb.units.to_dataframe()
        assert set(UNIT_COLUMNS) <= set(units.columns)
        for _, row in units.head(10).iterrows():
            st = np.asarray(row["spike_times"])
            assert (np.diff(st) >= 0).all()
            assert np.asarray(row["waveform_mean"]).shape == (384, 82)
            assert len(row["spike_amplitudes"]) == len(st)
        assert set(nwb.electrode_groups) == {
            p["name"] for p in rec["EcephysProbe"] if p["ecephys_session_id"] == s["id"]
        }
        g = nwb.electrode_groups["probeA"]
        assert g.probe_id > 0 and g.device.sampling_rate > 29999
        assert nwb.subject.specimen_name == s["specimen"]["name"]
        pres = [k for k in nwb.intervals if k.endswith("_presentations")]
        assert len(pres) >= 2
    p = next(p for p in rec["EcephysProbe"] if p["use_lfp_data"])
    io, nwb = _read_nwb(synth.lfp_nwb_path(synth_dataset, p["ecephys_session_id"], p["id"]))
    with io:
        es = nwb.get_acquisition(f"probe_{p['id']}_lfp").get_electrical_series(
            f"probe_{p['id']}_lfp_data"
        )
        assert es.data.shape[1] == len(nwb.electrodes)


# ------------------------------------------------------------------------------------------------
# determinism and lazy generation


def test_deterministic_bytes_across_processes(tmp_path, synth_dataset):
    out = tmp_path / "again"
    code = f"from ecephys_pipeline import synth; synth.make_dataset({str(out)!r}, seed=0)"
    subprocess.run([sys.executable, "-c", code], check=True, capture_output=True)
    assert _tree_hashes(out) == _tree_hashes(synth_dataset)
    other = synth.make_dataset(tmp_path / "seed1", seed=1, files="lazy")
    assert json.loads((other / "warehouse/EcephysSession.json").read_text()) != json.loads(
        (synth_dataset / "warehouse/EcephysSession.json").read_text()
    )


def test_lazy_files_equal_eager_and_race(tmp_path, synth_dataset):
    lazy = synth.make_dataset(tmp_path / "lazy", seed=0, files="lazy")
    assert not list((lazy / "files").rglob("*.nwb"))
    rec = _records(lazy)
    sid = rec["EcephysSession"][0]["id"]
    # two processes race to generate the same file; the result is complete and identical
    code = f"from ecephys_pipeline import synth; synth.ensure_session_nwb({str(lazy)!r}, {sid})"
    procs = [subprocess.Popen([sys.executable, "-c", code]) for _ in range(2)]
    assert all(p.wait() == 0 for p in procs)
    path = synth.session_nwb_path(lazy, sid)
    assert _sha(path) == _sha(synth.session_nwb_path(synth_dataset, sid))
    assert oct(path.stat().st_mode & 0o777) == "0o644"
    assert not [p for p in path.parent.iterdir() if p.name.startswith(".")]
    p = next(p for p in rec["EcephysProbe"] if p["use_lfp_data"])
    lfp = synth.ensure_lfp_nwb(lazy, p["id"])
    assert _sha(lfp) == _sha(synth.lfp_nwb_path(synth_dataset, p["ecephys_session_id"], p["id"]))
    no = next(p for p in rec["EcephysProbe"] if not p["use_lfp_data"])
    with pytest.raises(ValueError, match="no LFP"):
        synth.ensure_lfp_nwb(lazy, no["id"])
    with pytest.raises(KeyError):
        synth.ensure_lfp_nwb(lazy, 12345)
    with pytest.raises(KeyError):
        synth.ensure_session_nwb(lazy, 12345)


# ------------------------------------------------------------------------------------------------
# knobs


@pytest.mark.parametrize("dtype", ["uint8", "uint16", "uint32", "uint64", "int64"])
def test_index_dtype_knob(tmp_path, dtype):
    ds = synth.make_dataset(tmp_path / dtype, seed=2, sessions=1, probes_per_session=1,
                            units_per_probe=6, duration_s=30, index_dtype=dtype)  # fmt: skip
    path = synth.session_nwb_path(ds, _records(ds)["EcephysSession"][0]["id"])
    with h5py.File(path, "r") as f:
        u = f["units"]
        for name in ("spike_times_index", "spike_amplitudes_index", "waveform_mean_index"):
            fits = int(u[name][-1]) <= np.iinfo(dtype).max
            assert (u[name].dtype == np.dtype(dtype)) == fits, name
            assert u[name].attrs["neurodata_type"] == "VectorIndex"
            assert f[u[name].attrs["target"]] == u[name.removesuffix("_index")]
        if dtype != "uint8":
            assert u["waveform_mean_index"].dtype == np.dtype(dtype)
        tags = f["intervals/flashes_presentations/tags_index"]
        assert tags.dtype == np.dtype(dtype) or int(tags[-1]) > np.iinfo(dtype).max
        assert f["general/extracellular_ephys/electrodes/local_index"].dtype == np.int64
        st_idx = u["spike_times_index"][:]
    io, nwb = _read_nwb(path)
    with io:
        df = nwb.units.to_dataframe()
        assert len(df.iloc[-1]["spike_times"]) == int(st_idx[-1]) - (
            int(st_idx[-2]) if len(st_idx) > 1 else 0
        )


def test_all_nan_metric_as_str(tmp_path):
    ds = synth.make_dataset(
        tmp_path / "nanstr",
        seed=0,
        sessions=1,
        probes_per_session=1,
        units_per_probe=6,
        duration_s=30,
        all_nan_metric_as_str=True,
    )
    rec = _records(ds)
    assert all(u["silhouette_score"] is None for u in rec["EcephysUnit"])
    with h5py.File(synth.session_nwb_path(ds, rec["EcephysSession"][0]["id"]), "r") as f:
        col = f["units/silhouette_score"]
        assert col.dtype.kind == "O"
        assert set(col.asstr()[:]) == {""}
        assert f["units/d_prime"].dtype == np.float64


def test_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match="files"):
        synth.make_dataset(tmp_path / "x", files="some")
    with pytest.raises(ValueError, match="index_dtype"):
        synth.make_dataset(tmp_path / "x", index_dtype="float32")
    with pytest.raises(ValueError, match="probes_per_session"):
        synth.make_dataset(tmp_path / "x", probes_per_session=7)
    with pytest.raises(FileNotFoundError, match="not a synthetic dataset"):
        synth.ensure_session_nwb(tmp_path / "nothing", 1)


# ------------------------------------------------------------------------------------------------
# realistic catalogue


def test_realistic_catalogue(tmp_path):
    ds = synth.make_dataset(tmp_path / "real", seed=0, realistic=True)
    meta = json.loads((ds / "dataset.json").read_text())
    assert meta["realistic"] is True and meta["files"] == "lazy"
    assert not list((ds / "files").rglob("*.nwb"))
    rec = _records(ds)
    sessions = rec["EcephysSession"]
    assert [s["id"] for s in sessions] == list(catalog_real.SESSION_IDS)
    assert len(sessions) == 58
    assert set(catalog_real.KNOWN_SESSION_IDS) <= {s["id"] for s in sessions}
    types = [s["stimulus_name"] for s in sessions]
    assert (
        types.count("brain_observatory_1.1") == 32 and types.count("functional_connectivity") == 26
    )
    # allen-warehouse.md §5's confirmed list: the 58th id is 759883607 (759228117 is only an
    # AllenSDK test id)
    by_id = {s["id"]: s["stimulus_name"] for s in sessions}
    assert 759228117 not in by_id and by_id[759883607] == "brain_observatory_1.1"
    assert by_id[763673393] == by_id[799864342] == "brain_observatory_1.1"
    assert by_id[766640955] == by_id[774875821] == by_id[839557629] == "functional_connectivity"
    genos = pd.Series([s["specimen"]["donor"]["full_genotype"] for s in sessions]).value_counts()
    assert sorted(genos.tolist()) == [8, 8, 12, 30] and genos["wt/wt"] == 30
    ages = [s["specimen"]["donor"]["age"]["days"] for s in sessions]
    assert min(ages) >= 96 and max(ages) <= 129
    assert {s["published_at"] for s in sessions} == {"2019-10-03T00:00:00Z"}
    s0 = sessions[0]
    assert s0["id"] == 715093703 and s0["specimen_id"] == 699733581
    # the NWB subject_id (DANDI's sub-<id>) is the donor id: sub-699733573 on DANDI 000021
    assert s0["specimen"]["donor"]["id"] == 699733573
    assert s0["specimen"]["donor"]["full_genotype"].startswith("Sst-IRES-Cre")
    probes = pd.DataFrame(rec["EcephysProbe"])
    assert len(probes) == 332 and probes["id"].is_unique
    per = probes.groupby("ecephys_session_id").size()
    assert set(per) == {5, 6} and per[732592105] == 5
    no_lfp = probes[~probes["use_lfp_data"]]
    assert sorted(no_lfp["id"]) == sorted(catalog_real.NO_LFP_PROBE_IDS)
    want = {p: s for s, ps in catalog_real.NO_LFP_PROBES.items() for p in ps}
    assert dict(zip(no_lfp["id"], no_lfp["ecephys_session_id"], strict=True)) == want
    a = probes[probes["ecephys_session_id"] == 715093703].sort_values("name")
    assert list(a["id"]) == [810755797, 810755799, 810755801, 810755803, 810755805, 810755807]
    wkf = pd.DataFrame(rec["WellKnownFile"])
    nwb = wkf[wkf["attachable_type"] == "EcephysSession"].set_index("attachable_id")["id"]
    assert [nwb[s] for s in catalog_real.SESSION_IDS] == list(catalog_real.SESSION_NWB_WKF_IDS)
    assert nwb[791319847] == 1026124645
    lfp = wkf[wkf["attachable_type"] == "EcephysProbe"]
    assert len(lfp) == 325 and not set(lfp["attachable_id"]) & set(catalog_real.NO_LFP_PROBE_IDS)
    assert lfp.set_index("attachable_id").loc[810755797, "id"] == 1026124481
    assert wkf["id"].is_unique
    chans = pd.DataFrame(rec["EcephysChannel"])
    assert chans["id"].is_unique
    assert chans.groupby("ecephys_probe_id").size().between(358, 374).all()
    assert 115_000 < len(chans) < 125_000
    units = pd.DataFrame(rec["EcephysUnit"])
    assert units["id"].is_unique
    # a realistic session file is generated on demand
    path = synth.ensure_session_nwb(ds, 715093703)
    with h5py.File(path, "r") as f:
        assert f["identifier"][()].decode() == "715093703"
        assert f["general/devices/probeA"].attrs["probe_id"] == 810755797
        assert len(f["general/extracellular_ephys/electrodes/id"]) == 6 * 384


# ------------------------------------------------------------------------------------------------
# Gen-1 variant


def test_gen1_layout(synth_gen1_nwb, tmp_path):
    path = synth_gen1_nwb
    again = synth.write_gen1_session_nwb(tmp_path / "again.nwb", seed=0)
    assert _sha(again) == _sha(path)
    with h5py.File(path, "r") as f:
        assert f.attrs["nwb_version"] == "2.0b"
        assert "specifications" not in f and "object_id" not in f.attrs
        assert f["session_description"][()].decode() == "EcephysSession"
        meta = f["general/lab_meta_data/metadata"]
        assert meta.attrs["neurodata_type"] == "EcephysLabMetaData"
        assert meta.attrs["namespace"] == "AIBS_ecephys"
        for k in (
            "specimen_name",
            "age_in_days",
            "full_genotype",
            "strain",
            "sex",
            "stimulus_name",
        ):
            assert k in meta.attrs
        ee = f["general/extracellular_ephys"]
        probe_names = [k for k in ee if k != "electrodes"]
        assert probe_names and all(k.isdigit() for k in probe_names)
        g = ee[probe_names[0]]
        assert g.attrs["neurodata_type"] == "EcephysProbe"
        assert g.attrs["description"].startswith("probe")
        assert f["general/devices"][probe_names[0]].attrs["neurodata_type"] == "Device"
        el = ee["electrodes"]
        assert list(el.attrs["colnames"]) == [
            "probe_id", "valid_data", "local_index", "probe_vertical_position",
            "probe_horizontal_position", "manual_structure_id", "manual_structure_acronym",
            "group",
        ]  # fmt: skip
        for absent in ("x", "location", "group_name", "filtering"):
            assert absent not in el
        assert el["manual_structure_id"].dtype.kind == "O"
        assert "" in set(el["manual_structure_id"].asstr()[:])
        assert "None" in set(el["manual_structure_acronym"].asstr()[:])
        assert f[el["group"][0]] == g
        u = f["units"]
        st = u["spike_times"][:]
        idx = u["spike_times_index"][:]
        assert (st == -1).any()
        segs = np.split(st, idx[:-1])
        assert any((np.diff(s) < 0).any() for s in segs)
        assert len(u["spike_amplitudes"]) == len(st)
        assert u["waveform_mean"].shape == (len(idx) * 384, 82)
        assert list(f["intervals"]) == ["epochs"]
        ep = f["intervals/epochs"]
        assert (np.diff(ep["start_time"][:]) >= 0).all()
        assert set(ep["tags"].asstr()[:]) == {"stimulus_epoch"}
        assert len(set(ep["stimulus_name"].asstr()[:])) >= 3
        assert f["processing/running/running_speed/timestamps"].shape[0] == 2
        assert "running_speed_end_times" not in f["processing/running"]


# ------------------------------------------------------------------------------------------------
# CLI


def test_cli(tmp_path):
    out = tmp_path / "cli"
    r = subprocess.run(
        [sys.executable, "-m", "ecephys_pipeline.synth", "--out", str(out), "--seed", "5",
         "--sessions", "1", "--probes-per-session", "2", "--units-per-probe", "6",
         "--duration", "40", "--index-dtype", "uint32", "--lazy"],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    meta = json.loads((out / "dataset.json").read_text())
    assert meta["seed"] == 5 and meta["params"]["index_dtype"] == "uint32"
    assert meta["params"]["units_per_probe"] == 6 and meta["files"] == "lazy"
    assert len(_records(out)["EcephysProbe"]) == 2
    assert not list((out / "files").rglob("*.nwb"))
    r = subprocess.run(
        [sys.executable, "-m", "ecephys_pipeline.synth", "--out", str(tmp_path / "bad"),
         "--probes-per-session", "9"],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert r.returncode == 2 and "probes_per_session" in r.stderr


# ------------------------------------------------------------------------------------------------
# AllenSDK 2.16.2 oracle

ALLENSDK_SCRIPT = textwrap.dedent(
    """
    import json, sys, warnings
    warnings.simplefilter("ignore")
    import pynwb
    from allensdk.brain_observatory.ecephys.ecephys_session import EcephysSession
    from allensdk.brain_observatory.ecephys.ecephys_session_api import EcephysNwbSessionApi

    session_path, lfp_paths = sys.argv[1], {int(k): v for k, v in json.loads(sys.argv[2]).items()}
    off = {"amplitude_cutoff_maximum": None, "presence_ratio_minimum": None,
           "isi_violations_maximum": None, "filter_by_validity": False,
           "filter_out_of_brain_units": False}
    out = {}
    s = EcephysSession.from_nwb_path(session_path, api_kwargs=off)
    out["session_id"] = int(s.ecephys_session_id)
    out["unit_ids"] = sorted(int(x) for x in s.units.index)
    st = s.spike_times
    out["spike_counts"] = {str(k): len(v) for k, v in st.items()}
    out["sorted"] = all(bool((v[1:] >= v[:-1]).all()) for v in st.values())
    mw = s.mean_waveforms
    out["wf_shapes"] = sorted({tuple(v.shape) for v in mw.values()})
    sp = s.stimulus_presentations
    out["n_presentations"] = len(sp)
    out["stimulus_names"] = sorted(set(sp["stimulus_name"]))
    out["n_running"] = len(s.running_speed)
    out["probes"] = {str(i): bool(r["has_lfp_data"]) for i, r in s.probes.iterrows()}
    out["metadata"] = {k: str(v) for k, v in s.api.get_metadata().items()}
    # LFP the way AllenSDK's cache opens it (read_nwb: NWBHDF5IO(path, "r").read())
    def opener(p):
        def f():
            n = pynwb.NWBHDF5IO(str(p), "r").read()
            n.identifier
            return n
        return f
    api = EcephysNwbSessionApi(path=session_path,
                               probe_lfp_paths={k: opener(v) for k, v in lfp_paths.items()}, **off)
    s2 = EcephysSession(api=api, test=True)
    out["lfp"] = {str(k): [list(s2.get_lfp(k).shape),
                           list(s2.get_current_source_density(k).shape)] for k in lfp_paths}
    # default filters (quality good, metric filters, valid + in-brain peak channel)
    default = EcephysSession.from_nwb_path(session_path).units.index
    out["default_unit_ids"] = sorted(int(x) for x in default)
    print("RESULT " + json.dumps(out))
    """
)


def _allensdk_python() -> str:
    exe = os.environ.get("ALLENSDK_PYTHON") or "/opt/allensdk-venv/bin/python"
    if not Path(exe).exists():
        pytest.skip(f"AllenSDK python not found ({exe}); set ALLENSDK_PYTHON")
    return exe


@pytest.mark.allensdk
def test_allensdk_opens_session_and_lfp(synth_dataset, tmp_path):
    exe = _allensdk_python()
    rec = _records(synth_dataset)
    chan = pd.DataFrame(rec["EcephysChannel"]).set_index("id")
    struct = {s["id"]: s["acronym"] for s in rec["Structure"]}
    s = rec["EcephysSession"][0]
    probes = [p for p in rec["EcephysProbe"] if p["ecephys_session_id"] == s["id"]]
    assert any(not p["use_lfp_data"] for p in probes)
    lfp = {
        str(p["id"]): str(synth.lfp_nwb_path(synth_dataset, s["id"], p["id"]))
        for p in probes
        if p["use_lfp_data"]
    }
    script = tmp_path / "check.py"
    script.write_text(ALLENSDK_SCRIPT)
    r = subprocess.run(
        [exe, str(script), str(synth.session_nwb_path(synth_dataset, s["id"])), json.dumps(lfp)],
        capture_output=True, text=True, check=False, timeout=600,
    )  # fmt: skip
    lines = [x for x in r.stdout.splitlines() if x.startswith("RESULT ")]
    assert r.returncode == 0 and lines, r.stderr[-4000:]
    out = json.loads(lines[-1][len("RESULT ") :])
    pids = {p["id"] for p in probes}
    units = [
        u
        for u in rec["EcephysUnit"]
        if chan.loc[u["ecephys_channel_id"], "ecephys_probe_id"] in pids
    ]
    assert out["session_id"] == s["id"]
    assert out["unit_ids"] == sorted(u["id"] for u in units)
    assert out["sorted"]
    assert out["wf_shapes"] == [[384, 82]]
    assert sum(out["spike_counts"].values()) > 1000
    assert len(out["stimulus_names"]) >= 2 and out["n_presentations"] > 10
    assert out["n_running"] > 1000
    assert out["probes"] == {str(p["id"]): p["use_lfp_data"] for p in probes}
    assert out["metadata"]["stimulus_name"] == s["stimulus_name"]
    assert out["metadata"]["specimen_name"] == s["specimen"]["name"]
    for pid, (lfp_shape, csd_shape) in out["lfp"].items():
        assert lfp_shape[1] >= 80 and csd_shape == [384, 875], pid
    # AllenSDK's default filters select exactly what the records say they should
    want = sorted(
        u["id"]
        for u in units
        if u["quality"] == "good"
        and u["amplitude_cutoff"] <= 0.1
        and u["presence_ratio"] >= 0.95
        and u["isi_violations"] <= 0.5
        and struct.get(chan.loc[u["ecephys_channel_id"], "structure_id"]) is not None
    )
    assert out["default_unit_ids"] == want
    assert len(want) < len(units)


def test_full_size_session_scaled_down(tmp_path):
    """make_full_size_session at a small scale: unit count, spike target, pynwb readability."""
    path = synth.make_full_size_session(
        tmp_path / "full.nwb", seed=1, units=40, spikes=2e5, probes=2
    )
    with h5py.File(path, "r") as f:
        assert len(f["units/id"]) >= 40
        assert len(f["units/spike_times"]) >= 2e5 * 0.95
        assert len(f["general/devices"]) == 2
        assert f.attrs["nwb_version"] == "2.2.2"
    io, nwb = _read_nwb(path)
    with io:
        assert len(nwb.units) >= 40
    again = synth.make_full_size_session(
        tmp_path / "again.nwb", seed=1, units=40, spikes=2e5, probes=2
    )
    assert _sha(again) == _sha(path)
