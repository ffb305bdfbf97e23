"""Mirrors with fallback, every copy held to the DANDI Archive's published digest (issue 13).

Against the stand-in on loopback: one server speaks the bucket's S3 layout, the warehouse and the
DANDI API over the same synthetic files, with faults for a mirror serving other bytes and for
DANDI publishing other digests. The expected bytes are always the synthetic files themselves.
"""

from __future__ import annotations

import hashlib
import logging
import time

import pytest
import requests

from ecephys_pipeline import download, layout, mirrors, plan, rma, synth
from ecephys_pipeline.fake import FakeWarehouse
from ecephys_pipeline.sources import Source

FAST = download.Options(max_attempts=3, backoff_base_s=0.01, read_timeout_s=10)
POLICY = rma.RetryPolicy(attempts=3, read_timeout=10, deadline=30, backoff_base=0.01)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return synth.make_dataset(
        tmp_path_factory.mktemp("mirrors") / "ds", seed=5, sessions=3, probes_per_session=1,
        duration_s=30,
    )  # fmt: skip


@pytest.fixture()
def fw(dataset):
    with FakeWarehouse(dataset) as server:
        yield server


def session_ids(dataset) -> list[int]:
    _meta, records = synth.load_records(dataset)
    return sorted(s["id"] for s in records["EcephysSession"])


def sha256(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def published_versions(fw) -> dict[str, str]:
    out = {}
    for dandiset in ("000021", "000022"):
        doc = requests.get(f"{fw.url}/api/dandisets/{dandiset}/", timeout=30).json()
        out[dandiset] = doc["most_recent_published_version"]["version"]
    return out


def mirror_list(fw, *kinds: str, verify: bool = True) -> mirrors.Mirrors:
    return mirrors.Mirrors(
        tuple(Source(kind, fw.url) for kind in kinds),
        dandi_url=fw.url,
        versions=published_versions(fw),
        verify=verify,
    )


def s3_path(sid: int) -> str:
    return f"/visual-coding-neuropixels/ecephys-cache/session_{sid}/session_{sid}.nwb"


def gets(fw, path: str) -> int:
    return sum(r["method"] == "GET" and r["path"] == path for r in fw.requests)


def fetch(m, cache, sid, probe_id=None):
    dest = cache / layout.nwb_path(sid, probe_id)
    listing = m.listing(cache, policy=POLICY)
    rec = mirrors.fetch_nwb(
        m, dest, sid, probe_id, cache_dir=cache, options=FAST, policy=POLICY, listing=listing
    )
    return dest, rec


def test_a_corrupted_mirror_is_refused_by_digest_and_the_next_delivers_the_same_bytes(
    fw, dataset, tmp_path, caplog
):
    sid = session_ids(dataset)[0]
    truth = synth.session_nwb_path(dataset, sid)
    fw.set_faults([{"kind": "flip_byte", "offset": 5000, "match": s3_path(sid)}])
    m = mirror_list(fw, "s3", "dandi", "warehouse")
    with caplog.at_level(logging.WARNING):
        dest, rec = fetch(m, tmp_path / "cache", sid)
    assert dest.read_bytes() == truth.read_bytes()
    assert (rec.mirror, rec.sha256) == ("dandi", sha256(truth))
    assert rec.published in {f"DANDI {d}/{v}" for d, v in m.versions.items()}
    assert download.read_record(dest).mirror == "dandi"
    # the bucket's copy: fetched once (a published digest's refusal is final for that mirror),
    # set aside, and the refusal names the file, the mirror and both digests
    assert gets(fw, s3_path(sid)) == 1
    (aside,) = dest.parent.glob(f"{dest.name}.mismatch-*[!n]")
    served = sha256(aside)
    assert served != rec.sha256 and aside.stat().st_size == truth.stat().st_size
    said = "\n".join(r.getMessage() for r in caplog.records if "refused from s3" in r.getMessage())
    assert dest.name in said and served in said and rec.sha256 in said and "DANDI 0000" in said
    # the warehouse, third in the list, was never asked for the file
    assert not [r for r in fw.requests if "well_known_file_download" in r["path"]]


def test_no_mirror_left_is_one_error_naming_each_mirror_and_both_digests(fw, dataset, tmp_path):
    sid = session_ids(dataset)[0]
    fw.set_faults([{"kind": "flip_byte", "offset": 5000, "match": s3_path(sid)}])
    with pytest.raises(download.ChecksumMismatchError) as e:
        fetch(mirror_list(fw, "s3"), tmp_path / "cache", sid)
    msg = str(e.value)
    dest = tmp_path / "cache" / f"session_{sid}/session_{sid}.nwb"
    (aside,) = dest.parent.glob(f"{dest.name}.mismatch-*[!n]")
    truth = sha256(synth.session_nwb_path(dataset, sid))
    assert msg.startswith(f"no mirror delivered session_{sid}/session_{sid}.nwb verified")
    assert f"s3 ({fw.url})" in msg and sha256(aside) in msg and truth in msg
    assert not dest.exists()


def test_a_cached_file_other_than_published_is_set_aside_and_fetched_again(fw, dataset, tmp_path):
    sid = session_ids(dataset)[1]
    truth = synth.session_nwb_path(dataset, sid)
    cache = tmp_path / "cache"
    dest = cache / f"session_{sid}/session_{sid}.nwb"
    dest.parent.mkdir(parents=True)
    data = bytearray(truth.read_bytes())
    data[-200] ^= 0xFF  # a flipped byte that keeps the file a valid HDF5 file of this session
    dest.write_bytes(bytes(data))
    # recorded as verified by an earlier run without digests: the record alone is not trusted
    download.adopt_existing(dest, None, verify_hdf5=False)
    _dest, rec = fetch(mirror_list(fw, "s3"), cache, sid)
    assert dest.read_bytes() == truth.read_bytes() and rec.mirror == "s3"
    assert len(list(dest.parent.glob(f"{dest.name}.mismatch-*"))) == 1
    # the right file is kept as it is: no request for it on the next fetch
    n = len(fw.requests)
    _dest, again = fetch(mirror_list(fw, "s3"), cache, sid)
    assert again.sha256 == rec.sha256 and again.mirror == "s3" and again.published
    assert [r for r in fw.requests[n:] if "session_" in r["path"]] == []


def test_a_whole_class_differing_from_dandi_is_said_once_then_verified_without_it(
    fw, dataset, tmp_path, caplog
):
    """DANDI publishes other sha256s for every session file (as if its copies were re-packaged):
    the bucket's valid copies disagree; after two, the class is said once and accepted."""
    sids = session_ids(dataset)
    fw.set_faults([{"kind": "dandi_wrong_sha256", "match": f"_ses-{sid}.nwb"} for sid in sids])
    cache = tmp_path / "cache"
    m = mirror_list(fw, "s3")
    with pytest.raises(download.ChecksumMismatchError):
        fetch(m, cache, sids[0])  # one disagreement: not yet a class
    with caplog.at_level(logging.WARNING):
        got = [fetch(m, cache, sid)[1] for sid in (sids[1], sids[0], sids[2])]
    for sid, rec in zip((sids[1], sids[0], sids[2]), got, strict=True):
        assert rec.sha256 == sha256(synth.session_nwb_path(dataset, sid))
        assert (rec.mirror, rec.published) == ("s3", None)
    said = [r for r in caplog.records if "re-packaged copy" in r.getMessage()]
    assert len(said) == 1 and "s3 mirror's session files" in said[0].getMessage()
    assert (cache / "dandi/repackaged-s3-session.txt").exists()
    # only the session files: an LFP file is still held to (and matches) its published digest
    _meta, records = synth.load_records(dataset)
    probe = next(p for p in records["EcephysProbe"] if p["use_lfp_data"])
    _dest, lfp = fetch(m, cache, probe["ecephys_session_id"], probe["id"])
    assert lfp.published and lfp.mirror == "s3"


def test_the_preflight_survives_503_with_retry_after(fw, dataset, tmp_path):
    sid = session_ids(dataset)[2]
    fault = {
        "kind": "status",
        "code": 503,
        "retry_after": 1,
        "times": 4,  # the HEAD and the one-byte GET of two tries
        "match": "well_known_file_download",
    }
    fw.set_faults([fault])
    selection = {"sessions": [{"session_id": sid, "probes": []}]}
    t0 = time.monotonic()
    the_plan = plan.make_plan(
        selection,
        mirrors.Mirrors.of(Source("warehouse", fw.url)),
        tmp_path / "cache",
        options=download.Options(max_attempts=4, backoff_base_s=0.01),
        policy=POLICY,
    )
    waited = time.monotonic() - t0
    (planned,) = the_plan.files
    assert planned.size == synth.session_nwb_path(dataset, sid).stat().st_size
    statuses = [r["status"] for r in fw.requests if "well_known_file_download" in r["path"]]
    assert statuses.count(503) == 4 and statuses[-1] in (200, 206), statuses
    assert waited >= 2, "the Retry-After of each refused try was honoured"


def test_a_pinned_run_verifies_against_the_lock_files_dandi_versions(tmp_path):
    from ecephys_pipeline import lockfile

    cache = tmp_path / "cache"
    lock = lockfile.write_lock(
        [], tmp_path / "lock.json", cache_dir=cache, dandi={"000021": "0.251116.2246"}
    )
    assert lockfile.read_lock(lock)["dandi"] == {"000021": "0.251116.2246"}
    other = mirrors.Mirrors(
        (Source("s3", "http://127.0.0.1:9"),),
        "http://127.0.0.1:9",
        {"000021": "0.260101.0000"},
        True,
    )
    with pytest.raises(lockfile.LockError) as e:
        mirrors.fetch_nwb(
            other, cache / "session_1/session_1.nwb", 1, cache_dir=cache, lock_file=lock
        )
    assert str(e.value) == (
        f"the lock file {lock} was verified against other DANDI versions (000021: lock "
        "0.251116.2246, config 0.260101.0000): set dandi.versions to the lock's, or remove "
        "lock_file from the config"
    )
