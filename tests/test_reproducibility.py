"""Reproducible reruns (issue 7): same inputs give the same bytes; a lock file pins the inputs;
reruns do only what changed; a run killed with SIGKILL at any stage finishes on rerun with the
same outputs, and never leaves a partial file at a final path."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import time
from pathlib import Path

import h5py
import pyarrow.parquet as pq
import pytest
import yaml

import workflow_helpers as helpers
from ecephys_pipeline.fake import demo

pytestmark = pytest.mark.e2e

SESSIONS = 3  # the demo dataset of these tests; the specs take 2, then 3 of them


def config_args(workdir: Path, spec_text: str, **overrides) -> list[str]:
    """A complete config (the demo's, with a 3-session dataset and ``spec_text`` as the spec)."""
    (workdir / "config/spec.yaml").write_text(spec_text)
    config = yaml.safe_load((workdir / "config/demo.yaml").read_text())
    config["demo"]["sessions"] = SESSIONS
    config["selection"] = "config/spec.yaml"
    config.update({k: str(v) for k, v in overrides.items()})
    (workdir / "config/test.yaml").write_text(yaml.safe_dump(config))
    return ["--configfile", "config/test.yaml"]


def two_sessions(unit_filters: str = "") -> str:
    return "limit: 2\nfetch_lfp: true\n" + unit_filters


def final_state(workdir: Path) -> dict[str, str]:
    """sha256 of every Parquet output, every file of the LFP stores and every input NWB file."""
    cache = workdir / "resources/allen_cache"
    state = helpers.checksums(workdir / "results/parquet")
    state |= {f"lfp/{k}": v for k, v in helpers.checksums(workdir / "results/lfp", "**/*").items()}
    state |= {f"cache/{k}": v for k, v in helpers.checksums(cache, "session_*/*.nwb").items()}
    return state


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """An uninterrupted run: 2 of 3 sessions, default unit filters."""
    workdir = helpers.copy_workflow(tmp_path_factory.mktemp("reference"))
    proc = helpers.run_snakemake(workdir, *config_args(workdir, two_sessions()))
    return workdir, proc


def test_two_clean_runs_give_identical_bytes(reference, tmp_path):
    first, _ = reference
    second = helpers.copy_workflow(tmp_path / "second")
    helpers.run_snakemake(second, *config_args(second, two_sessions()))
    a, b = final_state(first), final_state(second)
    assert a == b and len(a) > 10
    assert (first / "results/manifest.json").read_bytes() == (
        second / "results/manifest.json"
    ).read_bytes()
    # the lock files differ only by the fake warehouse's port in the URLs
    locks = [json.loads((w / "results/ecephys.lock.json").read_text()) for w in (first, second)]
    for lock in locks:
        for entry in lock["files"].values():
            entry.pop("url")
    assert locks[0] == locks[1]


def test_manifest_records_inputs_outputs_and_versions(reference):
    workdir, _ = reference
    manifest = json.loads((workdir / "results/manifest.json").read_text())
    lock = json.loads((workdir / "results/ecephys.lock.json").read_text())
    selection = json.loads((workdir / "results/selection/selection.json").read_text())
    assert manifest["spec_sha256"] == selection["spec_sha256"], "one hash, one name"
    assert manifest["inputs"] == {
        k: {"size": v["size"], "sha256": v["sha256"]} for k, v in lock["files"].items()
    }
    outputs = helpers.checksums(workdir, "results/parquet/**/*.parquet")
    assert manifest["outputs"] == outputs
    assert {"snakemake", "pyarrow", "h5py", "pynwb", "ecephys-pipeline"} <= set(
        manifest["software"]
    )
    meta = pq.read_schema(workdir / next(iter(outputs))).metadata
    assert any(b"sha256" in key for key in meta), "each Parquet file names its source's sha256"


def test_second_run_does_nothing(reference):
    workdir, _ = reference
    proc = helpers.run_snakemake(workdir, *config_args(workdir, two_sessions()))
    assert "Nothing to be done" in proc.stderr + proc.stdout, helpers.jobs_run(proc)


def test_reruns_do_only_what_changed(tmp_path):
    workdir = helpers.copy_workflow(tmp_path / "incremental")
    helpers.run_snakemake(workdir, *config_args(workdir, two_sessions()))
    selection = json.loads((workdir / "results/selection/selection.json").read_text())
    old = {s["session_id"] for s in selection["sessions"]}

    # one more session: only its downloads and its extraction run
    proc = helpers.run_snakemake(workdir, *config_args(workdir, "limit: 3\nfetch_lfp: true\n"))
    jobs = helpers.jobs_run(proc)
    selection = json.loads((workdir / "results/selection/selection.json").read_text())
    (new,) = {s["session_id"] for s in selection["sessions"]} - old
    heavy = [(r, w) for r, w in jobs if r.startswith(("download", "extract"))]
    assert heavy and all(f"session_id={new}" in w for _, w in heavy), jobs
    assert ("extract_session", f"session_id={new}") in jobs

    # other unit filters: every extraction again, no download, no metadata fetch
    spec = "limit: 3\nfetch_lfp: true\nunit_filters:\n  amplitude_cutoff_maximum: 0.2\n"
    proc = helpers.run_snakemake(workdir, *config_args(workdir, spec))
    rules = [r for r, _ in helpers.jobs_run(proc)]
    assert rules.count("extract_session") == 3, rules
    assert not [r for r in rules if r.startswith(("download", "fetch_metadata"))], rules

    # one output deleted: only the job that makes it (and the analysis job that reads it)
    victim = workdir / f"results/parquet/units/session_id={new}/part-0.parquet"
    victim.unlink()
    proc = helpers.run_snakemake(workdir, *config_args(workdir, spec))
    # (and what is downstream of it: its analysis, the manifest, that session's figures, the
    # run's tables)
    downstream = {("report_session", f"session_id={new}")}
    rules = [
        (r, w)
        for r, w in helpers.jobs_run(proc)
        if r not in ("all", "write_manifest", "report_run") and (r, w) not in downstream
    ]
    assert rules == [
        ("extract_session", f"session_id={new}"),
        ("analyze_session", f"session_id={new}"),
    ], rules
    assert victim.exists()


def test_lock_file_pins_inputs(reference, tmp_path):
    first, _ = reference
    workdir = helpers.copy_workflow(tmp_path / "pinned")
    lock = workdir / "config/pinned.lock.json"
    lock.write_bytes((first / "results/ecephys.lock.json").read_bytes())
    helpers.run_snakemake(workdir, *config_args(workdir, two_sessions(), lock_file=lock))
    assert final_state(workdir) == final_state(first)

    # an upstream file changes: the run refuses it and keeps nothing of it at the final path
    changed = helpers.copy_workflow(tmp_path / "changed")
    dataset = changed / "resources/fake_warehouse/dataset"
    demo.ensure_dataset(dataset, seed=0, sessions=SESSIONS, realistic=False)
    entry = next(k for k in json.loads(lock.read_text())["files"] if not k.endswith("_lfp.nwb"))
    served = dataset / "files" / entry
    with h5py.File(served, "r") as f:  # same size, one stored spike amplitude differs
        amplitudes = f["units/spike_amplitudes"].id
        offset = amplitudes.get_offset() or amplitudes.get_chunk_info(0).byte_offset
    with open(served, "r+b") as f:
        f.seek(offset)
        byte = f.read(1)
        f.seek(offset)
        f.write(bytes([byte[0] ^ 0xFF]))
    args = config_args(changed, two_sessions(), lock_file=lock)
    proc = helpers.run_snakemake(changed, *args, check=False)
    assert proc.returncode != 0
    log = (changed / "logs/download").glob("*.log")
    text = "\n".join(p.read_text() for p in log)
    assert "lock" in text and Path(entry).name in text, text[-2000:]
    assert not (changed / "resources/allen_cache" / entry).exists()
    assert list((changed / "resources/allen_cache").rglob(f"{Path(entry).name}.mismatch-*"))


def _kill_when(workdir: Path, args: list[str], ready, faults: list[dict], timeout: float = 120):
    """Start snakemake, wait until ``ready(workdir)``, then SIGKILL its whole process group."""
    env = {**os.environ, demo.FAULTS_ENV: json.dumps(faults)}
    proc = subprocess.Popen(
        helpers.snakemake_command(*args),
        cwd=workdir,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    deadline = time.monotonic() + timeout
    try:
        while not ready(workdir):
            assert proc.poll() is None, "the run finished before the kill point was reached"
            assert time.monotonic() < deadline, "the kill point was never reached"
            time.sleep(0.05)
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait(timeout=30)


def _no_partial_files(workdir: Path, reference_state: dict[str, str]) -> None:
    """Whatever sits at a final path after the kill is complete: identical to the reference."""
    state = final_state(workdir)
    for path, digest in state.items():
        assert reference_state.get(path) == digest, f"{path} is at its final path but partial"


def _part_bytes(workdir: Path) -> bool:
    return any(p.stat().st_size > 0 for p in workdir.glob("resources/allen_cache/**/*.part"))


def _extracting(workdir: Path) -> bool:
    return any((workdir / "logs/extract").glob("session_*.log"))


def _fetching_metadata(workdir: Path) -> bool:
    return any((workdir / "logs/metadata").glob("*.log"))


STAGES = {
    # the metadata queries stall: killed while tables are being fetched
    "metadata": (
        _fetching_metadata,
        [{"kind": "stall", "match": "query.json", "after_bytes": 0, "seconds": 30}],
    ),
    # downloads trickle at 2 MB/s: killed with .part files on disk
    "download": (
        _part_bytes,
        [{"kind": "bandwidth", "match": "well_known_file_download", "bytes_per_second": 2e6}],
    ),
    # killed as soon as an extraction job has started
    "extract": (_extracting, []),
}


@pytest.mark.parametrize("stage", list(STAGES))
def test_sigkill_then_rerun_gives_the_uninterrupted_outputs(reference, tmp_path, stage):
    first, _ = reference
    expected = final_state(first)
    workdir = helpers.copy_workflow(tmp_path / stage)
    args = config_args(workdir, two_sessions())
    ready, faults = STAGES[stage]
    _kill_when(workdir, args, ready, faults)
    _no_partial_files(workdir, expected)
    if stage == "download":
        assert _part_bytes(workdir), "the kill left resumable .part files"
    helpers.run_snakemake(workdir, "--unlock", *args)
    proc = helpers.run_snakemake(workdir, *args)
    assert final_state(workdir) == expected
    if stage == "download":
        logs = "\n".join(p.read_text() for p in (workdir / "logs/download").glob("*.log"))
        assert "resum" in logs.lower(), f"the rerun resumed the partial downloads:\n{logs}"
    assert not list(workdir.glob("resources/allen_cache/**/*.part")), helpers.jobs_run(proc)
    digest = hashlib.sha256((workdir / "results/manifest.json").read_bytes()).hexdigest()
    assert digest == hashlib.sha256((first / "results/manifest.json").read_bytes()).hexdigest()
