"""The pipeline's DANDI client (ecephys_pipeline.dandi) against the DANDI stand-in on loopback.

The published digests are checked against hashlib over the synthetic files themselves, the
(session, probe) of each asset against the files' own ids, and the version against what the
archive's dandiset endpoint says is the most recent published one.
"""

from __future__ import annotations

import hashlib

import pytest
import requests

from ecephys_pipeline import dandi, rma, synth
from ecephys_pipeline.fake import FakeWarehouse

FAST = rma.RetryPolicy(attempts=3, read_timeout=5, deadline=20, backoff_base=0.01)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return synth.make_dataset(
        tmp_path_factory.mktemp("dandi-client") / "ds", seed=3, sessions=3, probes_per_session=2,
        duration_s=60,
    )  # fmt: skip


@pytest.fixture()
def fw(dataset):
    with FakeWarehouse(dataset) as server:
        yield server


def published(fw) -> dict[str, str]:
    out = {}
    for dandiset in ("000021", "000022"):
        doc = requests.get(f"{fw.url}/api/dandisets/{dandiset}/", timeout=30).json()
        out[dandiset] = doc["most_recent_published_version"]["version"]
    return out


def synthetic_files(dataset) -> dict[tuple[int, int | None], str]:
    """(session, probe) -> sha256 of every synthetic NWB file, from the records and the bytes."""
    _meta, records = synth.load_records(dataset)
    out = {}
    for s in records["EcephysSession"]:
        path = synth.session_nwb_path(dataset, s["id"])
        out[(s["id"], None)] = hashlib.sha256(path.read_bytes()).hexdigest()
    for p in records["EcephysProbe"]:
        if p["use_lfp_data"]:
            path = synth.lfp_nwb_path(dataset, p["ecephys_session_id"], p["id"])
            out[(p["ecephys_session_id"], p["id"])] = hashlib.sha256(path.read_bytes()).hexdigest()
    return out


def test_every_file_is_found_with_its_published_digest(fw, dataset, tmp_path):
    listing = dandi.load_listing(f"{fw.url}/api", published(fw), tmp_path / "cache", policy=FAST)
    want = synthetic_files(dataset)
    assert {k: a.sha256 for k, a in listing.files.items()} == want
    sid, pid = next(k for k in want if k[1] is not None)
    asset = listing.find(sid, pid)
    assert asset.path.endswith(f"_ses-{sid}_probe-{pid}_ecephys.nwb")
    assert asset.dandi_etag.endswith("-1") and asset.expected()["sha256"] == want[(sid, pid)]
    body = requests.get(asset.download_url(f"{fw.url}/api"), timeout=30).content
    assert hashlib.sha256(body).hexdigest() == want[(sid, pid)]
    assert listing.find(sid, 1) is None


def test_a_published_listing_is_fetched_once_and_kept(fw, tmp_path):
    versions = published(fw)
    first = dandi.load_listing(f"{fw.url}/api", versions, tmp_path, policy=FAST)
    assert sorted(p.name for p in (tmp_path / "dandi").iterdir()) == sorted(
        f"{d}_{v}.json" for d, v in versions.items()
    )
    fw.clear_requests()
    again = dandi.load_listing(f"{fw.url}/api", versions, tmp_path, policy=FAST)
    assert again == first
    assert not [r for r in fw.requests if "/api/dandisets/" in r["path"]]
    dandi.load_listing(f"{fw.url}/api", {"000021": "draft"}, tmp_path, policy=FAST)
    assert not (tmp_path / "dandi" / "000021_draft.json").exists(), "a draft is never kept"


def test_pages_are_followed_and_a_failing_page_is_retried(fw, dataset):
    version = published(fw)["000021"]
    whole = dandi.fetch_listing(f"{fw.url}/api", "000021", version, policy=FAST)
    assert len(whole) > 3
    fw.clear_requests()
    fw.set_faults([{"kind": "status", "match": "page=2", "code": 503, "retry_after": 0,
                    "times": 1}])  # fmt: skip
    paged = dandi.fetch_listing(f"{fw.url}/api", "000021", version, policy=FAST, page_size=2)
    assert paged == whole
    pages = [r["status"] for r in fw.requests if r["path"].endswith(f"/{version}/assets/")]
    assert pages.count(503) == 1 and pages.count(200) == -(-len(whole) // 2), pages


def test_the_published_digest_is_read_not_computed(fw, dataset):
    version = published(fw)["000021"]
    victim = dandi.fetch_listing(f"{fw.url}/api", "000021", version, policy=FAST)[0]
    fw.set_faults([{"kind": "dandi_wrong_sha256", "match": victim.path}])
    again = {a.path: a for a in dandi.fetch_listing(f"{fw.url}/api", "000021", version)}
    assert again[victim.path].sha256 != victim.sha256
    assert again[victim.path].dandi_etag == victim.dandi_etag


def test_an_unknown_version_is_one_clear_error(fw):
    with pytest.raises(dandi.DandiError, match=r"HTTP 404"):
        dandi.fetch_listing(f"{fw.url}/api", "000021", "0.999999.9999", policy=FAST)


def test_asset_paths_name_session_and_probe():
    assert dandi.file_key("sub-699733573/sub-699733573_ses-715093703.nwb") == (715093703, None)
    assert dandi.file_key(
        "sub-699733573/sub-699733573_ses-715093703_probe-810755797_ecephys.nwb"
    ) == (715093703, 810755797)
    assert dandi.file_key("sub-1/sub-1_ses-2_image.nwb") is None
