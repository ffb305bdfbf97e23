"""The analysis stage (issue 14) on hand-made Parquet sessions whose answers are known: bin and
presentation edges, overlapping presentations, presentations and units without spikes, stimuli a
session lacks, undefined statistics, running speed, condition ids, unit filters, bad options and
deterministic bytes. AllenSDK agreement on the synthetic NWB files is tests/test_allensdk_oracle.py.
"""

from __future__ import annotations

import hashlib
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from ecephys_pipeline import aligned, analysis, extract

SID = 42


def _write(root: Path, dataset: str, table: pa.Table, sub: str = "") -> None:
    path = root / dataset / f"session_id={SID}" / sub / "part-0.parquet"
    extract._write_parquet(table, path, {"ecephys_pipeline.source_file": "hand.nwb"})


def make_session(root: Path, *, units, spikes, presentations, running) -> Path:
    """units: {unit_id: dict of metrics}; spikes: {probe_id: {unit_id: times}};
    presentations: list of dicts (stimulus_name, start_time, stop_time, params...);
    running: (start_times, velocities)."""
    n = len(units)
    ids = sorted(units)
    cols = {f.name: pa.nulls(n, f.type) for f in extract.UNITS_SCHEMA}
    cols["unit_id"] = pa.array(ids, pa.int64())
    cols["spike_count"] = pa.array([0] * n, pa.int64())
    cols["passes_default_filters"] = pa.array([True] * n)
    defaults = {
        "quality": "good",
        "amplitude_cutoff": 0.01,
        "presence_ratio": 0.99,
        "isi_violations": 0.1,
        "channel_local_index": 3,
        "valid_data": True,
        "ecephys_structure_acronym": "VISp",
    }
    for k, v in defaults.items():
        vals = [units[u].get(k, v) for u in ids]
        cols[k] = pa.array(vals, extract.UNITS_SCHEMA.field(k).type)
    _write(root, "units", pa.table(cols, schema=extract.UNITS_SCHEMA))
    for pid, by_unit in spikes.items():
        uid = np.concatenate([np.full(len(t), u) for u, t in sorted(by_unit.items())] or [[]])
        t = np.concatenate([np.asarray(t, float) for _, t in sorted(by_unit.items())] or [[]])
        tab = pa.table(
            {"unit_id": uid.astype(np.int64), "spike_time": t, "spike_amplitude": t * 0},
            schema=extract.SPIKES_SCHEMA,
        )
        _write(root, "spikes", tab, f"probe_id={pid}")
    m = len(presentations)
    cols = {f.name: pa.nulls(m, f.type) for f in extract.STIMULUS_SCHEMA}
    cols["stimulus_presentation_id"] = pa.array(range(m), pa.int64())
    for k in {k for p in presentations for k in p}:
        cols[k] = pa.array([p.get(k) for p in presentations], extract.STIMULUS_SCHEMA.field(k).type)
    _write(root, "stimulus_presentations", pa.table(cols, schema=extract.STIMULUS_SCHEMA))
    st, ve = running
    st = np.asarray(st, float)
    _write(
        root,
        "running_speed",
        pa.table(
            {"start_time": st, "end_time": st + 0.01, "velocity": np.asarray(ve, float)},
            schema=extract.RUNNING_SCHEMA,
        ),
    )
    return root


def read(root: Path, dataset: str) -> pd.DataFrame:
    return pd.read_parquet(root / dataset / f"session_id={SID}")


BINS = {"default": {"start": 0.0, "stop": 0.5, "width": 0.25}}


@pytest.fixture
def edges_session(tmp_path):
    """Flash presentations at 10 s (0.5 s long) and 20 s; unit 1 spikes exactly on the onset,
    on the inner bin edge (10.25), on the stop (10.5) and at 10.1; unit 2 never spikes."""
    return make_session(
        tmp_path / "pq",
        units={1: {}, 2: {}},
        spikes={7: {1: [5.0, 10.0, 10.1, 10.25, 10.5, 30.0]}},
        presentations=[
            {"stimulus_name": "flashes", "start_time": 10.0, "stop_time": 10.5, "color": "1.0"},
            {"stimulus_name": "flashes", "start_time": 20.0, "stop_time": 20.5, "color": "1.0"},
        ],
        running=([9.9, 10.0, 10.2, 10.5, 20.6], [100.0, 1.0, 2.0, 50.0, 7.0]),
    )


def test_bins_and_presentations_are_half_open(edges_session):
    analysis.analyze_session(edges_session, SID, bins=BINS)
    counts = read(edges_session, "presentation_spike_counts")
    got = {(r.stimulus_presentation_id, r.unit_id, r.bin_index): r.spike_count
           for r in counts.itertuples()}  # fmt: skip
    # [10.0, 10.25) holds 10.0 and 10.1; [10.25, 10.5) holds 10.25 only (AllenSDK: 10.25 in
    # both bins, 10.5 in the second too); nothing for presentation 1 or unit 2 (sparse)
    assert got == {(0, 1, 0): 2, (0, 1, 1): 1}
    assert counts["bin_start"].tolist() == [0.0, 0.25] and counts["bin_stop"].tolist() == [
        0.25,
        0.5,
    ]
    times = read(edges_session, "presentation_spike_times")
    # the spike at onset belongs to the presentation (AllenSDK drops it), the one at stop not
    assert times["spike_time"].tolist() == [10.0, 10.1, 10.25]
    assert times["time_since_stimulus_presentation_onset"].tolist() == [
        0.0,
        10.1 - 10.0,
        0.25,
    ]
    assert set(times["stimulus_presentation_id"]) == {0}


def test_statistics_include_presentations_and_units_without_spikes(edges_session):
    analysis.analyze_session(edges_session, SID, bins=BINS)
    stats = read(edges_session, "condition_spike_statistics").set_index("unit_id")
    assert list(stats.index) == [1, 2], "a unit without spikes still has its row"
    one, two = stats.loc[1], stats.loc[2]
    assert one.stimulus_presentation_count == 2 and one.spike_count == 3
    assert one.spike_mean == 1.5
    assert one.spike_std == pytest.approx(math.sqrt(4.5))  # counts 3 and 0, ddof 1
    assert one.spike_sem == pytest.approx(math.sqrt(4.5) / math.sqrt(2))
    assert one.spike_rate_mean == pytest.approx(3.0)  # 6 Hz and 0 Hz over 0.5 s
    assert (two.spike_count, two.spike_mean, two.spike_std, two.spike_rate_mean) == (0, 0, 0, 0)


def test_running_speed_per_presentation(edges_session):
    analysis.analyze_session(edges_session, SID, bins=BINS)
    run = read(edges_session, "presentation_running_speed").set_index("stimulus_presentation_id")
    # samples starting in [10.0, 10.5): 1.0 and 2.0; none in [20.0, 20.5)
    assert run.loc[0, "running_speed_sample_count"] == 2
    assert run.loc[0, "running_speed_mean"] == 1.5
    assert run.loc[1, "running_speed_sample_count"] == 0
    assert pd.isna(run.loc[1, "running_speed_mean"])
    assert run["duration"].tolist() == [0.5, 0.5]


def test_overlapping_presentations_each_count_their_spikes(tmp_path):
    root = make_session(
        tmp_path / "pq",
        units={1: {}},
        spikes={7: {1: [1.05, 1.15, 1.25, 5.0]}},
        presentations=[
            {"stimulus_name": "spontaneous", "start_time": 0.0, "stop_time": 10.0},
            {"stimulus_name": "gabors", "start_time": 1.0, "stop_time": 1.2, "orientation": 0.0},
            {"stimulus_name": "gabors", "start_time": 1.1, "stop_time": 1.3, "orientation": 0.0},
        ],
        running=([], []),
    )
    analysis.analyze_session(root, SID, bins={"default": {"start": 0, "stop": 0.2, "width": 0.1}})
    times = read(root, "presentation_spike_times")
    per = times.groupby("stimulus_presentation_id")["spike_time"].apply(list).to_dict()
    assert per == {0: [1.05, 1.15, 1.25, 5.0], 1: [1.05, 1.15], 2: [1.15, 1.25]}
    counts = read(root, "presentation_spike_counts")
    g = counts[counts["stimulus_name"] == "gabors"]
    assert g.groupby("stimulus_presentation_id")["spike_count"].sum().to_dict() == {1: 2, 2: 2}
    stats = read(root, "condition_spike_statistics").set_index("stimulus_name")
    assert stats.loc["gabors", "spike_count"] == 4, "1.15 counts for both presentations"
    # one presentation in the spontaneous condition: std and SEM are undefined -> null
    assert pd.isna(stats.loc["spontaneous", "spike_std"])
    assert pd.isna(stats.loc["spontaneous", "spike_sem"])
    assert stats.loc["spontaneous", "spike_mean"] == 4.0


def test_conditions_first_appearance_nulls_and_ids_on_every_row(tmp_path):
    pres = [
        {"stimulus_name": "drifting_gratings", "orientation": 90.0, "spatial_frequency": "0.04"},
        {"stimulus_name": "drifting_gratings", "orientation": None, "spatial_frequency": None},
        {"stimulus_name": "drifting_gratings", "orientation": 0.0, "spatial_frequency": "0.04"},
        {"stimulus_name": "drifting_gratings", "orientation": 90.0, "spatial_frequency": "0.04"},
        {"stimulus_name": "flashes", "orientation": None, "spatial_frequency": None},
        {"stimulus_name": "drifting_gratings", "orientation": -0.0, "spatial_frequency": "0.04"},
    ]
    for k, p in enumerate(pres):
        p.update(start_time=float(k), stop_time=k + 0.5, stimulus_block=float(k))
    root = make_session(
        tmp_path / "pq", units={1: {}}, spikes={}, presentations=pres, running=([], [])
    )
    analysis.analyze_session(root, SID, bins=BINS)
    conds = read(root, "stimulus_conditions")
    assert conds["stimulus_condition_id"].tolist() == [0, 1, 2, 3]
    assert conds["stimulus_name"].tolist() == ["drifting_gratings"] * 3 + ["flashes"]
    assert conds["stimulus_presentation_count"].tolist() == [2, 1, 2, 1]
    assert pd.isna(conds.loc[1, "orientation"]) and conds.loc[2, "orientation"] == 0.0
    assert "stimulus_block" not in conds.columns and "start_time" not in conds.columns
    run = read(root, "presentation_running_speed").sort_values("stimulus_presentation_id")
    assert run["stimulus_condition_id"].tolist() == [0, 1, 2, 0, 3, 2]
    # no spikes at all: empty counts and times, statistics all zero
    assert len(read(root, "presentation_spike_counts")) == 0
    assert len(read(root, "presentation_spike_times")) == 0
    stats = read(root, "condition_spike_statistics")
    assert len(stats) == 4 and stats["spike_count"].sum() == 0


def test_stimuli_option_skips_what_the_session_lacks(edges_session):
    summary = analysis.analyze_session(
        edges_session, SID, bins=BINS, stimuli=["natural_scenes", "flashes"]
    )
    assert summary["stimuli"] == ["flashes"]
    summary = analysis.analyze_session(edges_session, SID, bins=BINS, stimuli=["dot_motion"])
    assert summary["stimuli"] == []
    for d in analysis.ANALYSIS_DATASETS[1:]:
        df = read(edges_session, d)
        assert len(df) == 0 and list(df.columns) == analysis.SCHEMAS[d].names
    assert len(read(edges_session, "stimulus_conditions")) == 1


def test_unit_filters_restrict_the_units(edges_session, tmp_path):
    make_session(
        tmp_path / "f",
        units={1: {"quality": "noise"}, 2: {}, 3: {"presence_ratio": float("nan")}},
        spikes={7: {1: [10.1], 2: [10.2]}, 8: {3: [10.3]}},
        presentations=[{"stimulus_name": "flashes", "start_time": 10.0, "stop_time": 10.5}],
        running=([], []),
    )
    analysis.analyze_session(tmp_path / "f", SID, bins=BINS)
    assert set(read(tmp_path / "f", "presentation_spike_times")["unit_id"]) == {1, 2, 3}
    analysis.analyze_session(tmp_path / "f", SID, bins=BINS, unit_filters={})
    assert set(read(tmp_path / "f", "presentation_spike_times")["unit_id"]) == {2}
    assert set(read(tmp_path / "f", "condition_spike_statistics")["unit_id"]) == {2}


def test_zero_duration_presentation_has_no_rate(tmp_path):
    root = make_session(
        tmp_path / "pq",
        units={1: {}},
        spikes={7: {1: [1.0]}},
        presentations=[
            {"stimulus_name": "flashes", "start_time": 1.0, "stop_time": 1.0},
            {"stimulus_name": "flashes", "start_time": 2.0, "stop_time": 2.5},
        ],
        running=([], []),
    )
    analysis.analyze_session(root, SID, bins=BINS)
    stats = read(root, "condition_spike_statistics").iloc[0]
    assert stats.spike_count == 0 and stats.stimulus_presentation_count == 2
    assert pd.isna(stats.spike_rate_mean), "a rate over 0 s is undefined (AllenSDK: NaN/inf)"
    counts = read(root, "presentation_spike_counts")
    assert counts["spike_count"].tolist() == [1], "the bins still count from onset"


def test_same_inputs_same_bytes(edges_session, tmp_path):
    def digest() -> dict:
        return {
            str(p.relative_to(edges_session)): hashlib.sha256(p.read_bytes()).hexdigest()
            for d in analysis.ANALYSIS_DATASETS
            for p in sorted((edges_session / d).rglob("*.parquet"))
        }

    analysis.analyze_session(edges_session, SID, bins=BINS)
    first = digest()
    analysis.analyze_session(edges_session, SID, bins=BINS)
    assert digest() == first and len(first) == 5
    assert not [p for p in edges_session.parent.iterdir() if p.name.startswith(".")]


@pytest.mark.parametrize(
    "spec, message",
    [
        ({"start": 0, "stop": 0.35, "width": 0.1}, "not a whole number of bins"),
        ({"start": 0.5, "stop": 0.1, "width": 0.1}, "start < stop"),
        ({"start": 0, "stop": 1}, "needs numbers start, stop and width"),
    ],
)
def test_bad_bins_one_clear_line(edges_session, spec, message):
    with pytest.raises(analysis.AnalysisError, match=message) as err:
        analysis.analyze_session(edges_session, SID, bins={"flashes": spec})
    assert "\n" not in str(err.value) and "analysis.bins.flashes" in str(err.value)


def test_missing_extract_output_is_named(tmp_path):
    with pytest.raises(analysis.AnalysisError, match="extract session 42 first"):
        analysis.analyze_session(tmp_path, SID)


def test_bin_of_settles_on_exact_absolute_edges():
    """t - onset can round across an edge; the bin must follow onset + edge as AllenSDK does."""
    edges = analysis.bin_edges({"start": -0.1, "stop": 0.35, "width": 0.01})
    rng = np.random.default_rng(3)
    onset = rng.uniform(0, 9000, 20000)
    j = rng.integers(0, edges.size - 1, onset.size)
    t = onset + edges[j]  # exactly on an absolute edge
    got = aligned._bin_of(t, onset, edges)
    assert np.array_equal(got, j)
    brute = np.array(
        [np.searchsorted(o + edges, x, side="right") - 1 for o, x in zip(onset, t, strict=True)]
    )
    assert np.array_equal(got, brute)


def test_random_session_equals_brute_force_in_any_chunking(tmp_path):
    """Random spikes, overlapping presentations of random lengths, windows reaching over
    neighbours: every table equals a per-(unit, presentation) brute force, whatever the chunk."""
    rng = np.random.default_rng(11)
    spikes = {u: np.sort(rng.uniform(0, 60, rng.integers(0, 400))) for u in range(1, 13)}
    spikes[5] = np.empty(0)
    starts = np.sort(rng.uniform(1, 55, 80))
    pres = [
        {"stimulus_name": "gabors" if k % 3 else "flashes", "start_time": float(s),
         "stop_time": float(s + rng.choice([0.0, 0.1, 0.25, 2.0])),
         "orientation": float(rng.choice([0.0, 90.0]))}
        for k, s in enumerate(starts)
    ]  # fmt: skip
    root = make_session(
        tmp_path / "pq",
        units={u: {} for u in spikes},
        spikes={
            1: {u: t for u, t in spikes.items() if u % 2},
            2: {u: t for u, t in spikes.items() if not u % 2},
        },
        presentations=pres,
        running=(np.arange(0, 60, 0.1), rng.normal(10, 3, 600)),
    )
    bins = {"default": {"start": -0.2, "stop": 0.5, "width": 0.05}}
    edges = analysis.bin_edges(bins["default"])
    analysis.analyze_session(root, SID, tmp_path / "one", bins=bins)
    analysis.analyze_session(root, SID, tmp_path / "many", bins=bins, chunk_spikes=1)
    for d in analysis.ANALYSIS_DATASETS:
        one = pd.read_parquet(tmp_path / "one" / d / f"session_id={SID}")
        assert one.equals(pd.read_parquet(tmp_path / "many" / d / f"session_id={SID}")), d

    counts = pd.read_parquet(tmp_path / "one/presentation_spike_counts")
    got = {(r.unit_id, r.stimulus_presentation_id, r.bin_index): r.spike_count
           for r in counts.itertuples()}  # fmt: skip
    times = pd.read_parquet(tmp_path / "one/presentation_spike_times")
    got_times = times.groupby(["unit_id", "stimulus_presentation_id"])["spike_time"].apply(list)
    want, want_times = {}, {}
    for u, t in spikes.items():
        for k, p in enumerate(pres):
            for j in range(edges.size - 1):
                n = int(
                    np.sum((t >= p["start_time"] + edges[j]) & (t < p["start_time"] + edges[j + 1]))
                )
                if n:
                    want[(u, k, j)] = n
            inside = t[(t >= p["start_time"]) & (t < p["stop_time"])]
            if inside.size:
                want_times[(u, k)] = inside.tolist()
    assert got == want
    assert got_times.to_dict() == want_times
    stats = pd.read_parquet(tmp_path / "one/condition_spike_statistics")
    assert len(stats) == 12 * 4 and stats["spike_count"].sum() == sum(map(len, want_times.values()))


def test_cli_analyze_writes_the_tables_and_names_bad_input(edges_session):
    import json
    import subprocess
    import sys

    cmd = [sys.executable, "-m", "ecephys_pipeline", "analyze", "--parquet", str(edges_session)]
    ok = subprocess.run(
        [*cmd, "--session-id", str(SID), "--bins", json.dumps(BINS)],
        capture_output=True,
        text=True,
    )
    assert ok.returncode == 0, ok.stderr
    assert json.loads(ok.stdout)["counts"]["presentation_spike_counts"] == 2
    bad = subprocess.run(
        [*cmd, "--session-id", str(SID), "--bins", '{"default": {"start": 0, "stop": 1}}'],
        capture_output=True,
        text=True,
    )
    assert bad.returncode == 2 and "Traceback" not in bad.stderr
    assert bad.stderr.startswith("error: analysis.bins.default: needs numbers")
    missing = subprocess.run([*cmd, "--session-id", "7"], capture_output=True, text=True)
    assert missing.returncode == 2 and "extract session 7 first" in missing.stderr
