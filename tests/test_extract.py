"""extract: synthetic Allen-layout NWB files -> Parquet, checked value by value.

The reference values come from plain h5py reads written here (one unit at a time, the simple
way), from pandas joins of the stored tables, and (``-m allensdk``) from AllenSDK 2.16.2 itself.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from ecephys_pipeline import synth
from ecephys_pipeline.extract import (
    DATASETS,
    SCHEMAS,
    STIMULUS_SCHEMA,
    extract_session,
)
from ecephys_pipeline.nwb import NwbError, open_lfp, open_session, read_index

REPO = Path(__file__).resolve().parents[1]
ALLENSDK_PYTHON = os.environ.get("ALLENSDK_PYTHON", "/opt/allensdk-venv/bin/python")
RENAMES = {
    "l_ratio": "L_ratio",
    "PT_ratio": "waveform_PT_ratio",
    "amplitude": "waveform_amplitude",
    "recovery_slope": "waveform_recovery_slope",
    "repolarization_slope": "waveform_repolarization_slope",
    "spread": "waveform_spread",
    "velocity_above": "waveform_velocity_above",
    "velocity_below": "waveform_velocity_below",
}
UNIT_FIELDS_FROM_CHANNEL = {
    "local_index": "channel_local_index",
    "probe_vertical_position": "probe_vertical_position",
    "probe_horizontal_position": "probe_horizontal_position",
    "x": "anterior_posterior_ccf_coordinate",
    "y": "dorsal_ventral_ccf_coordinate",
    "z": "left_right_ccf_coordinate",
    "valid_data": "valid_data",
}


# ------------------------------------------------------------------------------------ fixtures


@pytest.fixture(scope="session")
def dataset(tmp_path_factory) -> Path:
    return synth.make_dataset(tmp_path_factory.mktemp("synth") / "ds", seed=0, sessions=2)


@pytest.fixture(scope="session")
def nwb_files(dataset) -> list[Path]:
    files = sorted((dataset / "files").glob("session_*/session_*.nwb"))
    assert len(files) == 2
    return files


@pytest.fixture(scope="session")
def extracted(nwb_files, tmp_path_factory) -> tuple[Path, list[dict]]:
    out = tmp_path_factory.mktemp("parquet") / "parquet"
    results = [extract_session(p, out) for p in nwb_files]
    return out, results


@pytest.fixture(scope="session")
def filtered(nwb_files, tmp_path_factory) -> tuple[Path, list[dict]]:
    out = tmp_path_factory.mktemp("parquet_f") / "parquet"
    results = [extract_session(p, out, unit_filters={}) for p in nwb_files]  # AllenSDK defaults
    return out, results


# ------------------------------------------------------------------- reference (simple) reads


def _str(ds) -> np.ndarray:
    return np.array(ds.asstr()[()], dtype=object)


def ref_session(path: Path) -> dict:
    """Everything the checks need, read the obvious way with h5py (per unit, by index)."""
    with h5py.File(path, "r") as f:
        u = f["units"]
        ids = u["id"][()]
        end = [int(x) for x in u["spike_times_index"][()]]
        st, sa = u["spike_times"][()], u["spike_amplitudes"][()]
        wend = [int(x) for x in u["waveform_mean_index"][()]]
        wf = u["waveform_mean"][()]
        spikes, waves = {}, {}
        start = wstart = 0
        for i, uid in enumerate(ids):
            spikes[int(uid)] = (st[start : end[i]], sa[start : end[i]])
            waves[int(uid)] = wf[wstart : wend[i]]
            start, wstart = end[i], wend[i]
        cols = {}
        for c in u.attrs["colnames"]:
            if c in ("spike_times", "spike_amplitudes", "waveform_mean"):
                continue
            ds = u[c]
            cols[c] = _str(ds) if h5py.check_string_dtype(ds.dtype) else ds[()]
        units = pd.DataFrame(cols, index=pd.Index(ids, name="unit_id"))
        e = f["general/extracellular_ephys/electrodes"]
        el = pd.DataFrame(
            {
                c: (_str(e[c]) if h5py.check_string_dtype(e[c].dtype) else e[c][()])
                for c in e.attrs["colnames"]
                if c != "group"
            },
            index=pd.Index(e["id"][()], name="channel_id"),
        )
        probes = {}
        for name, g in f["general/extracellular_ephys"].items():
            if name == "electrodes":
                continue
            probes[int(g.attrs["probe_id"])] = {
                "probe_name": name,
                "probe_sampling_rate": float(g["device"].attrs["sampling_rate"]),
                "probe_lfp_sampling_rate": float(g.attrs["lfp_sampling_rate"]),
                "probe_has_lfp_data": bool(g.attrs["has_lfp_data"]),
            }
        sid = int(f["identifier"][()])
    return dict(sid=sid, units=units, el=el, probes=probes, spikes=spikes, waves=waves)


def independent_default_mask(ref: dict) -> pd.Series:
    """AllenSDK Probes.get_units_table with the default arguments, in pandas."""
    units, el = ref["units"], ref["el"]
    ch = el[el["valid_data"].astype(bool)]
    ch = ch[~ch["location"].isin(["", "None"])]
    keep = units["peak_channel_id"].isin(set(ch.index))
    keep &= units["quality"] == "good"
    keep &= units["amplitude_cutoff"].astype(float) <= 0.1
    keep &= units["presence_ratio"].astype(float) >= 0.95
    keep &= units["isi_violations"].astype(float) <= 0.5
    return keep


def read_dataset(root: Path, name: str) -> pd.DataFrame:
    return pd.read_parquet(root / name)


def bits(a) -> np.ndarray:
    return np.ascontiguousarray(np.asarray(a, dtype=np.float64)).view(np.uint64)


# ----------------------------------------------------------------------------------- spikes


def test_spike_times_and_amplitudes_exact_for_every_unit(extracted, nwb_files):
    out, results = extracted
    for path, res in zip(nwb_files, results, strict=True):
        ref = ref_session(path)
        sid = ref["sid"]
        files = sorted((out / "spikes" / f"session_id={sid}").glob("probe_id=*/part-0.parquet"))
        assert {int(p.parent.name.split("=")[1]) for p in files} == set(ref["probes"])
        seen = set()
        for fp in files:
            t = pq.read_table(fp)
            assert t.schema.remove_metadata().equals(SCHEMAS["spikes"])
            uid = t.column("unit_id").to_numpy()
            assert np.all(np.diff(uid) >= 0), "sorted by unit"
            times = t.column("spike_time").to_numpy()
            amps = t.column("spike_amplitude").to_numpy()
            bounds = np.flatnonzero(np.diff(uid)) + 1
            for seg in np.split(np.arange(uid.size), bounds):
                if seg.size == 0:
                    continue
                u = int(uid[seg[0]])
                rt, ra = ref["spikes"][u]
                assert np.array_equal(bits(times[seg]), bits(rt)), u
                assert np.array_equal(bits(amps[seg]), bits(ra)), u
                assert np.all(np.diff(times[seg]) >= 0)
                seen.add(u)
        with_spikes = {u for u, (t, _) in ref["spikes"].items() if t.size}
        assert seen == with_spikes
        assert res["counts"]["spikes"] == sum(t.size for t, _ in ref["spikes"].values())


# -------------------------------------------------------------------------------- waveforms


def test_waveforms_exact_and_mapped_to_channels(extracted, nwb_files):
    out, _ = extracted
    for path in nwb_files:
        ref = ref_session(path)
        wf = pq.read_table(out / "waveforms" / f"session_id={ref['sid']}" / "part-0.parquet")
        stored_type = pa.from_numpy_dtype(next(iter(ref["waves"].values())).dtype)
        assert wf.schema.field("waveform").type.value_type == stored_type
        df = wf.to_pandas()
        assert list(df.columns) == SCHEMAS["waveforms"].names
        assert df.groupby("unit_id", sort=False).ngroup().is_monotonic_increasing
        el = ref["el"]
        lut = {
            (int(p), int(li)): cid
            for cid, p, li in zip(el.index, el.probe_id, el.local_index, strict=True)
        }
        units = ref["units"]
        for uid, block in ref["waves"].items():
            rows = df[df.unit_id == uid]
            assert len(rows) == block.shape[0]
            assert list(rows.channel_local_index) == list(range(block.shape[0]))
            got = np.stack(rows.waveform.to_numpy())
            assert got.dtype == block.dtype and np.array_equal(got, block)
            pid = int(el.loc[units.loc[uid, "peak_channel_id"], "probe_id"])
            assert set(rows.probe_id) == {pid}
            want = [lut.get((pid, i)) for i in range(block.shape[0])]
            assert [None if pd.isna(x) else int(x) for x in rows.channel_id] == want
            peak_li = int(el.loc[units.loc[uid, "peak_channel_id"], "local_index"])
            assert list(np.flatnonzero(rows.is_peak_channel.to_numpy())) == [peak_li]
            assert set(rows.n_samples) == {block.shape[1]}
            assert set(rows.sample_rate) == {ref["probes"][pid]["probe_sampling_rate"]}


# ------------------------------------------------------------------------------------ units


def test_units_every_column_and_join(extracted, nwb_files):
    out, _ = extracted
    for path in nwb_files:
        ref = ref_session(path)
        got = read_dataset(out, "units").set_index("unit_id")
        got = got[got.session_id.astype(int) == ref["sid"]]
        units, el = ref["units"], ref["el"]
        assert list(got.index) == sorted(units.index)
        for col in units.columns:
            name = RENAMES.get(col, col)
            assert name in got.columns, col
            want = units[col].reindex(got.index)
            if not pd.api.types.is_numeric_dtype(want.dtype):
                assert list(got[name]) == list(want), col
            else:
                assert np.array_equal(got[name].to_numpy(), want.to_numpy(), equal_nan=True), col
        peak = el.loc[units.loc[got.index, "peak_channel_id"]]
        for src, dst in UNIT_FIELDS_FROM_CHANNEL.items():
            assert np.array_equal(
                got[dst].to_numpy(dtype=float), peak[src].to_numpy(dtype=float), equal_nan=True
            ), dst
        acr = [None if a in ("", "None") else a for a in peak["location"]]
        assert [None if pd.isna(a) else a for a in got.ecephys_structure_acronym] == acr
        assert list(got.probe_id) == list(peak.probe_id)
        for k in ("probe_name", "probe_sampling_rate", "probe_lfp_sampling_rate"):
            assert list(got[k]) == [ref["probes"][p][k] for p in peak.probe_id], k
        assert list(got.probe_has_lfp_data) == [
            ref["probes"][p]["probe_has_lfp_data"] for p in peak.probe_id
        ]
        assert list(got.spike_count) == [ref["spikes"][u][0].size for u in got.index]
        assert got.extra_columns.isna().all()


def test_passes_default_filters_matches_independent_computation(extracted, nwb_files):
    out, _ = extracted
    units = read_dataset(out, "units")
    for path in nwb_files:
        ref = ref_session(path)
        got = units[units.session_id.astype(int) == ref["sid"]].set_index("unit_id")
        want = independent_default_mask(ref).reindex(got.index)
        assert want.any() and not want.all()
        assert list(got.passes_default_filters) == list(want)


def test_unit_filters_restrict_units_waveforms_and_spikes(filtered, extracted, nwb_files):
    out, _ = filtered
    all_units = read_dataset(extracted[0], "units")
    units = read_dataset(out, "units")
    want = all_units[all_units.passes_default_filters]
    assert sorted(units.unit_id) == sorted(want.unit_id)
    assert units.passes_default_filters.all()
    wf = read_dataset(out, "waveforms")
    assert set(wf.unit_id) == set(units.unit_id)
    spikes = read_dataset(out, "spikes")
    with_spikes = set(units.unit_id[units.spike_count > 0])
    assert set(spikes.unit_id) == with_spikes
    assert len(spikes) == units.spike_count.sum()


def test_unit_filters_switched_off_and_custom(nwb_files, tmp_path):
    path = nwb_files[0]
    ref = ref_session(path)
    off = {
        "quality": None,
        "amplitude_cutoff_maximum": None,
        "presence_ratio_minimum": None,
        "isi_violations_maximum": None,
        "filter_by_validity": False,
        "filter_out_of_brain_units": False,
    }
    extract_session(path, tmp_path / "off", unit_filters=off)
    got = set(pd.read_parquet(tmp_path / "off" / "units").unit_id)
    u = ref["units"]
    # AllenSDK: a switched-off threshold is +/-inf and a NaN metric still fails
    metrics = u[["amplitude_cutoff", "presence_ratio", "isi_violations"]].astype(float)
    assert got == set(u.index[metrics.notna().all(axis=1)])

    custom = {"quality": ["good", "noise"], "amplitude_cutoff_maximum": 0.05}
    extract_session(path, tmp_path / "custom", unit_filters=custom)
    got = pd.read_parquet(tmp_path / "custom" / "units").set_index("unit_id")
    el = ref["el"]
    ch = el[el.valid_data.astype(bool) & ~el.location.isin(["", "None"])]
    m = u.peak_channel_id.isin(set(ch.index))
    m &= (u.amplitude_cutoff <= 0.05) & (u.presence_ratio >= 0.95) & (u.isi_violations <= 0.5)
    assert sorted(got.index) == sorted(u.index[m])
    with pytest.raises(ValueError, match="unknown unit filter"):
        extract_session(path, tmp_path / "bad", unit_filters={"snr_minimum": 1})


def test_empty_probe_gives_typed_empty_file(nwb_files, tmp_path):
    path = nwb_files[0]
    res = extract_session(path, tmp_path / "out", unit_filters={"quality": "no-such-label"})
    assert res["counts"]["units"] == 0 and res["counts"]["spikes"] == 0
    files = sorted((tmp_path / "out" / "spikes").rglob("part-0.parquet"))
    assert len(files) == len(res["probe_ids"]) == 3
    for fp in files:
        t = pq.read_table(fp)
        assert t.num_rows == 0 and t.schema.remove_metadata().equals(SCHEMAS["spikes"])
    assert pq.read_table(tmp_path / "out" / "units").num_rows == 0
    df = pd.read_parquet(tmp_path / "out" / "spikes")
    assert len(df) == 0 and df.spike_time.dtype == np.float64


def test_scratch_left_by_a_killed_extraction_is_removed(nwb_files, tmp_path):
    """A SIGKILLed extraction leaves its hidden scratch directory; the next one removes it (its
    owner is dead) but never one whose owner still runs."""
    out = tmp_path / "out"
    sid = int(nwb_files[0].name.split("_")[1].split(".")[0])
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True).stdout.strip()  # fmt: skip
    stale = tmp_path / f".out.extract-{sid}-{dead}-x1y2"
    live = tmp_path / f".out.extract-{sid}-{os.getppid()}-a3b4"
    for d in (stale, live):
        (d / "units").mkdir(parents=True)
        (d / "units" / "part-0.parquet").write_bytes(b"half")
    extract_session(nwb_files[0], out)
    assert not stale.exists()
    assert live.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([live.name, "out"])


def test_probe_ids_restricts_probes(nwb_files, tmp_path):
    path = nwb_files[0]
    with open_session(path) as s:
        pids = s.probes().probe_id.tolist()
    res = extract_session(path, tmp_path / "o", probe_ids=[pids[1]])
    assert res["probe_ids"] == [pids[1]]
    units = pd.read_parquet(tmp_path / "o" / "units")
    assert set(units.probe_id) == {pids[1]}
    assert len(list((tmp_path / "o" / "spikes").rglob("*.parquet"))) == 1


# ---------------------------------------------------------------------- file-format variants


def _rewrite_index_dtype(path: Path, dtype: str) -> None:
    """Rewrite the units VectorIndex datasets (only those) to ``dtype``."""
    with h5py.File(path, "r+") as f:
        u = f["units"]
        for name in ("spike_times_index", "spike_amplitudes_index", "waveform_mean_index"):
            data = u[name][()]
            attrs = dict(u[name].attrs)
            assert int(data.max()) <= np.iinfo(np.dtype(dtype)).max
            del u[name]
            u.create_dataset(name, data=data.astype(dtype))
            for k, v in attrs.items():
                u[name].attrs[k] = v


@pytest.mark.parametrize("dtype", ["uint16", "uint32", "uint64", "int32", "int64"])
def test_any_index_dtype(dtype, tmp_path_factory, tmp_path):
    # the synth index_dtype knob also rewrites local_index/stimulus_index (reported), so the
    # VectorIndex datasets are rewritten here
    ds = synth.make_dataset(
        tmp_path_factory.mktemp(f"idx_{dtype}") / "ds",
        seed=3,
        sessions=1,
        probes_per_session=2,
        units_per_probe=2,
        duration_s=30.0,
    )
    path = next((ds / "files").glob("session_*/session_*.nwb"))
    _rewrite_index_dtype(path, dtype)
    with h5py.File(path, "r") as f:
        assert f["units/spike_times_index"].dtype == np.dtype(dtype)
    extract_session(path, tmp_path)
    ref = ref_session(path)
    spikes = pd.read_parquet(tmp_path / "spikes")
    assert len(spikes) == sum(t.size for t, _ in ref["spikes"].values())
    for uid, (t, a) in ref["spikes"].items():
        rows = spikes[spikes.unit_id == uid]
        assert np.array_equal(bits(rows.spike_time), bits(t))
        assert np.array_equal(bits(rows.spike_amplitude), bits(a))
    wf = pd.read_parquet(tmp_path / "waveforms")
    assert len(wf) == sum(b.shape[0] for b in ref["waves"].values())


@pytest.mark.parametrize("dtype", ["uint8", "uint16", "uint32", "uint64", "int32", "int64"])
def test_read_index_accepts_every_integer_dtype(dtype, tmp_path):
    p = tmp_path / "i.h5"
    with h5py.File(p, "w") as f:
        f["x_index"] = np.array([0, 3, 3, 200], dtype=dtype)
    with h5py.File(p, "r") as f:
        got = read_index(f["x_index"])
    assert got.dtype == np.int64 and got.tolist() == [0, 3, 3, 200]


def test_all_nan_metric_stored_as_strings(tmp_path_factory, tmp_path):
    ds = synth.make_dataset(
        tmp_path_factory.mktemp("nanstr") / "ds",
        seed=5,
        sessions=1,
        probes_per_session=2,
        units_per_probe=3,
        duration_s=30.0,
        all_nan_metric_as_str=True,
    )
    path = next((ds / "files").glob("session_*/session_*.nwb"))
    with h5py.File(path, "r") as f:
        str_cols = [
            c
            for c in f["units"].attrs["colnames"]
            if h5py.check_string_dtype(f["units"][c].dtype) and c != "quality"
        ]
        assert str_cols, "the knob should store a metric as vlen strings"
        stored = {c: set(f["units"][c].asstr()[()]) for c in str_cols}
    assert all(v <= {"", "None"} for v in stored.values())
    extract_session(path, tmp_path)
    t = pq.read_table(tmp_path / "units")
    for c in str_cols:
        name = RENAMES.get(c, c)
        assert t.schema.field(name).type == pa.float64()
        assert np.isnan(t.column(name).to_numpy(zero_copy_only=False)).all()


def test_float32_waveforms_keep_their_dtype(nwb_files, tmp_path):
    path = tmp_path / "f32.nwb"
    shutil.copy(nwb_files[0], path)
    with h5py.File(path, "r+") as f:
        data = f["units/waveform_mean"][()].astype(np.float32)
        del f["units/waveform_mean"]
        f["units/waveform_mean"] = data
    extract_session(path, tmp_path / "o")
    t = pq.read_table(tmp_path / "o" / "waveforms")
    assert t.schema.field("waveform").type.value_type == pa.float32()
    got = np.stack(t.column("waveform").to_numpy(zero_copy_only=False))
    assert got.dtype == np.float32
    with h5py.File(path, "r") as f:
        order = np.argsort(f["units/id"][()], kind="stable")
        n = f["units/waveform_mean_index"][0]
        blocks = data.reshape(-1, int(n), data.shape[1])[order].reshape(data.shape)
    assert np.array_equal(got, blocks)


def _permute_units(path: Path, perm: np.ndarray) -> None:
    """Rewrite /units with its rows in ``perm`` order (ragged columns rebuilt to match)."""
    with h5py.File(path, "r+") as f:
        u = f["units"]
        n = u["id"].shape[0]
        for name in list(u):
            ds = u[name]
            if name.endswith("_index") and name[: -len("_index")] in u:
                continue
            if name in ("spike_times", "spike_amplitudes", "waveform_mean"):
                end = u[f"{name}_index"][()].astype(np.int64)
                start = np.concatenate([[0], end[:-1]])
                data = ds[()]
                pieces = [data[start[i] : end[i]] for i in perm]
                new = np.concatenate(pieces)
                new_index = np.cumsum([len(p) for p in pieces]).astype(u[f"{name}_index"].dtype)
                del u[name], u[f"{name}_index"]
                u[name] = new
                u[f"{name}_index"] = new_index
            elif ds.shape == (n,):
                data = ds[()][perm]
                dtype = ds.dtype
                del u[name]
                u.create_dataset(name, data=data, dtype=dtype)


def _same_table(a: pa.Table, b: pa.Table) -> bool:
    """Equal schema and values, NaN == NaN (bit for bit) in float columns."""
    if not a.schema.remove_metadata().equals(b.schema.remove_metadata()):
        return False
    for name in a.column_names:
        x, y = a.column(name).combine_chunks(), b.column(name).combine_chunks()
        if pa.types.is_floating(x.type):
            if not (x.is_null().equals(y.is_null())):
                return False
            xv = x.fill_null(0).to_numpy(zero_copy_only=False)
            yv = y.fill_null(0).to_numpy(zero_copy_only=False)
            if not np.array_equal(xv.view(np.uint64), yv.view(np.uint64)):
                return False
        elif not x.equals(y):
            return False
    return True


def test_unit_row_order_in_the_file_does_not_matter(nwb_files, extracted, tmp_path):
    out, _ = extracted
    path = tmp_path / nwb_files[0].name
    shutil.copy(nwb_files[0], path)
    with h5py.File(path, "r") as f:
        n = f["units/id"].shape[0]
    _permute_units(path, np.random.default_rng(7).permutation(n))  # probes interleaved too
    extract_session(path, tmp_path / "o")
    sid = ref_session(path)["sid"]
    for d in DATASETS:
        for f in sorted((out / d).glob(f"session_id={sid}/**/part-0.parquet")):
            rel = f.relative_to(out)
            assert _same_table(pq.read_table(tmp_path / "o" / rel), pq.read_table(f)), rel


# ----------------------------------------------------------------------------------- Gen-1


@pytest.fixture(scope="session")
def gen1_file(tmp_path_factory) -> Path:
    if not hasattr(synth, "write_gen1_session_nwb"):
        pytest.skip("synth.write_gen1_session_nwb not available")
    p = tmp_path_factory.mktemp("gen1") / "session_gen1.nwb"
    try:
        return Path(synth.write_gen1_session_nwb(p, seed=0))
    except ImportError as e:  # synth's Gen-1 module not landed yet
        pytest.skip(f"synth Gen-1 writer unavailable: {e}")


def test_gen1_spikes_filtered_sorted_and_epochs(gen1_file, tmp_path):
    with open_session(gen1_file) as s:
        assert s.generation == 1
    res = extract_session(gen1_file, tmp_path)
    assert res["generation"] == 1
    with h5py.File(gen1_file, "r") as f:
        u = f["units"]
        ids = u["id"][()]
        end = u["spike_times_index"][()].astype(np.int64)
        st, sa = u["spike_times"][()], u["spike_amplitudes"][()]
        assert (st < 0).any(), "fixture should hold invalid -1 spikes"
        ref = {}
        start = 0
        unsorted = 0
        for i, uid in enumerate(ids):
            t, a = st[start : end[i]], sa[start : end[i]]
            start = end[i]
            keep = t >= 0
            t, a = t[keep], a[keep]
            order = np.argsort(t, kind="stable")
            unsorted += int(np.any(order != np.arange(order.size)))
            ref[int(uid)] = (t[order], a[order])
        assert unsorted, "fixture should hold unsorted units"
        n_epochs = f["intervals/epochs/id"].shape[0]
        epoch_ids = f["intervals/epochs/id"][()]
        epoch_start = f["intervals/epochs/start_time"][()]
    spikes = pd.read_parquet(tmp_path / "spikes")
    assert (spikes.spike_time >= 0).all()
    for uid, (t, a) in ref.items():
        rows = spikes[spikes.unit_id == uid]
        assert np.array_equal(bits(rows.spike_time), bits(t)), uid
        assert np.array_equal(bits(rows.spike_amplitude), bits(a)), uid
    units = pd.read_parquet(tmp_path / "units").set_index("unit_id")
    assert all(units.loc[u, "spike_count"] == ref[u][0].size for u in ref)
    assert units.probe_name.str.match(r"probe[A-F]$").all()
    stim = pd.read_parquet(tmp_path / "stimulus_presentations")
    assert len(stim) == n_epochs
    assert stim.start_time.is_monotonic_increasing
    assert sorted(stim.stimulus_presentation_id) == sorted(epoch_ids.tolist())
    by_id = dict(zip(epoch_ids.tolist(), epoch_start.tolist(), strict=True))
    assert all(
        by_id[i] == t for i, t in zip(stim.stimulus_presentation_id, stim.start_time, strict=True)
    )
    rs = pd.read_parquet(tmp_path / "running_speed")
    assert len(rs) > 0 and (rs.end_time >= rs.start_time).all()
    for d in DATASETS:  # Gen-1 sessions share the Gen-2 schema
        for f in (tmp_path / d).rglob("part-0.parquet"):
            schema = pq.read_schema(f)
            assert schema.metadata[b"ecephys_pipeline.generation"] == b"1"
            assert schema.remove_metadata().equals(SCHEMAS[d]), d


# ------------------------------------------------------------------ stimulus, running speed


def test_stimulus_presentations_like_allensdk(extracted, nwb_files):
    out, _ = extracted
    for path in nwb_files:
        with h5py.File(path, "r") as f:
            iv = f["intervals"]
            names = [k for k in iv if k.endswith("_presentations")]
            starts = np.concatenate([iv[k]["start_time"][()] for k in sorted(names)])
            n_na = sum(
                int((iv[k][c].asstr()[()] == "N/A").sum())
                for k in names
                for c in iv[k].attrs["colnames"]
                if c not in ("tags", "timeseries") and h5py.check_string_dtype(iv[k][c].dtype)
            )
            sid = int(f["identifier"][()])
        t = pq.read_table(out / "stimulus_presentations" / f"session_id={sid}" / "part-0.parquet")
        assert t.schema.remove_metadata().equals(STIMULUS_SCHEMA)
        df = t.to_pandas()
        assert list(df.stimulus_presentation_id) == list(range(len(df)))
        assert np.array_equal(df.start_time.to_numpy(), np.sort(starts, kind="stable"))
        assert "tags" not in df.columns and "timeseries" not in df.columns
        assert not (df.select_dtypes(include=["object", "str"]) == "N/A").any().any()
        if n_na:
            assert df[["phase", "size", "spatial_frequency", "color"]].isna().any().any()


def test_running_speed_exact(extracted, nwb_files):
    out, _ = extracted
    for path in nwb_files:
        with h5py.File(path, "r") as f:
            rs = f["processing/running"]
            want = (
                rs["running_speed/timestamps"][()],
                rs["running_speed_end_times/timestamps"][()],
                rs["running_speed/data"][()],
            )
            sid = int(f["identifier"][()])
        df = pd.read_parquet(out / "running_speed" / f"session_id={sid}")
        for col, w in zip(("start_time", "end_time", "velocity"), want, strict=True):
            assert np.array_equal(bits(df[col]), bits(w)), col


def test_open_lfp_metadata(dataset):
    lfp = sorted((dataset / "files").glob("session_*/probe_*_lfp.nwb"))[0]
    info = open_lfp(lfp)
    assert info.probe_id == int(re.search(r"probe_(\d+)_lfp", lfp.name).group(1))
    with h5py.File(lfp, "r") as f:
        series = f[f"acquisition/probe_{info.probe_id}_lfp/probe_{info.probe_id}_lfp_data"]
        assert info.n_samples == series["data"].shape[0]
        assert info.n_channels == series["data"].shape[1] == info.channel_ids.size


# ------------------------------------------------------------- schema, bytes, metadata, errors


def test_same_schema_across_sessions_and_metadata(extracted, nwb_files):
    out, results = extracted
    for d in DATASETS:
        files = sorted((out / d).rglob("part-0.parquet"))
        assert len(files) >= 2
        schemas = {pq.read_schema(f).remove_metadata() for f in files}
        assert len({s.to_string() for s in schemas}) == 1, d
        assert next(iter(schemas)).equals(SCHEMAS[d]), d
        for f in files:
            meta = pq.read_schema(f).metadata
            src = f.relative_to(out).parts[1].split("=")[1]
            path = next(p for p in nwb_files if p.name == f"session_{src}.nwb")
            assert meta[b"ecephys_pipeline.source_file"] == path.name.encode()
            assert (
                meta[b"ecephys_pipeline.source_sha256"]
                == hashlib.sha256(path.read_bytes()).hexdigest().encode()
            )
            assert meta[b"ecephys_pipeline.generation"] == b"2"
            assert meta[b"ecephys_pipeline.version"]
            assert b"/" not in meta[b"ecephys_pipeline.source_file"]
            assert str(out).encode() not in b"".join(meta.values())
            assert "session_id" not in pq.read_schema(f).names
            assert "probe_id" not in pq.read_schema(f).names or d != "spikes"


def test_parquet_encodings(extracted):
    out, _ = extracted
    f = next((out / "spikes").rglob("part-0.parquet"))
    md = pq.ParquetFile(f).metadata
    rg = md.row_group(0)
    cols = {rg.column(i).path_in_schema: rg.column(i) for i in range(rg.num_columns)}
    assert cols["spike_time"].compression == "ZSTD"
    assert "BYTE_STREAM_SPLIT" in cols["spike_time"].encodings
    assert not cols["spike_time"].has_dictionary_page
    assert cols["unit_id"].statistics.has_min_max
    w = pq.ParquetFile(next((out / "waveforms").rglob("part-0.parquet"))).metadata.row_group(0)
    wcols = {w.column(i).path_in_schema: w.column(i) for i in range(w.num_columns)}
    assert "BYTE_STREAM_SPLIT" in wcols["waveform.list.element"].encodings


def _digests(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def test_reextraction_is_byte_identical(nwb_files, extracted, tmp_path):
    out, _ = extracted
    for p in nwb_files:
        extract_session(p, tmp_path / "again")
    assert _digests(tmp_path / "again") == _digests(out)
    # in place, over existing output: same bytes again, no temp leftovers
    extract_session(nwb_files[0], tmp_path / "again")
    assert _digests(tmp_path / "again") == _digests(out)
    assert [p.name for p in tmp_path.iterdir()] == ["again"]


def test_failure_leaves_no_partial_output(nwb_files, tmp_path):
    broken = tmp_path / "session_1.nwb"
    shutil.copy(nwb_files[0], broken)
    with h5py.File(broken, "r+") as f:  # fails late: after spikes, units, waveforms
        for k in list(f["intervals"]):
            if "start_time" in f["intervals"][k]:
                del f["intervals"][k]["start_time"]
    out = tmp_path / "out"
    with pytest.raises(NwbError, match="start_time"):
        extract_session(broken, out)
    assert not any(p.is_file() for p in out.rglob("*"))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out", "session_1.nwb"]


def test_clear_errors_name_the_file(tmp_path):
    txt = tmp_path / "notes.nwb"
    txt.write_text("hello")
    with pytest.raises(NwbError, match=re.escape(f"{txt} is not an HDF5 file")):
        extract_session(txt, tmp_path / "o")
    plain = tmp_path / "plain.h5"
    with h5py.File(plain, "w") as f:
        f["x"] = 1
    with pytest.raises(NwbError, match=re.escape(f"{plain} is not an NWB file")):
        extract_session(plain, tmp_path / "o")
    nounits = tmp_path / "nounits.nwb"
    with h5py.File(nounits, "w") as f:
        f.attrs["nwb_version"] = "2.2.2"
        f.attrs["neurodata_type"] = "NWBFile"
    with pytest.raises(NwbError, match=re.escape(f"{nounits} is not an NWB file (no /units")):
        extract_session(nounits, tmp_path / "o")
    with pytest.raises(FileNotFoundError):
        extract_session(tmp_path / "missing.nwb", tmp_path / "o")
    assert not (tmp_path / "o").exists() or not any((tmp_path / "o").rglob("*.parquet"))


# -------------------------------------------------------------------------------------- CLI


def test_cli_extract(nwb_files, tmp_path, extracted):
    out = tmp_path / "cli"
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    r = subprocess.run(
        [sys.executable, "-m", "ecephys_pipeline", "extract", "--nwb", str(nwb_files[0])]
        + ["--out", str(out)],
        capture_output=True,
        text=True,
        env=env,
    )
    assert r.returncode == 0, r.stderr
    res = json.loads(r.stdout)
    assert res["counts"]["units"] > 0
    assert _digests(out).items() <= _digests(extracted[0]).items()

    filt = tmp_path / "cli_f"
    r = subprocess.run(
        [sys.executable, "-m", "ecephys_pipeline", "extract", "--nwb", str(nwb_files[0])]
        + ["--out", str(filt), "--unit-filters", json.dumps({"quality": "good"})],
        capture_output=True,
        text=True,
        env=env,
    )
    assert r.returncode == 0, r.stderr
    assert set(pd.read_parquet(filt / "units").quality) == {"good"}

    bad = tmp_path / "bad.nwb"
    bad.write_bytes(b"\x00" * 64)
    r = subprocess.run(
        [sys.executable, "-m", "ecephys_pipeline", "extract", "--nwb", str(bad)]
        + ["--out", str(tmp_path / "x")],
        capture_output=True,
        text=True,
        env=env,
    )
    assert r.returncode == 2 and str(bad) in r.stderr and "not an HDF5 file" in r.stderr


# ------------------------------------------------------------------ the three readers agree


def _key(d: str) -> list[str]:
    return {
        "units": ["session_id", "unit_id"],
        "waveforms": ["session_id", "unit_id", "channel_local_index"],
        "spikes": ["session_id", "probe_id", "unit_id", "spike_time"],
        "stimulus_presentations": ["session_id", "stimulus_presentation_id"],
        "running_speed": ["session_id", "start_time"],
    }[d]


def _norm(df: pd.DataFrame) -> pd.DataFrame:
    """Missing values as None in non-numeric columns (pandas str NaN vs polars/duckdb None)."""
    df = df.copy()
    for c in df.columns:
        if not pd.api.types.is_numeric_dtype(df[c].dtype):
            df[c] = df[c].astype(object).where(df[c].notna(), None)
    return df


def test_pandas_polars_duckdb_read_the_same_rows(extracted):
    pl = pytest.importorskip("polars")
    duckdb = pytest.importorskip("duckdb")
    out, _ = extracted
    for d in DATASETS:
        root = out / d
        # README snippets
        p = pd.read_parquet(root)
        q = pl.read_parquet(f"{root}/**/*.parquet", hive_partitioning=True)
        k = duckdb.sql(
            f"SELECT * FROM read_parquet('{root}/**/*.parquet', hive_partitioning=true)"
        ).df()
        assert p.session_id.nunique() == 2
        key = _key(d)
        p = p.astype({c: "int64" for c in key if c in ("session_id", "probe_id")})
        q = q.to_pandas()
        cols = [c for c in p.columns if c != "waveform"]
        for other in (q, k):
            other = other.astype({c: "int64" for c in key if c in ("session_id", "probe_id")})
            assert sorted(other.columns) == sorted(p.columns), d
            a = _norm(p[cols].sort_values(key, kind="stable").reset_index(drop=True))
            b = _norm(other[cols].sort_values(key, kind="stable").reset_index(drop=True))
            pd.testing.assert_frame_equal(a, b, check_dtype=False, check_categorical=False)
        if d == "waveforms":
            a = np.stack(p.sort_values(key).waveform.to_numpy())
            b = np.stack(k.sort_values(key).waveform.to_numpy())
            assert np.array_equal(a, b)
    # predicate pushdown on the spike files
    uid = int(pd.read_parquet(out / "spikes").unit_id.iloc[0])
    n = duckdb.sql(
        f"SELECT count(*) FROM read_parquet('{out}/spikes/**/*.parquet', hive_partitioning=true) "
        f"WHERE unit_id = {uid}"
    ).fetchall()[0][0]
    m = pl.scan_parquet(f"{out}/spikes/**/*.parquet", hive_partitioning=True).filter(
        pl.col("unit_id") == uid
    )
    assert n == m.collect().height > 0


# ---------------------------------------------------------------------- docs/SCHEMA.md tables


def _doc_tables() -> dict[str, list[tuple[str, str]]]:
    text = (REPO / "docs" / "SCHEMA.md").read_text()
    tables: dict[str, list[tuple[str, str]]] = {}
    current = None
    for line in text.splitlines():
        if line.startswith("#"):  # any heading ends a dataset's table (e.g. "# LFP stores")
            m = re.match(r"^## (\w+)\s*$", line)
            current = m.group(1) if m and m.group(1) in DATASETS else None
            continue
        if current and line.startswith("| `"):
            cells = [c.strip() for c in line.strip("|").split("|")]
            tables.setdefault(current, []).append((cells[0].strip("`"), cells[1]))
    return tables


def test_schema_doc_matches_written_files(extracted):
    out, _ = extracted
    doc = _doc_tables()
    assert set(doc) == set(DATASETS)
    for d in DATASETS:
        schema = pq.read_schema(next((out / d).rglob("part-0.parquet")))
        written = [(f.name, str(f.type)) for f in schema]
        assert doc[d] == written, d
    text = (REPO / "docs" / "SCHEMA.md").read_text()
    for key in ("source_sha256", "version", "source_file", "generation"):
        assert f"`ecephys_pipeline.{key}`" in text


# ------------------------------------------------------------------ AllenSDK oracle (optional)

ORACLE = r"""
import base64, json, sys, warnings
warnings.filterwarnings("ignore")
import numpy as np
from allensdk.brain_observatory.ecephys.ecephys_session import EcephysSession
s = EcephysSession.from_nwb_path(sys.argv[1])
u = s.units
def py(v):
    if isinstance(v, float) and v != v:
        return None
    return v.item() if hasattr(v, "item") else v
b64 = lambda a: base64.b64encode(np.ascontiguousarray(a, dtype="<f8").tobytes()).decode()
out = {
    "units": [{k: py(v) for k, v in r.items()} for r in u.reset_index().to_dict("records")],
    "spike_times": {str(k): b64(v) for k, v in s.spike_times.items()},
    "spike_amplitudes": {str(k): b64(v) for k, v in s.spike_amplitudes.items()},
    "waveforms": {str(k): {"channel_id": [int(c) for c in v["channel_id"].values],
                           "data": b64(v.values)} for k, v in s.mean_waveforms.items()},
    "stim_ids": [int(i) for i in s.stimulus_presentations.index],
    "stim_start": s.stimulus_presentations["start_time"].tolist(),
}
json.dump(out, sys.stdout)
"""
ORACLE_NAMES = {
    "structure_acronym": "ecephys_structure_acronym",
    "probe_channel_number": "channel_local_index",
    "probe_description": "probe_name",
}


@pytest.mark.allensdk
@pytest.mark.skipif(not Path(ALLENSDK_PYTHON).exists(), reason="AllenSDK oracle not installed")
def test_matches_allensdk_session(extracted, nwb_files):
    out, _ = extracted
    path = nwb_files[0]
    r = subprocess.run(
        [ALLENSDK_PYTHON, "-c", ORACLE, str(path)], capture_output=True, text=True, check=True
    )
    o = json.loads(r.stdout)
    sid = ref_session(path)["sid"]
    units = pd.read_parquet(out / "units" / f"session_id={sid}").set_index("unit_id")
    assert set(units.index[units.passes_default_filters]) == {r["unit_id"] for r in o["units"]}
    for row in o["units"]:
        for k, v in row.items():
            if k in ("unit_id", "filtering", "location"):
                continue
            got = units.loc[row["unit_id"], ORACLE_NAMES.get(k, k)]
            assert pd.isna(got) if v is None else got == v, (row["unit_id"], k)
    spikes = pd.read_parquet(out / "spikes" / f"session_id={sid}")
    g = {u: df for u, df in spikes.groupby("unit_id")}
    for k, b in o["spike_times"].items():
        want = np.frombuffer(base64.b64decode(b), "<f8")
        assert np.array_equal(bits(g[int(k)].spike_time), want.view(np.uint64))
        want = np.frombuffer(base64.b64decode(o["spike_amplitudes"][k]), "<f8")
        assert np.array_equal(bits(g[int(k)].spike_amplitude), want.view(np.uint64))
    wf = pd.read_parquet(out / "waveforms" / f"session_id={sid}")
    for k, d in o["waveforms"].items():
        rows = wf[wf.unit_id == int(k)].set_index("channel_id").loc[d["channel_id"]]
        want = np.frombuffer(base64.b64decode(d["data"]), "<f8").reshape(len(d["channel_id"]), -1)
        assert np.array_equal(np.stack(rows.waveform.to_numpy()), want)
    stim = pd.read_parquet(out / "stimulus_presentations" / f"session_id={sid}")
    assert list(stim.stimulus_presentation_id) == o["stim_ids"]
    assert stim.start_time.tolist() == o["stim_start"]
