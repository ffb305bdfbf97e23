"""A lock file is a promise (issue 12): hostile runs against a real fake warehouse on loopback.

The workflow runs against a FakeWarehouse this module starts itself (demo off), so every request
of every run is in one log. The served file is changed with the fake's ``flip_byte`` fault (same
size, still valid HDF5, another sha256): an upstream file that changed since the lock was written.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import h5py
import pyarrow.parquet as pq
import pytest

import workflow_helpers as helpers
from ecephys_pipeline import synth
from ecephys_pipeline.fake import FakeWarehouse

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return synth.make_dataset(tmp_path_factory.mktemp("integrity") / "ds", seed=0, sessions=2)


@pytest.fixture(scope="module")
def fake(dataset):
    with FakeWarehouse(dataset) as server:
        yield server


def configure(workdir: Path, fake: FakeWarehouse, **changes) -> list[str]:
    """The demo's config against this module's server (demo off), with ``changes``: the
    warehouse alone, verified by size, content and lock (the lock's promises are the subject
    here; DANDI's published digests are test_mirrors.py's)."""
    server = {
        "source": {"kind": "warehouse", "url": fake.url},
        "mirrors": None,
        "dandi": {"verify_digests": False},
        "demo": {"enabled": False},
    }
    return helpers.write_config(workdir, **server, **changes)


@pytest.fixture(scope="module")
def reference(tmp_path_factory, fake):
    workdir = helpers.copy_workflow(tmp_path_factory.mktemp("reference"))
    helpers.run_snakemake(workdir, *configure(workdir, fake))
    return workdir


@pytest.fixture
def run_copy(reference, tmp_path, fake):
    """A copy of the finished reference run (cache, results, Snakemake's metadata)."""
    fake.clear_faults()
    workdir = tmp_path / "run"
    shutil.copytree(reference, workdir, symlinks=True)
    yield workdir
    fake.clear_faults()


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def victim(workdir: Path) -> tuple[int, str, Path]:
    """The first session file of the lock: (session id, lock key, cached path)."""
    lock = json.loads((workdir / "results/ecephys.lock.json").read_text())
    key = next(k for k in sorted(lock["files"]) if not k.endswith("_lfp.nwb"))
    return int(key.split("/")[0].split("_")[1]), key, workdir / "resources/allen_cache" / key


def amplitude_offset(path: Path) -> int:
    """A byte whose change keeps the file valid HDF5: one stored spike amplitude."""
    with h5py.File(path, "r") as f:
        ds = f["units/spike_amplitudes"].id
        return ds.get_offset() or ds.get_chunk_info(0).byte_offset


def flip(path: Path, offset: int) -> None:
    with open(path, "r+b") as handle:
        handle.seek(offset)
        byte = handle.read(1)
        handle.seek(offset)
        handle.write(bytes([byte[0] ^ 0xFF]))


def full_downloads(fake: FakeWarehouse, size: int) -> int:
    return sum(
        1
        for r in fake.requests
        if r["method"] == "GET" and "well_known_file_download" in r["path"]
        and r["bytes_sent"] == size and not r.get("range")
    )  # fmt: skip


def parquet_digests(workdir: Path, sid: int) -> set[bytes]:
    return {
        pq.read_schema(p).metadata[b"ecephys_pipeline.source_sha256"]
        for p in (workdir / "results/parquet").rglob(f"session_id={sid}/**/*.parquet")
    } | {
        pq.read_schema(p).metadata[b"ecephys_pipeline.source_sha256"]
        for p in (workdir / "results/parquet").glob(f"*/session_id={sid}/part-0.parquet")
    }


def test_a_file_refused_by_the_lock_is_never_used_and_downloaded_once(run_copy, fake):
    """Items 1, 7 and 14: cache and server both hold bytes the lock does not pin."""
    workdir = run_copy
    lock = workdir / "config/pinned.lock.json"
    shutil.copy(workdir / "results/ecephys.lock.json", lock)
    sid, key, cached = victim(workdir)
    offset = amplitude_offset(cached)
    flip(cached, offset)
    refused = sha256(cached)
    fake.set_faults([{"kind": "flip_byte", "match": "well_known_file_download", "offset": offset}])
    fake.clear_requests()
    # the results of the earlier (unpinned) run are gone: nothing may be made from the bytes
    shutil.rmtree(workdir / "results")
    args = configure(workdir, fake, lock_file=str(lock))

    for _ in range(2):  # the second identical run must not "succeed" with the refused bytes
        proc = helpers.run_snakemake(workdir, *args, check=False)
        assert proc.returncode != 0, helpers.jobs_run(proc)
        assert refused.encode() not in parquet_digests(workdir, sid)
        for artifact in ("results/ecephys.lock.json", "results/manifest.json"):
            path = workdir / artifact
            assert not path.exists() or refused not in path.read_text(), artifact

    log = (workdir / f"logs/download/session_{sid}.log").read_text()
    assert "lock file" in log and str(lock) in log, log[-3000:]
    assert not cached.exists(), "a refused file never stays at its final path"
    set_aside = sorted(cached.parent.glob(f"{cached.name}.mismatch-*[!n]"))  # not the note
    assert [p.name for p in set_aside] == [f"{cached.name}.mismatch-{refused[:8]}"]
    note = json.loads(Path(f"{set_aside[0]}.json").read_text())  # why it was refused
    assert note["expected_sha256"] == json.loads(lock.read_text())["files"][key]["sha256"]
    assert sha256(set_aside[0]) == refused
    # once may be a transient corruption, the same wrong bytes twice are final and remembered:
    # no later try or run fetches them again (it was 3 attempts x 2 job tries x every run)
    assert full_downloads(fake, set_aside[0].stat().st_size) == 2


def test_a_cached_file_changed_after_download_is_repaired_not_extracted(run_copy, fake):
    """Item 2: a byte flipped in the cache after a pinned run; the next run must not extract it
    with the old provenance: it sets the file aside, fetches the pinned bytes again, and the
    Parquet, lock and manifest describe what was really read."""
    workdir = run_copy
    lock = workdir / "config/pinned.lock.json"
    shutil.copy(workdir / "results/ecephys.lock.json", lock)
    args = configure(workdir, fake, lock_file=str(lock))
    helpers.run_snakemake(workdir, *args)
    sid, key, cached = victim(workdir)
    pinned = json.loads(lock.read_text())["files"][key]["sha256"]
    flip(cached, amplitude_offset(cached))
    changed = sha256(cached)

    proc = helpers.run_snakemake(workdir, *args)
    assert ("extract_session", f"session_id={sid}") in helpers.jobs_run(proc)
    assert sha256(cached) == pinned
    assert parquet_digests(workdir, sid) == {pinned.encode()}
    assert (workdir / "results/ecephys.lock.json").read_bytes() == lock.read_bytes()
    assert sorted(p.name for p in cached.parent.glob(f"{cached.name}.mismatch-*")) == [
        f"{cached.name}.mismatch-{changed[:8]}"
    ]


def test_tuning_options_do_not_invalidate_outputs(run_copy, fake):
    """Item 13: options that cannot change the bytes rerun nothing and copy nothing (the run
    manifest, which records the config's digest, and the report's run page are written again)."""
    workdir = run_copy
    args = configure(
        workdir,
        fake,
        download={
            "max_attempts": 3,
            "read_timeout_s": 45,
            "connections_per_file": 2,
            "verify_hdf5": True,
            "preflight": False,
            "reserve_free_gb": 2,
        },
    )
    proc = helpers.run_snakemake(workdir, *args)
    # only what records the config: the run manifest and the report's run page (milliseconds)
    assert {rule for rule, _ in helpers.jobs_run(proc)} <= {"write_manifest", "report_run", "all"}
    assert not list((workdir / ".snakemake/backups").rglob("*.nwb"))


def test_a_moved_cache_is_adopted(run_copy, fake):
    """Item 12: records are relative to the cache; a moved cache is used as it is."""
    workdir = run_copy
    before = (workdir / "results/ecephys.lock.json").read_bytes()
    parquet = helpers.checksums(workdir / "results/parquet")
    (workdir / "resources/allen_cache").rename(workdir / "resources/moved_cache")
    fake.clear_requests()
    helpers.run_snakemake(workdir, *configure(workdir, fake, cache_dir="resources/moved_cache"))
    assert (workdir / "results/ecephys.lock.json").read_bytes() == before
    assert helpers.checksums(workdir / "results/parquet") == parquet
    assert not [r for r in fake.requests if "well_known_file_download" in r["path"]]
