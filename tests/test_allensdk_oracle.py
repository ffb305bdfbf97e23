"""AllenSDK 2.16.2 as an independent oracle for the fake warehouse, the synthetic NWB files and
our outputs (issue 8). See tests/oracle/README.md.

One module-scoped fixture does all the work: it serves a synthetic dataset from the fake
warehouse, fetches the metadata our way (dir A), runs the demo workflow, extracts one session to
Parquet, then runs ONE AllenSDK subprocess (``tests/oracle/allensdk_oracle.py``, in AllenSDK's own
virtualenv) that reads the same things AllenSDK's way and writes what it got to JSON / ``.npz``.
The tests below only compare; every failure names the table, column, row id and both values.
"""

from __future__ import annotations

import hashlib
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import oracle_analysis
import workflow_helpers as helpers
from ecephys_pipeline import analysis, extract, lfp, metadata, selection, synth
from ecephys_pipeline.fake import FakeWarehouse
from ecephys_pipeline.sources import Source, fetch_table
from oracle_compare import (
    ALLENSDK_PYTHON,
    ORACLE_TIMEOUT_S,
    SKIP_REASON,
    check,
    compare_frame,
    csd_problems,
    default_units_problems,
    dtype_name,
    finish_oracle,
    frame_rows,
    invalid_times_problems,
    lfp_file_problems,
    lfp_problems,
    lfp_store_problems,
    py,
    running_problems,
    same,
    section,
    spike_problems,
    start_oracle,
    stimulus_problems,
    units_problems,
    waveform_problems,
)

TABLES = ("sessions", "probes", "channels", "units")

pytestmark = [
    pytest.mark.allensdk,
    pytest.mark.e2e,  # the fixture runs the demo workflow
    pytest.mark.skipif(
        ALLENSDK_PYTHON is None,
        reason=SKIP_REASON,
    ),
]


# ------------------------------------------------------------------------------ helpers


class Tripwire:
    """A real HTTP server that must never be asked for anything: it records and answers 503."""

    def __init__(self):
        self.requests: list[str] = []
        seen = self.requests

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802 - BaseHTTPRequestHandler's name
                seen.append(f"{self.command} {self.path}")
                self.send_response(503)
                self.send_header("Content-Length", "0")
                self.end_headers()

            do_HEAD = do_POST = do_GET  # noqa: N815

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.host = f"127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()


def sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


# ------------------------------------------------------------------------------ the one run


@pytest.fixture(scope="module")
def run(synth_dataset, tmp_path_factory):
    root = Path(synth_dataset)
    tmp = tmp_path_factory.mktemp("allensdk_oracle")
    probes = json.loads((root / "warehouse/EcephysProbe.json").read_text())
    by_session: dict[int, list[dict]] = {}
    for p in probes:
        by_session.setdefault(p["ecephys_session_id"], []).append(p)
    # a session with a probe that has LFP and one that has not
    sid = next(s for s, ps in sorted(by_session.items())
               if {p["use_lfp_data"] for p in ps} == {True, False})  # fmt: skip
    lfp_probe = next(p["id"] for p in by_session[sid] if p["use_lfp_data"])
    no_lfp_probe = next(p["id"] for p in by_session[sid] if not p["use_lfp_data"])
    nwb = root / f"files/session_{sid}/session_{sid}.nwb"
    lfp_files = {
        str(p["id"]): str(root / f"files/session_{sid}/probe_{p['id']}_lfp.nwb")
        for p in by_session[sid]
        if p["use_lfp_data"]
    }

    # our LFP stores for the session's LFP files
    stores = {
        pid: lfp.convert_lfp(path, nwb, tmp / "lfp" / f"probe_id={pid}.zarr")
        for pid, path in lfp_files.items()
    }
    # our Parquet for every session, every unit
    parquet = tmp / "parquet"
    session_files = {str(s): str(root / f"files/session_{s}/session_{s}.nwb") for s in by_session}
    for path in session_files.values():
        extract.extract_session(path, parquet, unit_filters=None)
    # and our analysis tables of every session, every unit, every stimulus (default bins)
    for s in by_session:
        analysis.analyze_session(parquet, s, bins=ANALYSIS_BINS)
    analysis_plan = {
        "sessions": session_files,
        "bins": {k: analysis.bin_edges(v).tolist() for k, v in ANALYSIS_BINS.items()},
        "default_bins": analysis.bin_edges(ANALYSIS_BINS["default"]).tolist(),
    }

    ours_dir, theirs_dir = tmp / "ours", tmp / "allensdk_cache"
    workdir = helpers.copy_workflow(tmp / "workflow")
    wf_cache = workdir / "resources/allen_cache"
    catalogue_root = synth.make_dataset(tmp / "catalogue", seed=CATALOGUE_SEED, realistic=True)
    catalogue = catalogue_plan(catalogue_root)
    with FakeWarehouse(root) as fw, Tripwire() as trip, FakeWarehouse(catalogue_root) as cfw:
        source = Source("warehouse", fw.url)
        for table in TABLES:
            metadata.write_table_csv(fetch_table(source, table), ours_dir / f"{table}.csv")
        metadata.write_cache_manifest(ours_dir)
        fw.clear_requests()
        # Two AllenSDK processes, not one: the first (warehouse + NWB) runs while the demo
        # workflow runs (it needs nothing from it), which saves ~40 s; the second needs the
        # workflow's cache. Importing AllenSDK costs ~4 s per process.
        first = start_oracle(
            tmp / "oracle_first",
            warehouse={
                "host": fw.url.removeprefix("http://"),
                "manifest": str(theirs_dir / "manifest.json"),
                "session_id": sid,
                "lfp_probe_id": lfp_probe,
                "no_lfp_probe_id": no_lfp_probe,
            },
            nwb={"path": str(nwb), "lfp": lfp_files, "stimulus_paths": session_files},
            analysis=analysis_plan,
            catalogue={
                "host": cfw.url.removeprefix("http://"),
                "manifest": str(tmp / "catalogue_cache" / "manifest.json"),
                **catalogue,
            },
        )
        try:
            helpers.run_snakemake(workdir)  # the demo: its cache must open in AllenSDK offline
        finally:
            result = finish_oracle(first, timeout=ORACLE_TIMEOUT_S)
        fake_requests = list(fw.requests)
        sel = json.loads((workdir / "results/selection/selection.json").read_text())
        wf_session = sel["sessions"][0]
        wf_lfp = next((p["probe_id"] for p in wf_session["probes"] if p.get("download_lfp")), None)
        second = start_oracle(
            tmp / "oracle_second",
            offline={
                "host": trip.host,
                "manifest": str(wf_cache / "manifest.json"),
                "session_id": wf_session["session_id"],
                "lfp_probe_id": wf_lfp,
            },
        )
        result.update(finish_oracle(second, timeout=ORACLE_TIMEOUT_S))
        tripwire_requests = list(trip.requests)
    with np.load(tmp / "oracle_first" / "nwb_arrays.npz") as npz:
        arrays = {k: npz[k] for k in npz.files}
    analysis_npz = tmp / "oracle_first" / "analysis_arrays.npz"
    analysis_arrays = {}
    if analysis_npz.exists():
        with np.load(analysis_npz) as npz:
            analysis_arrays = {k: npz[k] for k in npz.files}
    return {
        "root": root,
        "sid": sid,
        "nwb": nwb,
        "lfp_probe": lfp_probe,
        "no_lfp_probe": no_lfp_probe,
        "lfp_files": lfp_files,
        "lfp_stores": stores,
        "parquet": parquet,
        "catalogue_root": catalogue_root,
        "catalogue": catalogue,
        "session_ids": sorted(by_session),
        "ours": ours_dir,
        "theirs": theirs_dir,
        "wf_cache": wf_cache,
        "wf_session": wf_session,
        "wf_lfp": wf_lfp,
        "result": result,
        "arrays": arrays,
        "analysis_arrays": analysis_arrays,
        "fake_requests": fake_requests,
        "tripwire_requests": tripwire_requests,
    }


# Bins of the analysis comparison: the default 10 ms bins, and one stimulus with bins reaching
# far past its presentations (drifting gratings run 2 s; 50 ms bins to 2.5 s).
ANALYSIS_BINS = {
    "default": {"start": -0.1, "stop": 0.35, "width": 0.01},
    "drifting_gratings": {"start": -0.5, "stop": 2.5, "width": 0.05},
}


# The realistic 58-session catalogue, seeded so that (as of synth 03b43f4) it shows two id
# collisions; see test_realistic_catalogue_through_allensdk.
CATALOGUE_SEED = 7


def catalogue_plan(root: Path) -> dict:
    """A session NWB and a probe LFP to fetch from the realistic catalogue: a pair whose
    WellKnownFile ids collide if there is one, else the first session and LFP probe."""
    wkfs = json.loads((root / "warehouse/WellKnownFile.json").read_text())
    probes = {p["id"]: p for p in json.loads((root / "warehouse/EcephysProbe.json").read_text())}
    sessions = {
        w["id"]: w["attachable_id"] for w in wkfs if w["attachable_type"] == "EcephysSession"
    }
    lfps = [w for w in wkfs if w["attachable_type"] == "EcephysProbe"]
    lfp = next((w for w in lfps if w["id"] in sessions), lfps[0])
    pid = lfp["attachable_id"]
    sid = probes[pid]["ecephys_session_id"]
    return {"session_id": sessions.get(lfp["id"], sid), "lfp_session_id": sid, "lfp_probe_id": pid}


def read_ours(run, dataset: str, session_id: int | None = None) -> pd.DataFrame:
    """One session's partition of one of our Parquet datasets."""
    sid = run["sid"] if session_id is None else session_id
    return pd.read_parquet(run["parquet"] / dataset / f"session_id={sid}")


def test_oracle_is_allensdk_2_16_2(run):
    assert run["result"]["allensdk_version"] == "2.16.2", run["result"]["allensdk_version"]


# ------------------------------------------------------------------------------ 1. warehouse


@pytest.mark.parametrize("table", TABLES)
def test_cache_csvs_equal_ours(run, table):
    """(a) the CSV AllenSDK's cache wrote from the fake equals the one our metadata path wrote."""
    section(run, "warehouse")
    ours, theirs = run["ours"] / f"{table}.csv", run["theirs"] / f"{table}.csv"
    assert theirs.exists(), f"AllenSDK did not write {theirs}"
    if ours.read_bytes() == theirs.read_bytes():
        return
    # Not byte-equal: say where, then compare the parsed frames exactly.
    a, b = ours.read_text().splitlines(), theirs.read_text().splitlines()
    first = next(
        (i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y), min(len(a), len(b))
    )
    mine, allen = pd.read_csv(ours, index_col="id"), pd.read_csv(theirs, index_col="id")
    problems = [
        f"{table}.csv bytes differ from AllenSDK's first at line {first + 1}:\n"
        f"  ours    ={a[first] if first < len(a) else '<EOF>'}\n"
        f"  AllenSDK={b[first] if first < len(b) else '<EOF>'}"
    ]
    payload = {
        "index_name": allen.index.name,
        "index": [py(i) for i in allen.index],
        "columns": list(allen.columns),
        "dtypes": {c: dtype_name(t) for c, t in allen.dtypes.items()},
        "rows": [[py(v) for v in r] for r in allen.itertuples(index=False, name=None)],
    }
    check(problems + compare_frame(f"{table}.csv", mine, payload))


def test_session_and_probe_tables_equal_allensdk(run):
    """(b) selection.session_table / probe_table == get_session_table() / get_probes()."""
    got = section(run, "warehouse")
    tables = selection.load_tables(run["ours"])
    check(
        compare_frame("get_session_table()", selection.session_table(tables), got["session_table"])
        + compare_frame("get_probes()", selection.probe_table(tables), got["probes"])
    )


def test_channels_and_units_sets_equal_allensdk(run):
    """get_channels() / get_units() (default and unfiltered) hold the rows our tables imply."""
    got = section(run, "warehouse")
    tables = selection.load_tables(run["ours"])
    channels = tables["channels"]
    channels = channels[channels["ecephys_probe_id"].isin(tables["probes"].index)]
    assert got["channels"]["index"] == sorted(channels.index.tolist()), "get_channels() ids"
    units = tables["units"][tables["units"]["ecephys_channel_id"].isin(channels.index)]
    default = selection.filter_units(units)
    unfiltered = selection.filter_units(
        units,
        {"amplitude_cutoff_maximum": None, "presence_ratio_minimum": None,
         "isi_violations_maximum": None},
    )  # fmt: skip
    for name, ours in (("units_default", default), ("units_unfiltered", unfiltered)):
        theirs = set(got[name]["index"])
        mine = set(ours.index.tolist())
        assert mine == theirs, (
            f"get_units() [{name}]: only ours {sorted(mine - theirs)[:10]}, "
            f"only AllenSDK {sorted(theirs - mine)[:10]}"
        )


def test_cache_manifest_equals_ours_byte_for_byte(run):
    """(c) AllenSDK's manifest.json == metadata.write_cache_manifest's."""
    section(run, "warehouse")
    ours = (run["ours"] / "manifest.json").read_bytes()
    theirs = (run["theirs"] / "manifest.json").read_bytes()
    assert ours == theirs, f"manifest.json differs:\nours    ={ours!r}\nAllenSDK={theirs!r}"


def test_session_and_lfp_downloads_through_the_fake(run):
    """(d) get_session_data downloads the NWB (AllenSDK's double-slash path); get_lfp downloads
    and opens the probe's LFP; a probe without LFP gets AllenSDK's own error."""
    got = section(run, "warehouse")
    sid, root = run["sid"], run["root"]
    wkfs = json.loads((root / "warehouse/WellKnownFile.json").read_text())
    wkf = {(w["attachable_type"], w["attachable_id"]): w["id"] for w in wkfs}
    paths = [r["path"] for r in run["fake_requests"]]
    for kind, ident in (("EcephysSession", sid), ("EcephysProbe", run["lfp_probe"])):
        want = f"//api/v2/well_known_file_download/{wkf[(kind, ident)]}"
        assert want in paths, f"no request for {want} ({kind} {ident}); requests: {paths}"
    cached = run["theirs"] / f"session_{sid}/session_{sid}.nwb"
    assert sha256(cached) == sha256(run["nwb"]), "the downloaded session NWB differs from the file"
    lfp_file = run["root"] / f"files/session_{sid}/probe_{run['lfp_probe']}_lfp.nwb"
    cached_lfp = run["theirs"] / f"session_{sid}/probe_{run['lfp_probe']}_lfp.nwb"
    assert sha256(cached_lfp) == sha256(lfp_file), "the downloaded LFP NWB differs from the file"
    check(lfp_problems(got["lfp"], lfp_file, run["lfp_probe"]))
    error = got["no_lfp_error"]
    assert error is not None and error.startswith(
        f"ValueError: expected exactly 1 LFP NWB file for probe {run['no_lfp_probe']}"
    ), f"get_lfp on a probe without LFP: {error!r}"
    # the session as AllenSDK's cache opens it shows the units our Parquet says pass its filters
    units = read_ours(run, "units")
    passing = set(units.loc[units["passes_default_filters"], "unit_id"].tolist())
    theirs = set(got["session_units_default"])  # AllenSDK orders by probe and depth, not id
    assert theirs == passing, (
        f"get_session_data({sid}).units: only AllenSDK {sorted(theirs - passing)[:10]}, "
        f"only our passes_default_filters {sorted(passing - theirs)[:10]}"
    )


CCF = ("anterior_posterior_ccf_coordinate", "dorsal_ventral_ccf_coordinate",
       "left_right_ccf_coordinate")  # fmt: skip


def test_nwb_channels_agree_with_the_warehouse_channels(run):
    """The cache's session.channels overwrite the NWB's structure and CCF columns with the
    warehouse's channels.csv values: the synthetic NWB must agree with the fake's records."""
    merged = frame_rows(section(run, "warehouse")["session_channels"])
    from_nwb = frame_rows(section(run, "nwb")["channels"])  # validity filter off: every channel
    valid = {cid for cid, row in from_nwb.items() if row["valid_data"]}
    assert set(merged) == valid, (
        f"session.channels via the cache: only cache {sorted(set(merged) - valid)[:10]}, "
        f"only NWB-valid {sorted(valid - set(merged))[:10]}"
    )
    problems = []
    for cid, row in merged.items():
        nwb = from_nwb[cid]
        pairs = [("structure_acronym", "ecephys_structure_acronym")] + [(c, c) for c in CCF]
        pairs += [(c, c) for c in ("probe_channel_number", "probe_horizontal_position",
                                   "probe_vertical_position", "probe_id")]  # fmt: skip
        for nwb_col, wh_col in pairs:
            if not same(nwb[nwb_col], row[wh_col]):
                problems.append(f"channel {cid}: NWB {nwb_col}={nwb[nwb_col]!r}, "
                                f"warehouse {wh_col}={row[wh_col]!r}")  # fmt: skip
    check(problems)


def test_workflow_cache_is_a_valid_allensdk_cache_offline(run):
    """(e) the demo workflow's cache opens in AllenSDK with no request to any server."""
    got = section(run, "offline")
    assert run["tripwire_requests"] == [], (
        f"AllenSDK asked the network for {run['tripwire_requests']}: the workflow's cache "
        "directory lacks something AllenSDK expects"
    )
    sessions = pd.read_csv(run["wf_cache"] / "sessions.csv", index_col="id")
    assert got["session_table"]["index"] == sessions.index.tolist()
    sid = run["wf_session"]["session_id"]
    if run["wf_lfp"] is not None:
        lfp = run["wf_cache"] / f"session_{sid}/probe_{run['wf_lfp']}_lfp.nwb"
        check(lfp_problems(got["lfp"], lfp, run["wf_lfp"]))
    assert got["session_units_default"], "the session opened offline shows no units"


# ------------------------------------------------------------------------------ 2. NWB files


@pytest.fixture(scope="module")
def ours_units(run):
    return read_ours(run, "units").set_index("unit_id")


def test_units_equal_allensdk_filters_off(run, ours_units):
    """Unit ids and every shared column of session.units (filters off) equal our Parquet."""
    check(units_problems(section(run, "nwb")["units"], ours_units))


def test_default_unit_set_equals_passes_default_filters(run, ours_units):
    """EcephysSession.from_nwb_path with AllenSDK's default filters shows exactly our
    passes_default_filters units."""
    check(default_units_problems(section(run, "nwb")["units_default"], ours_units))


def test_spike_times_and_amplitudes_bit_exact(run):
    section(run, "nwb")
    check(spike_problems(run["arrays"], read_ours(run, "spikes")))


def test_mean_waveforms_exact_per_channel(run):
    section(run, "nwb")
    check(waveform_problems(run["arrays"], read_ours(run, "waveforms")))


def test_stimulus_presentations_equal_allensdk(run):
    """Every session's presentations: ids, start/stop exact, name and every parameter column
    AllenSDK shows (its "null" = our null; numbers compared as numbers, text as text)."""
    got = section(run, "nwb")
    by_session = got["stimulus_by_session"]
    assert sorted(map(int, by_session)) == run["session_ids"]
    assert by_session[str(run["sid"])] == got["stimulus_presentations"]
    problems = []
    for sid in run["session_ids"]:
        stim = read_ours(run, "stimulus_presentations", sid)
        problems += stimulus_problems(sid, stim, by_session[str(sid)])
    check(problems)


def test_running_speed_equals_allensdk(run):
    got = section(run, "nwb")
    check(running_problems(got, run["arrays"], read_ours(run, "running_speed")))


def test_lfp_files_open_in_allensdk(run):
    got = section(run, "nwb")["lfp"]
    check(lfp_file_problems(got, run["arrays"], run["lfp_files"]))


def test_lfp_stores_equal_allensdk_get_lfp_both_masking_modes(run):
    """Our Zarr store of every LFP file = AllenSDK's get_lfp(pid), unmasked and masked (NaN in
    the session's invalid intervals for that probe), value for value, time and channel ids."""
    problems, masked_total = lfp_store_problems(run["arrays"], run["lfp_stores"])
    check(problems)
    assert masked_total > 0, "the synthetic session's invalid intervals mask some LFP samples"
    theirs = section(run, "nwb")["invalid_times"]
    check(invalid_times_problems(theirs, next(iter(run["lfp_stores"].values()))))


def test_csd_equals_allensdk_get_current_source_density(run):
    check(csd_problems(run["arrays"], run["lfp_stores"]))


# ------------------------------------------------------------------------------ 3. catalogue


def _unique_ids(root: Path, model: str) -> list:
    rows = json.loads((root / "warehouse" / f"{model}.json").read_text())
    seen, dups = set(), []
    for row in rows:
        if row["id"] in seen:
            dups.append(row["id"])
        seen.add(row["id"])
    return dups


def test_realistic_catalogue_through_allensdk(run):
    """The 58-session catalogue through AllenSDK's cache: every table, one session NWB, one LFP.
    Real Allen ids are unique per model; AllenSDK's get_channels() crashes on reused ids and a
    reused WellKnownFile id makes the fake serve one file for two downloads."""
    got = section(run, "catalogue")
    root, plan = run["catalogue_root"], run["catalogue"]
    problems = []
    for model in (
        "EcephysSession",
        "EcephysProbe",
        "EcephysChannel",
        "EcephysUnit",
        "WellKnownFile",
    ):
        dups = _unique_ids(root, model)
        if dups:
            problems.append(f"synth realistic seed {CATALOGUE_SEED}: {model} ids reused: "
                            f"{len(dups)}, e.g. {dups[:5]}")  # fmt: skip
    for table in ("session_table", "probes", "channels", "units"):
        if "error" in got[table]:
            problems.append(f"AllenSDK get_{table}() failed: {got[table]['error'][:300]}")
        elif not got[table]["unique"]:
            problems.append(f"AllenSDK get_{table}() has duplicate ids")
    if got["session"].get("ecephys_session_id") != plan["session_id"]:
        problems.append(f"get_session_data({plan['session_id']}) gave {got['session']}")
    if "error" in got["lfp"]:
        problems.append(f"session {plan['lfp_session_id']}.get_lfp({plan['lfp_probe_id']}) "
                        f"failed: {got['lfp']['error'][:300]}")  # fmt: skip
    else:
        path = synth.ensure_lfp_nwb(root, plan["lfp_probe_id"])
        problems += lfp_problems(got["lfp"], path, plan["lfp_probe_id"])
    check(problems)


# ------------------------------------------------------------------------------ analysis (issue 14)


def test_analysis_condition_ids_map_one_to_one(run):
    got = section(run, "analysis")
    assert sorted(int(s) for s in got if s != "seconds") == run["session_ids"]
    problems = []
    for sid in run["session_ids"]:
        problems += oracle_analysis.condition_problems(
            sid, run["parquet"], got[str(sid)], run["analysis_arrays"]
        )
    check(problems)


def test_analysis_tables_equal_allensdk(run):
    """Per stimulus of every session: presentationwise_spike_counts and presentationwise_spike_
    times exactly, conditionwise_spike_statistics (counts and rates) within 1e-12 relative."""
    got = section(run, "analysis")
    problems = []
    compared = 0
    for sid in run["session_ids"]:
        for name in got[str(sid)]["stimuli"]:
            problems += oracle_analysis.stimulus_problems(
                sid, name, run["parquet"], got[str(sid)], run["analysis_arrays"]
            )
            compared += 1
    assert compared >= 8, "both session types' stimuli were compared"
    check(problems)
