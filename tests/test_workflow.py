"""End to end: the real `snakemake` on the demo config, offline, in a fresh directory."""

from __future__ import annotations

import hashlib
import json
import re
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
import xarray as xr

import workflow_helpers as helpers

pytestmark = pytest.mark.e2e


def nwb_spikes(path: Path) -> dict[int, tuple[np.ndarray, np.ndarray]]:
    """Every unit's spike times and amplitudes straight from the HDF5 datasets."""
    with h5py.File(path, "r") as f:
        ids = f["units/id"][:]
        index = f["units/spike_times_index"][:].astype(np.int64)
        times = f["units/spike_times"][:]
        amps = f["units/spike_amplitudes"][:]
    starts = np.concatenate([[0], index[:-1]])
    return {int(u): (times[a:b], amps[a:b]) for u, a, b in zip(ids, starts, index, strict=True)}


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    workdir = helpers.copy_workflow(tmp_path_factory.mktemp("demo"))
    # every unit, so that every unit of every NWB can be compared with the Parquet; with LFP,
    # which the demo config turns into stores
    spec = workdir / "config" / "all_units.yaml"
    spec.write_text(helpers.ALL_UNITS_SPEC + "fetch_lfp: true\n")
    first = helpers.run_snakemake(workdir, "--config", f"selection={spec.relative_to(workdir)}")
    return workdir, first


def test_demo_produces_every_output(demo_run):
    workdir, _ = demo_run
    selection = json.loads((workdir / "results/selection/selection.json").read_text())
    assert len(selection["sessions"]) >= 2
    lock = json.loads((workdir / "results/ecephys.lock.json").read_text())
    cache = workdir / "resources/allen_cache"
    for table in ("sessions", "probes", "channels", "units"):
        assert (cache / f"{table}.csv").exists()
    assert json.loads((cache / "manifest.json").read_text())["manifest"][0]["value"] == "0.3.0"
    for session in selection["sessions"]:
        sid = session["session_id"]
        nwb = cache / f"session_{sid}/session_{sid}.nwb"
        entry = lock["files"][f"session_{sid}/session_{sid}.nwb"]
        assert entry["sha256"] == hashlib.sha256(nwb.read_bytes()).hexdigest()
        for probe in session["probes"]:
            lfp = cache / f"session_{sid}/probe_{probe['probe_id']}_lfp.nwb"
            assert lfp.exists() == probe["download_lfp"]
            spikes = workdir / "results/parquet/spikes" / f"session_id={sid}"
            assert (spikes / f"probe_id={probe['probe_id']}" / "part-0.parquet").exists()
    assert not list(cache.rglob("*.part")), "no partial download left behind"


def test_every_spike_time_equals_the_nwb(demo_run):
    workdir, _ = demo_run
    cache = workdir / "resources/allen_cache"
    checked = 0
    for nwb in sorted(cache.glob("session_*/session_*.nwb")):
        sid = int(nwb.stem.split("_")[1])
        expected = nwb_spikes(nwb)
        table = pq.read_table(workdir / f"results/parquet/spikes/session_id={sid}").to_pandas()
        assert table["spike_time"].dtype == np.float64
        assert set(table["unit_id"].unique()) <= set(expected)
        units = pd.read_parquet(workdir / f"results/parquet/units/session_id={sid}")
        assert set(units["unit_id"]) == set(expected), "every unit of the NWB is extracted"
        for unit_id, group in table.groupby("unit_id", sort=True):
            times, amps = expected[int(unit_id)]
            assert np.array_equal(group["spike_time"].to_numpy(), times)
            assert np.array_equal(group["spike_amplitude"].to_numpy(), amps)
            checked += 1
        no_spikes = {u for u, (t, _) in expected.items() if len(t) == 0}
        assert set(table["unit_id"].unique()) | no_spikes == set(expected)
    assert checked > 0


def test_second_run_has_nothing_to_do(demo_run):
    workdir, _ = demo_run
    spec = "config/all_units.yaml"
    again = helpers.run_snakemake(workdir, "--config", f"selection={spec}")
    assert "Nothing to be done" in again.stderr + again.stdout


def test_readme_queries_agree_across_pandas_polars_duckdb(demo_run, monkeypatch):
    """The README's cross-session query, as written there, gives one answer in all three readers."""
    workdir, _ = demo_run
    readme = (helpers.REPO / "README.md").read_text()
    section = readme[readme.index("### Reading the Parquet") : readme.index("### Tuning curves")]
    blocks = re.findall(r"```python\n(.*?)```", section, re.S)
    assert len(blocks) == 3
    monkeypatch.chdir(workdir)
    results = []
    for block in blocks:
        namespace: dict = {}
        exec(block, namespace)  # noqa: S102 - the README's own example code
        results.append(namespace["counts"])
    by_pandas = results[0].sort_index()
    by_polars = results[1].to_pandas().set_index("unit_id")["len"].sort_index()
    by_duckdb = results[2].set_index("unit_id")["n_spikes"].sort_index()
    assert len(by_pandas) > 0 and by_pandas.sum() > 0
    assert by_pandas.to_dict() == by_polars.to_dict() == by_duckdb.to_dict()


def test_demo_builds_one_lfp_store_per_lfp_file(demo_run):
    """lfp_arrays.enabled in the demo config: every downloaded LFP NWB has its store, equal to
    the file (the store's own checks are in test_lfp.py)."""
    workdir, _ = demo_run
    cache = workdir / "resources/allen_cache"
    lfp_files = sorted(cache.glob("session_*/probe_*_lfp.nwb"))
    assert lfp_files
    for path in lfp_files:
        sid = path.parent.name.removeprefix("session_")
        pid = path.name.split("_")[1]
        store = workdir / f"results/lfp/session_id={sid}/probe_id={pid}.zarr"
        ds = xr.open_zarr(store)
        with h5py.File(path, "r") as f:
            series = f[f"acquisition/probe_{pid}_lfp/probe_{pid}_lfp_data"]
            assert np.array_equal(ds.lfp.values, series["data"][()])
            assert np.array_equal(ds.time.values, series["timestamps"][()])
        record = json.loads(path.with_name(path.name + ".download.json").read_text())
        assert ds.attrs["source_sha256"] == record["sha256"]
        assert (ds.attrs["session_id"], ds.attrs["probe_id"]) == (int(sid), int(pid))
    assert len(list((workdir / "results/lfp").glob("*/*.zarr"))) == len(lfp_files)


def test_readme_lfp_query_reads_the_visp_window(demo_run, monkeypatch):
    """The README's LFP query, as written there: 10 s of VISp channels around the first flash
    equal the NWB's samples in that window on those channels."""
    workdir, _ = demo_run
    readme = (helpers.REPO / "README.md").read_text()
    section = readme[readme.index("### Reading the LFP stores") : readme.index("### Reading the P")]
    (block,) = re.findall(r"```python\n(.*?)```", section, re.S)
    monkeypatch.chdir(workdir)
    namespace: dict = {}
    exec(block, namespace)  # noqa: S102 - the README's own example code
    windows = namespace["windows"]
    assert windows, "the demo has a probe in VISp with LFP around a flash"
    stimuli = pd.read_parquet(workdir / "results/parquet/stimulus_presentations")
    for window in windows:
        sid, pid = window.attrs["session_id"], window.attrs["probe_id"]
        flashes = stimuli[(stimuli.session_id == sid) & (stimuli.stimulus_name == "flashes")]
        t = flashes.start_time.min()
        nwb = workdir / f"resources/allen_cache/session_{sid}/probe_{pid}_lfp.nwb"
        with h5py.File(nwb, "r") as f:
            series = f[f"acquisition/probe_{pid}_lfp/probe_{pid}_lfp_data"]
            times = series["timestamps"][()]
            rows = (times >= t - 5) & (times <= t + 5)
            ids = f["general/extracellular_ephys/electrodes/id"][()]
            areas = f["general/extracellular_ephys/electrodes/location"].asstr()[()]
            cols = areas == "VISp"
            want = series["data"][()][rows][:, cols]
        assert rows.sum() > 0 and cols.sum() > 0
        assert window.shape == want.shape
        assert np.array_equal(window.values, want)
        assert np.array_equal(window.channel.values, ids[cols])
        assert np.array_equal(window.time.values, times[rows])


def test_readme_tuning_curves_agree_across_readers_and_with_the_spike_times(demo_run, monkeypatch):
    """The README's preferred-orientation example gives one answer in pandas, Polars and DuckDB,
    and the same answer recomputed from presentation_spike_times (rates per presentation)."""
    workdir, _ = demo_run
    readme = (helpers.REPO / "README.md").read_text()
    section = readme[readme.index("### Tuning curves") : readme.index("## Lock files")]
    blocks = re.findall(r"```python\n(.*?)```", section, re.S)
    assert len(blocks) == 3
    monkeypatch.chdir(workdir)
    answers = []
    for block in blocks:
        namespace: dict = {}
        exec(block, namespace)  # noqa: S102 - the README's own example code
        got = namespace["preferred"]
        got = got if isinstance(got, pd.DataFrame) else got.to_pandas()
        answers.append(
            {(int(r.session_id), int(r.unit_id)): float(r.orientation) for r in got.itertuples()}
        )
    assert answers[0] == answers[1] == answers[2]
    assert len(answers[0]) > 0 and len(set(answers[0].values())) > 1

    # independently: spikes per presentation from presentation_spike_times, / duration
    root = workdir / "results/parquet"
    times = pd.read_parquet(root / "presentation_spike_times")
    pres = pd.read_parquet(root / "presentation_running_speed")
    conds = pd.read_parquet(root / "stimulus_conditions")
    units = pd.read_parquet(root / "units", columns=["session_id", "unit_id"])
    for frame in (times, pres, conds, units):
        frame["session_id"] = frame["session_id"].astype(int)
    pres = pres[pres.stimulus_name == "drifting_gratings"]
    grid = pres.merge(units, on="session_id")
    n = times.groupby(["session_id", "stimulus_presentation_id", "unit_id"]).size()
    grid["n"] = (
        n.reindex(
            pd.MultiIndex.from_frame(grid[["session_id", "stimulus_presentation_id", "unit_id"]])
        )
        .fillna(0)
        .to_numpy()
    )
    grid["rate"] = grid["n"] / grid["duration"]
    grid = grid.merge(
        conds[["session_id", "stimulus_condition_id", "orientation"]],
        on=["session_id", "stimulus_condition_id"],
    ).dropna(subset=["orientation"])
    per_cond = grid.groupby(["session_id", "unit_id", "stimulus_condition_id", "orientation"])[
        "rate"
    ].mean()
    tuning = per_cond.groupby(["session_id", "unit_id", "orientation"]).mean()
    for (sid, uid), ori in answers[0].items():
        curve = tuning.loc[(sid, uid)]
        assert curve.max() == pytest.approx(curve.loc[ori], rel=1e-12, abs=1e-12), (sid, uid)


def test_rule_scripts_find_the_package_without_an_install(tmp_path):
    """With --sdm conda the jobs run in workflow/envs/pipeline.yaml, which has only the
    dependencies: Snakemake puts a script's folder on sys.path, and the package is linked into
    it."""
    bare = tmp_path / "bare"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(bare)], check=True)
    code = (
        "import sys; sys.path.append('workflow/scripts'); "
        "import ecephys_pipeline.logs as m; print(m.__file__)"
    )
    out = subprocess.run(
        [str(bare / "bin/python"), "-c", code],
        cwd=helpers.REPO,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    assert Path(out).resolve() == helpers.REPO / "src/ecephys_pipeline/logs.py"
