"""nwb.file_problem: is this the file of that session (or probe), and does it decode?

Real synthetic NWB files (pynwb-written, gzip-compressed LFP) are copied and damaged on disk.
"""

from __future__ import annotations

import shutil

import h5py
import pytest

from ecephys_pipeline import nwb, synth


@pytest.fixture(scope="module")
def files(synth_dataset):
    _meta, records = synth.load_records(synth_dataset)
    sessions = [s["id"] for s in records["EcephysSession"]]
    lfp_probes = [
        (p["ecephys_session_id"], p["id"]) for p in records["EcephysProbe"] if p["use_lfp_data"]
    ]
    return synth_dataset, sessions, lfp_probes


def test_the_right_files_pass(files):
    root, sessions, lfp_probes = files
    for sid in sessions:
        assert nwb.file_problem(synth.session_nwb_path(root, sid), sid) is None
    for sid, pid in lfp_probes:
        assert nwb.file_problem(synth.lfp_nwb_path(root, sid, pid), sid, pid) is None


def test_another_sessions_file_is_named(files):
    root, sessions, _ = files
    problem = nwb.file_problem(synth.session_nwb_path(root, sessions[1]), sessions[0])
    assert problem == (
        f"is not the session file of session {sessions[0]}: its /identifier is '{sessions[1]}'"
    )


def test_another_probes_lfp_file_of_the_same_size_is_named(files):
    root, _, lfp_probes = files
    (sid, a), (_, b) = lfp_probes[0], lfp_probes[1]
    problem = nwb.file_problem(synth.lfp_nwb_path(root, sid, b), sid, a)
    assert problem == f"is not the LFP file of probe {a}: its /identifier is '{b}'"
    assert "of session" in nwb.file_problem(synth.lfp_nwb_path(root, sid, a), sid + 1, a)


def test_a_truncated_file_is_refused(files, tmp_path):
    root, sessions, _ = files
    bad = tmp_path / "truncated.nwb"
    shutil.copy(synth.session_nwb_path(root, sessions[0]), bad)
    with open(bad, "r+b") as handle:
        handle.truncate(bad.stat().st_size * 2 // 3)
    assert "truncated or corrupt" in nwb.file_problem(bad, sessions[0])


def test_a_flipped_byte_in_a_compressed_chunk_is_refused(files, tmp_path):
    root, _, lfp_probes = files
    sid, pid = lfp_probes[0]
    bad = tmp_path / "flipped.nwb"
    shutil.copy(synth.lfp_nwb_path(root, sid, pid), bad)
    with h5py.File(bad, "r") as f:
        ds = f[f"acquisition/probe_{pid}_lfp/probe_{pid}_lfp_data/data"]
        assert ds.compression == "gzip"
        offset, size = ds.id.get_chunk_info(0).byte_offset, ds.id.get_chunk_info(0).size
    with open(bad, "r+b") as handle:
        handle.seek(offset + size // 2)
        byte = handle.read(1)
        handle.seek(offset + size // 2)
        handle.write(bytes([byte[0] ^ 0xFF]))
    problem = nwb.file_problem(bad, sid, pid)
    assert problem is not None and "does not decode" in problem and "lfp_data/data" in problem


def test_text_is_not_an_nwb_file(tmp_path):
    page = tmp_path / "page.nwb"
    page.write_text("<html>503 Service Unavailable</html>")
    assert "not a readable HDF5 file" in nwb.file_problem(page, 1)
