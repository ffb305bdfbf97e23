"""The sources and mirrors end to end through the workflow (issues 3 and 13): the demo's fallback
list (bucket, DANDI, warehouse), each mirror alone (the bucket's S3 layout over HTTPS, the DANDI
Archive, the warehouse, a local mounted AllenSDK cache), and adopting an existing AllenSDK cache.
Each gives the same files, hence the same Parquet, byte for byte; the lock file says which mirror
delivered each file and whose published digest it matched."""

from __future__ import annotations

import json
import shutil

import pytest

import workflow_helpers as helpers

pytestmark = pytest.mark.e2e


def state(workdir):
    cache = workdir / "resources/allen_cache"
    return helpers.checksums(workdir / "results/parquet") | {
        f"cache/{k}": v for k, v in helpers.checksums(cache, "session_*/*.nwb").items()
    }


def allensdk_cache_copy(run, dest) -> None:
    """What an AllenSDK user has: the CSVs, manifest.json and the NWB files; no records of ours."""
    shutil.copytree(
        run / "resources/allen_cache", dest, ignore=shutil.ignore_patterns("*.download.json")
    )


def download_logs(workdir) -> str:
    return "\n".join(p.read_text() for p in sorted((workdir / "logs/download").glob("*.log")))


@pytest.fixture(scope="module")
def warehouse_run(tmp_path_factory):
    workdir = helpers.copy_workflow(tmp_path_factory.mktemp("warehouse"))
    helpers.run_snakemake(workdir)
    return workdir


URL_FILE = "resources/fake_warehouse/url"


def lock_of(workdir) -> dict:
    return json.loads((workdir / "results/ecephys.lock.json").read_text())


def test_the_fallback_list_delivers_from_the_first_mirror_held_to_dandi(warehouse_run):
    lock = lock_of(warehouse_run)
    assert set(lock["dandi"]) == {"000021", "000022"}
    for entry in lock["files"].values():
        assert entry["mirror"] == "s3", entry
        assert entry["published"] in {f"DANDI {d}/{v}" for d, v in lock["dandi"].items()}
        assert entry["dandi_etag"].endswith("-1")


@pytest.mark.parametrize(
    "kind, url_part",
    [
        ("s3", "/visual-coding-neuropixels/ecephys-cache/session_"),
        ("dandi", "/api/assets/"),
        ("warehouse", "/api/v2/well_known_file_download/"),
    ],
)
def test_each_mirror_alone_gives_the_same_bytes(warehouse_run, tmp_path, kind, url_part):
    workdir = helpers.copy_workflow(tmp_path / kind)
    mirror = {"kind": kind} if kind == "dandi" else {"kind": kind, "url_file": URL_FILE}
    # the metadata tables from the bucket when the files come from it, as a cloud user would
    source_kind = "s3" if kind == "s3" else "warehouse"
    args = helpers.write_config(workdir, mirrors=[mirror], source__kind=source_kind)
    helpers.run_snakemake(workdir, *args)
    assert state(workdir) == state(warehouse_run)
    files = lock_of(workdir)["files"]
    assert all(url_part in e["url"] and e["mirror"] == kind for e in files.values()), files
    assert all(e["published"] for e in files.values())
    assert [e["sha256"] for e in files.values()] == [
        e["sha256"] for e in lock_of(warehouse_run)["files"].values()
    ]
    for table in ("sessions", "probes", "channels", "units"):
        a = (workdir / f"resources/allen_cache/{table}.csv").read_bytes()
        assert a == (warehouse_run / f"resources/allen_cache/{table}.csv").read_bytes(), table


def test_local_mounted_cache_needs_no_server(warehouse_run, tmp_path):
    mounted = tmp_path / "mounted"  # e.g. a workshop drive or the bucket mounted with s3fs
    allensdk_cache_copy(warehouse_run, mounted)
    workdir = helpers.copy_workflow(tmp_path / "local")
    args = helpers.write_config(
        workdir,
        source={"kind": "local", "url": str(mounted)},
        mirrors=None,  # the source alone
        dandi={"verify_digests": False},  # no network at all
        demo={"enabled": False},
    )
    helpers.run_snakemake(workdir, *args)
    assert state(workdir) == state(warehouse_run)
    lock = json.loads((workdir / "results/ecephys.lock.json").read_text())
    assert all(e["url"].startswith("file://") for e in lock["files"].values())
    assert all(e["mirror"] == "local" and e["published"] is None for e in lock["files"].values())
    assert "dandi" not in lock
    assert not (workdir / "resources/fake_warehouse").exists(), "no server was involved"


def test_existing_allensdk_cache_is_adopted_not_downloaded(warehouse_run, tmp_path):
    workdir = helpers.copy_workflow(tmp_path / "adopt")
    cache = workdir / "resources/allen_cache"
    allensdk_cache_copy(warehouse_run, cache)
    helpers.run_snakemake(workdir)
    logs = download_logs(workdir)
    assert logs.count("adopted existing") == len(list(cache.glob("session_*/*.nwb"))), logs
    assert "fetching" not in logs, "nothing was downloaded again"
    assert state(workdir) == state(warehouse_run)


def test_corrupt_file_in_an_existing_cache_is_set_aside_and_fetched_again(warehouse_run, tmp_path):
    workdir = helpers.copy_workflow(tmp_path / "truncated")
    cache = workdir / "resources/allen_cache"
    allensdk_cache_copy(warehouse_run, cache)
    victim = next(cache.glob("session_*/session_*.nwb"))
    with open(victim, "r+b") as handle:  # AllenSDK #2741: an interrupted download left behind
        handle.truncate(victim.stat().st_size // 2)
    helpers.run_snakemake(workdir)
    assert list(victim.parent.glob(f"{victim.name}.mismatch-*")), "the bad copy was set aside"
    assert state(workdir) == state(warehouse_run)
