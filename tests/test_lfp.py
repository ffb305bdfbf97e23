"""LFP NWB -> per-probe Zarr store (ecephys_pipeline.lfp), checked against the HDF5 datasets.

AllenSDK's own view of the same files is compared in test_allensdk_oracle.py.
"""

from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np
import pytest
import xarray as xr

from ecephys_pipeline import lfp
from ecephys_pipeline.nwb import NwbError


def lfp_files(root: Path) -> list[tuple[Path, Path]]:
    """(LFP NWB, its session NWB) for every LFP file of a synthetic dataset."""
    out = []
    for path in sorted(root.glob("files/session_*/probe_*_lfp.nwb")):
        sid = path.parent.name.removeprefix("session_")
        out.append((path, path.parent / f"session_{sid}.nwb"))
    return out


def nwb_lfp(path: Path) -> dict:
    with h5py.File(path, "r") as f:
        key = next(k for k in f["acquisition"] if k.endswith("_lfp"))
        series = f[f"acquisition/{key}/{key}_data"]
        el = f["general/extracellular_ephys/electrodes"]
        csd = f["processing/current_source_density/ecephys_csd"]
        return {
            "probe_id": int(key.split("_")[1]),
            "data": series["data"][()],
            "time": series["timestamps"][()],
            "channel": el["id"][()],
            "location": el["location"].asstr()[()],
            "x": el["x"][()],
            "y": el["y"][()],
            "z": el["z"][()],
            "vertical": el["probe_vertical_position"][()],
            "horizontal": el["probe_horizontal_position"][()],
            "valid_data": el["valid_data"][()],
            "local_index": el["local_index"][()],
            "csd": csd["current_source_density/data"][()],
            "csd_time": csd["current_source_density/timestamps"][()],
            "csd_x": csd["virtual_electrode_x_positions"][()],
            "csd_y": csd["virtual_electrode_y_positions"][()],
        }


def session_invalid_times(path: Path) -> list[tuple[float, float, list[str]]]:
    with h5py.File(path, "r") as f:
        g = f["intervals/invalid_times"]
        tags = g["tags"].asstr()[()].tolist()
        ends = g["tags_index"][()].tolist()
        starts = [0, *ends[:-1]]
        return [
            (float(a), float(b), tags[s:e])
            for a, b, s, e in zip(
                g["start_time"][()], g["stop_time"][()], starts, ends, strict=True
            )
        ]


@pytest.fixture(scope="module")
def converted(synth_dataset, tmp_path_factory):
    """Every LFP file of the shared dataset, converted with small chunks (several blocks)."""
    out = tmp_path_factory.mktemp("lfp")
    stores = []
    for path, session in lfp_files(Path(synth_dataset)):
        store = out / f"{path.stem}.zarr"
        lfp.convert_lfp(path, session, store, time_chunk=700, channel_chunk=32, block_chunks=2)
        stores.append((path, session, store))
    assert len(stores) >= 3
    return stores


def test_full_rate_values_time_and_channels_equal_the_nwb(converted):
    for path, _, store in converted:
        want = nwb_lfp(path)
        ds = xr.open_zarr(store)  # the plain xarray reader, as the README uses it
        assert ds.lfp.dims == ("time", "channel")
        assert ds.lfp.dtype == want["data"].dtype == np.float32
        assert np.array_equal(ds.lfp.values, want["data"])
        assert np.array_equal(ds.time.values, want["time"])
        assert np.array_equal(ds.channel.values, want["channel"])
        acr = np.where(np.isin(want["location"], ["", "None"]), "", want["location"])
        assert ds.ecephys_structure_acronym.values.tolist() == acr.tolist()
        assert np.array_equal(
            ds.anterior_posterior_ccf_coordinate.values, want["x"], equal_nan=True
        )
        assert np.array_equal(ds.dorsal_ventral_ccf_coordinate.values, want["y"], equal_nan=True)
        assert np.array_equal(ds.left_right_ccf_coordinate.values, want["z"], equal_nan=True)
        assert np.array_equal(ds.probe_vertical_position.values, want["vertical"], equal_nan=True)
        assert np.array_equal(
            ds.probe_horizontal_position.values, want["horizontal"], equal_nan=True
        )
        assert np.array_equal(ds.valid_data.values, want["valid_data"])
        assert np.array_equal(ds.channel_local_index.values, want["local_index"])
        assert ds.attrs["probe_id"] == want["probe_id"]
        assert ds.lfp.encoding["chunks"] == (700, 32)
        # a channel subset in a time window reads the same values
        window = ds.lfp.sel(time=slice(want["time"][1000], want["time"][1999])).isel(
            channel=slice(10, 34)
        )
        assert np.array_equal(window.values, want["data"][1000:2000, 10:34])


def test_invalid_times_are_attributes_and_mask_as_allensdk(converted):
    masked_somewhere = set()
    for path, session, store in converted:
        rows = session_invalid_times(session)
        full = lfp.open_store(store)
        name = full.attrs["probe_name"]
        attrs = full.lfp.attrs
        got = [(i["start_time"], i["stop_time"], i["tags"]) for i in attrs["invalid_times"]]
        assert got == rows
        assert attrs["invalid_time_mask_tags"] == ["all_probes", name]
        # AllenSDK: a row masks when any of its tags is "all_probes" or the probe's name;
        # samples with start <= t <= stop become NaN
        t = full.time.values
        bad = np.zeros(t.size, bool)
        for start, stop, tags in rows:
            if "all_probes" in tags or name in tags:
                bad |= (t >= start) & (t <= stop)
        masked = lfp.get_lfp(store, mask_invalid_intervals=True)
        assert np.array_equal(np.isnan(masked.values).all(axis=1), bad)
        assert not np.isnan(masked.values[~bad]).any()
        assert np.array_equal(masked.values[~bad], nwb_lfp(path)["data"][~bad])
        assert np.array_equal(lfp.get_lfp(store, mask_invalid_intervals=False), full.lfp)
        # a slice masks the same way (the attributes travel with it)
        part = lfp.mask_invalid(full.lfp.isel(time=slice(500, 3000)))
        assert np.array_equal(np.isnan(part.values).all(axis=1), bad[500:3000])
        masked_somewhere.add((name, int(bad.sum())))
    # the synthetic sessions hold an all_probes interval and one for the first LFP probe only
    counts = sorted(n for _, n in masked_somewhere)
    assert counts[0] > 0 and counts[-1] > counts[0]


def test_overview_equals_whole_array_decimation(converted):
    for path, _, store in converted:
        want = nwb_lfp(path)
        over = lfp.open_store(store, group="overview")
        assert over.attrs["decimation_factor"] == 10
        whole = lfp.decimate(want["data"], 10)
        assert over.lfp.shape == (-(-want["data"].shape[0] // 10), want["data"].shape[1])
        np.testing.assert_allclose(over.lfp.values, whole, rtol=1e-6, atol=1e-12)
        assert np.array_equal(over.time.values, want["time"][::10])
        assert np.array_equal(over.channel.values, want["channel"])


@pytest.mark.parametrize("n", [1, 9, 10, 199, 201, 1000, 4321])
@pytest.mark.parametrize("block", [10, 30, 500])
def test_decimator_blockwise_equals_whole_array(n, block):
    rng = np.random.default_rng(n)
    x = rng.normal(size=(n, 3)).astype(np.float32)
    d = lfp.Decimator(10, n)
    parts = [d.push(x[a : a + block]) for a in range(0, n, block)]
    got = np.concatenate(parts)
    np.testing.assert_allclose(got, lfp.decimate(x, 10), rtol=1e-6, atol=1e-7)
    assert got.shape == (-(-n // 10), 3)


def test_antialias_filter_passes_low_and_rejects_aliasing_frequencies():
    fs, n = 1250.0, 12500
    t = np.arange(n) / fs
    x = np.stack([np.sin(2 * np.pi * 10 * t), np.sin(2 * np.pi * 100 * t)], axis=1)
    y = lfp.decimate(x.astype(np.float32), 10)[50:-50]  # away from the extended ends
    assert np.max(np.abs(y[:, 0])) == pytest.approx(1.0, abs=2e-3)  # 10 Hz kept
    # 100 Hz would alias to 25 Hz at 125 Hz; the filter takes it down by > 70 dB
    assert np.max(np.abs(y[:, 1])) < 3e-4
    # plain subsampling (no filter) would have kept it at full amplitude
    assert np.max(np.abs(x[::10][50:-50, 1])) > 0.9


def test_csd_equals_the_file_as_allensdk_returns_it(converted):
    for path, _, store in converted:
        want = nwb_lfp(path)
        csd = lfp.get_current_source_density(store)
        assert csd.dims == ("virtual_channel_index", "time")
        assert np.array_equal(csd.values, want["csd"].T)
        assert np.array_equal(csd.time.values, want["csd_time"])
        assert np.array_equal(csd.virtual_channel_index.values, np.arange(want["csd"].shape[1]))
        assert np.array_equal(csd.vertical_position.values, want["csd_y"])
        assert np.array_equal(csd.horizontal_position.values, want["csd_x"])
        assert csd.vertical_position.dtype == want["csd_y"].dtype


def tree(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in root.rglob("*") if p.is_file()}


def test_two_runs_give_identical_bytes_and_no_timestamps(synth_dataset, tmp_path):
    path, session = lfp_files(Path(synth_dataset))[0]
    a = lfp.convert_lfp(path, session, tmp_path / "one" / "p.zarr", source_sha256="ab" * 32)
    b = lfp.convert_lfp(path, session, tmp_path / "two" / "p.zarr", source_sha256="ab" * 32)
    first, second = tree(a), tree(b)
    assert first == second
    assert {".zgroup", ".zmetadata", "overview/.zgroup", "csd/csd/0.0"} <= set(first)
    meta = json.loads(first[".zmetadata"])["metadata"]
    assert meta[".zattrs"]["source_sha256"] == "ab" * 32
    assert str(tmp_path) not in first[".zmetadata"].decode()
    # converting again over an existing store replaces it, leaving nothing else behind
    lfp.convert_lfp(path, session, a, source_sha256="ab" * 32)
    assert tree(a) == first
    assert sorted(p.name for p in a.parent.iterdir()) == ["p.zarr"]


def test_wrong_inputs_fail_in_one_line_and_leave_nothing(synth_dataset, tmp_path):
    files = lfp_files(Path(synth_dataset))
    path, session = files[0]
    other_session = next(s for _, s in files if s != session)
    out = tmp_path / "out" / "p.zarr"
    with pytest.raises(NwbError, match="not to .*pass the LFP file's own session NWB") as e:
        lfp.convert_lfp(path, other_session, out)
    assert "\n" not in str(e.value)
    with pytest.raises(NwbError, match="is not an LFP NWB file"):
        lfp.convert_lfp(session, session, out)
    with pytest.raises(FileNotFoundError):
        lfp.convert_lfp(tmp_path / "missing.nwb", session, out)
    assert not out.parent.exists() or not any(out.parent.iterdir())


def test_failure_mid_conversion_leaves_no_partial_store(synth_dataset, tmp_path):
    path, session = lfp_files(Path(synth_dataset))[0]
    broken = tmp_path / "broken_lfp.nwb"
    broken.write_bytes(path.read_bytes())
    with h5py.File(broken, "r+") as f:  # fails after the arrays are written: CSD shape
        g = f["processing/current_source_density/ecephys_csd/current_source_density"]
        del g["timestamps"]
        g["timestamps"] = np.zeros(3)
    out = tmp_path / "stores" / "p.zarr"
    with pytest.raises(NwbError, match="CSD data"):
        lfp.convert_lfp(broken, session, out)
    assert list(out.parent.iterdir()) == []


def test_samples_that_do_not_decode_mid_file_fail_in_one_line(synth_dataset, tmp_path):
    """A corrupt compressed chunk in the middle of the samples (the download check decodes only
    the first and last blocks) fails in the read-ahead thread; the caller gets one line."""
    path, session = lfp_files(Path(synth_dataset))[0]
    broken = tmp_path / "broken_lfp.nwb"
    broken.write_bytes(path.read_bytes())
    pid = nwb_lfp(path)["probe_id"]
    with h5py.File(broken, "r") as f:
        data = f[f"acquisition/probe_{pid}_lfp/probe_{pid}_lfp_data/data"]
        n = data.shape[0]
        info = data.id.get_chunk_info_by_coord((n // 2 // data.chunks[0] * data.chunks[0], 0))
    with open(broken, "r+b") as fh:  # garbage in the middle of one deflate stream
        fh.seek(info.byte_offset + info.size // 2)
        fh.write(bytes(range(256)) * max(1, info.size // 1024))
    out = tmp_path / "stores" / "p.zarr"
    with pytest.raises(NwbError, match="LFP rows .* do not decode .*download it again") as e:
        lfp.convert_lfp(broken, session, out, time_chunk=500, block_chunks=2)
    assert "\n" not in str(e.value)
    assert list(out.parent.iterdir()) == []


@pytest.mark.parametrize("sizes", [[3, 5, 20, 1, 0, 9, 2], [7, 7, 7], [6], [0, 15, 6, 50]])
def test_chunk_rows_writes_whole_chunks_then_the_rest(tmp_path, sizes):
    import zarr

    rng = np.random.default_rng(len(sizes))
    x = rng.normal(size=(sum(sizes), 2))
    arr = zarr.create_array(store=str(tmp_path / "a.zarr"), shape=x.shape, chunks=(7, 2),
                            dtype=x.dtype, zarr_format=2, fill_value=None)  # fmt: skip
    rows = lfp.ChunkRows(arr)
    a = 0
    for k in sizes:
        rows.append(x[a : a + k])
        a += k
        # only whole chunks are written before close; fewer than a chunk is held back
        assert rows.rows % 7 == 0 and rows.rows <= a < rows.rows + 7
        assert np.array_equal(arr[: rows.rows], x[: rows.rows])
    assert rows.close() == len(x)
    assert np.array_equal(arr[:], x)
