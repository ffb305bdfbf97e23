"""Our pipeline on files written by AllenSDK 2.16.2's own NWB writer, judged by AllenSDK's reader
(issues 14 and 16: the oracle must agree "on synthetic files AND on a file written by AllenSDK's
own writer").

One module fixture runs ``tests/oracle/allensdk_writer.py`` in AllenSDK's interpreter (a small
deterministic session: 2 probes, 21 units, 60 s, five stimuli, LFP and CSD on one probe, two
invalid epochs), then our extraction, analysis and LFP conversion on what it wrote, then ONE
oracle subprocess (``tests/oracle/allensdk_oracle.py``: ``nwb`` and ``analysis`` sections) on the
same files. The tests compare with the same functions as tests/test_allensdk_oracle.py
(``oracle_compare``, ``oracle_analysis``). Extraction needs no cache files beside the NWB.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import pytest

import oracle_analysis
from ecephys_pipeline import analysis, extract, lfp
from ecephys_pipeline import nwb as nwb_reader
from oracle_compare import (
    ALLENSDK_PYTHON,
    ORACLE_TIMEOUT_S,
    SKIP_REASON,
    check,
    csd_problems,
    default_units_problems,
    finish_oracle,
    invalid_times_problems,
    lfp_file_problems,
    lfp_store_problems,
    running_problems,
    section,
    spike_problems,
    start_oracle,
    stimulus_problems,
    units_problems,
    waveform_problems,
)

WRITER_SCRIPT = Path(__file__).parent / "oracle" / "allensdk_writer.py"

pytestmark = [
    pytest.mark.allensdk,
    pytest.mark.skipif(ALLENSDK_PYTHON is None, reason=SKIP_REASON),
]

# 10 ms bins from -0.1 s (the flashes' windows reach 0.1 s into the next flash); drifting
# gratings 50 ms bins to 2.5 s, past the 2 s presentations
BINS = {
    "default": {"start": -0.1, "stop": 0.35, "width": 0.01},
    "drifting_gratings": {"start": -0.5, "stop": 2.5, "width": 0.05},
}


@pytest.fixture(scope="module")
def written(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("allensdk_writer")
    out = tmp / "written"
    proc = subprocess.run(
        [ALLENSDK_PYTHON, str(WRITER_SCRIPT), str(out)],
        capture_output=True, text=True, timeout=ORACLE_TIMEOUT_S,
    )  # fmt: skip
    assert proc.returncode == 0, f"AllenSDK's writer failed:\n{proc.stderr[-5000:]}"
    truth = json.loads((out / "truth.json").read_text())
    sid = truth["session_id"]
    nwb = Path(truth["session_nwb"])
    lfp_files = truth["lfp_nwb"]

    # AllenSDK reads the files while we extract, analyse and convert them
    oracle = start_oracle(
        tmp / "oracle",
        nwb={"path": str(nwb), "lfp": lfp_files},  # its stimulus_presentations: this file
        analysis={
            "sessions": {str(sid): str(nwb)},
            "bins": {k: analysis.bin_edges(v).tolist() for k, v in BINS.items()},
            "default_bins": analysis.bin_edges(BINS["default"]).tolist(),
        },
    )
    parquet = tmp / "parquet"
    try:
        extract.extract_session(nwb, parquet, unit_filters=None)
        analysis.analyze_session(parquet, sid, bins=BINS)
        stores = {
            pid: lfp.convert_lfp(path, nwb, tmp / "lfp" / f"probe_id={pid}.zarr")
            for pid, path in lfp_files.items()
        }
    finally:
        result = finish_oracle(oracle, timeout=ORACLE_TIMEOUT_S)
    arrays = {}
    for name in ("nwb_arrays", "analysis_arrays"):
        with np.load(tmp / "oracle" / f"{name}.npz") as npz:
            arrays[name] = {k: npz[k] for k in npz.files}
    return {
        "sid": sid,
        "nwb": nwb,
        "truth": truth,
        "lfp_files": lfp_files,
        "lfp_stores": stores,
        "parquet": parquet,
        "result": result,
        "arrays": arrays["nwb_arrays"],
        "analysis_arrays": arrays["analysis_arrays"],
    }


def read_ours(run, dataset: str) -> pd.DataFrame:
    return pd.read_parquet(run["parquet"] / dataset / f"session_id={run['sid']}")


def test_the_files_are_allensdk_writers(written):
    """What the writer made: its NWB version and layout, not our synthetic writer's."""
    assert written["result"]["allensdk_version"] == "2.16.2"
    with h5py.File(written["nwb"], "r") as f:
        assert f.attrs["nwb_version"] == "2.7.0"
        assert "probe_channel_number" in f["general/extracellular_ephys/electrodes"]
        assert "local_index" not in f["general/extracellular_ephys/electrodes"]
        assert f["general/extracellular_ephys/probeB"].attrs["has_lfp_data"] is np.False_
        assert f["units/waveform_mean"].dtype == np.float32
    assert sorted(written["lfp_files"]) == ["790000101"]


def test_download_verification_accepts_the_files_and_tells_them_apart(written):
    """nwb.file_problem (what downloads and adoption run) reads AllenSDK's files end to end."""
    sid, nwb = written["sid"], written["nwb"]
    ((pid, path),) = written["lfp_files"].items()
    assert nwb_reader.file_problem(nwb, sid) is None
    assert nwb_reader.file_problem(path, sid, int(pid)) is None
    assert "is not the session file of session" in nwb_reader.file_problem(path, sid)
    assert "is the LFP file of probe" in nwb_reader.file_problem(path, sid + 1, int(pid))


def test_units_and_spikes_are_what_the_writer_was_given(written):
    """Every unit of the input, with its spikes at t >= 0; the spikes of clusters that are not
    units (Kilosort output holds them) are dropped."""
    units = read_ours(written, "units")
    spikes = read_ours(written, "spikes")
    truth = written["truth"]["units"]
    assert sorted(units["unit_id"].tolist()) == sorted(int(u) for u in truth)
    counts = spikes.groupby("unit_id").size().to_dict()
    assert counts == {int(u): t["spikes"] for u, t in truth.items()}
    stim = read_ours(written, "stimulus_presentations")
    assert len(stim) == written["truth"]["n_presentations"]


@pytest.fixture(scope="module")
def ours_units(written):
    return read_ours(written, "units").set_index("unit_id")


def test_units_equal_allensdk_filters_off(written, ours_units):
    check(units_problems(section(written, "nwb")["units"], ours_units))


def test_default_unit_set_equals_passes_default_filters(written, ours_units):
    theirs = section(written, "nwb")["units_default"]
    assert 0 < len(theirs) < len(ours_units), "the default filters keep some units, not all"
    check(default_units_problems(theirs, ours_units))


def test_spike_times_and_amplitudes_bit_exact(written):
    section(written, "nwb")
    check(spike_problems(written["arrays"], read_ours(written, "spikes")))


def test_mean_waveforms_exact_per_channel(written):
    section(written, "nwb")
    check(waveform_problems(written["arrays"], read_ours(written, "waveforms")))


def test_stimulus_presentations_equal_allensdk(written):
    got = section(written, "nwb")["stimulus_presentations"]
    stim = read_ours(written, "stimulus_presentations")
    check(stimulus_problems(written["sid"], stim, got))


def test_running_speed_equals_allensdk(written):
    got = section(written, "nwb")
    check(running_problems(got, written["arrays"], read_ours(written, "running_speed")))


def test_lfp_file_opens_in_allensdk(written):
    got = section(written, "nwb")["lfp"]
    check(lfp_file_problems(got, written["arrays"], written["lfp_files"]))


def test_lfp_store_equals_allensdk_get_lfp_both_masking_modes(written):
    problems, masked = lfp_store_problems(written["arrays"], written["lfp_stores"])
    check(problems)
    # both epochs mask probeA's LFP: the probeA one and the all_probes one, ends included
    ((pid, path),) = written["lfp_files"].items()
    with h5py.File(path, "r") as f:
        t = f[f"acquisition/probe_{pid}_lfp/probe_{pid}_lfp_data/timestamps"][:]
    epochs = written["truth"]["invalid_epochs"]
    assert {e["label"] for e in epochs} == {"probeA", "all_probes"}
    want = np.zeros(t.size, bool)
    for e in epochs:
        want |= (t >= e["start_time"]) & (t <= e["end_time"])
    assert masked == want.sum() > 0, f"{masked} LFP samples masked, want {want.sum()}"
    theirs = section(written, "nwb")["invalid_times"]
    check(invalid_times_problems(theirs, next(iter(written["lfp_stores"].values()))))


def test_csd_equals_allensdk_get_current_source_density(written):
    check(csd_problems(written["arrays"], written["lfp_stores"]))


def test_analysis_condition_ids_map_one_to_one(written):
    sid = written["sid"]
    got = section(written, "analysis")[str(sid)]
    check(oracle_analysis.condition_problems(sid, written["parquet"], got, {}))


def test_analysis_tables_equal_allensdk(written):
    """Per stimulus: presentationwise_spike_counts and presentationwise_spike_times exactly,
    conditionwise_spike_statistics (counts and rates) within 1e-12 relative."""
    sid = written["sid"]
    got = section(written, "analysis")[str(sid)]
    assert sorted(got["stimuli"]) == [
        "drifting_gratings", "flashes", "natural_scenes", "spontaneous", "static_gratings",
    ]  # fmt: skip
    problems = []
    for name in got["stimuli"]:
        problems += oracle_analysis.stimulus_problems(
            sid, name, written["parquet"], got, written["analysis_arrays"]
        )
    check(problems)
