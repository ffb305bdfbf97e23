"""The DANDI Archive stand-in (ecephys_pipeline.fake.dandi) on a real server and real files.

Checked against things the stand-in does not compute itself: the NWB files' own subject ids,
hashlib over the bytes on disk, a dandi-etag written out here from its definition (S3 multipart
ETag, 64 MiB parts, at most 10,000 parts), and the pagination rules of the archive's DRF views.
"""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import h5py
import pytest
import requests

from ecephys_pipeline import synth
from ecephys_pipeline.fake import FakeWarehouse
from ecephys_pipeline.fake import dandi_catalog as fake_dandi

MiB = 1024 * 1024


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return synth.make_dataset(
        tmp_path_factory.mktemp("dandi") / "ds", seed=3, sessions=3, probes_per_session=2,
        duration_s=60,
    )  # fmt: skip


@pytest.fixture()
def fw(dataset):
    with FakeWarehouse(dataset) as fw:
        yield fw


def all_assets(fw, dandiset, version="draft", **params):
    url = f"{fw.url}/api/dandisets/{dandiset}/versions/{version}/assets/"
    out = []
    params = {"metadata": "true", "page_size": 1000, **params}
    while url:
        r = requests.get(url, params=params, timeout=30)
        r.raise_for_status()
        out += r.json()["results"]
        url, params = r.json()["next"], None
    return out


def etag_by_definition(path: Path) -> str:
    """dandi-etag written out independently: md5 of the concatenated part md5s, '-<parts>'."""
    size = path.stat().st_size
    part = 64 * MiB if size / (64 * MiB) < 10_000 else -(-size // 10_000)
    digests = []
    with open(path, "rb") as fh:
        while chunk := fh.read(part):
            digests.append(hashlib.md5(chunk).digest())
    return f"{hashlib.md5(b''.join(digests)).hexdigest()}-{len(digests)}"


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def nwb_files(dataset: Path) -> list[Path]:
    return sorted((dataset / "files").rglob("*.nwb"))


# ------------------------------------------------------------------------------ catalogue


def test_every_synthetic_file_is_one_asset_at_its_real_path(fw, dataset):
    sessions = {s["id"]: s for s in synth.load_records(dataset)[1]["EcephysSession"]}
    by_sha = {sha256(p): p for p in nwb_files(dataset)}
    seen = {}
    for did, stype in (("000021", "brain_observatory_1.1"), ("000022", "functional_connectivity")):
        for a in all_assets(fw, did):
            f = by_sha[a["metadata"]["digest"]["dandi:sha2-256"]]
            assert a["path"] not in seen
            seen[a["path"]] = f
            with h5py.File(f, "r") as h:  # the sub- id is the file's own NWB subject_id
                subject = h["general/subject/subject_id"][()].decode()
            sid = int(f.parent.name.removeprefix("session_"))
            assert sessions[sid]["stimulus_name"] == stype
            if f.name.startswith("probe_"):
                pid = f.name.removeprefix("probe_").removesuffix("_lfp.nwb")
                want = f"sub-{subject}/sub-{subject}_ses-{sid}_probe-{pid}_ecephys.nwb"
            else:
                want = f"sub-{subject}/sub-{subject}_ses-{sid}.nwb"
            assert a["path"] == want
            assert a["size"] == a["metadata"]["contentSize"] == f.stat().st_size
    assert sorted(seen.values()) == nwb_files(dataset)


def test_digests_are_the_bytes_digests(fw, dataset):
    for a in all_assets(fw, "000021") + all_assets(fw, "000022"):
        f = dataset / "files" / _file_of(dataset, a)
        d = a["metadata"]["digest"]
        assert set(d) == {"dandi:sha2-256", "dandi:dandi-etag"}
        assert d["dandi:sha2-256"] == sha256(f)
        assert d["dandi:dandi-etag"] == etag_by_definition(f)
        assert d["dandi:dandi-etag"].endswith("-1")  # a file under one part: still multipart form


def _file_of(dataset, asset) -> Path:
    sha = asset["metadata"]["digest"]["dandi:sha2-256"]
    (hit,) = [p for p in nwb_files(dataset) if sha256(p) == sha]
    return hit.relative_to(dataset / "files")


def test_multipart_etag_at_the_part_boundaries(tmp_path):
    for size in (0, 1, 64 * MiB, 64 * MiB + 1, 2 * 64 * MiB + 12345):
        p = tmp_path / f"f{size}"
        with open(p, "wb") as fh:  # not all zeros: parts must differ
            fh.write(bytes(range(256)) * (size // 256) + bytes(range(size % 256)))
        sha, etag = fake_dandi.digests(p)
        assert sha == sha256(p)
        assert etag == etag_by_definition(p), size
        assert etag.endswith(f"-{-(-size // (64 * MiB))}")
    # over 10,000 parts the part size grows (size only: no 640 GB file here)
    big = 10_000 * 64 * MiB + 1
    sizes = fake_dandi.part_sizes(big)
    assert len(sizes) == 10_000 and sum(sizes) == big and sizes[0] == -(-big // 10_000)


def test_digests_are_recomputed_when_the_file_changes(tmp_path):
    p = tmp_path / "f"
    p.write_bytes(b"one")
    first = fake_dandi.digests(p)
    p.write_bytes(b"two!")
    assert fake_dandi.digests(p) == (sha256(p), etag_by_definition(p)) != first


# ------------------------------------------------------------------------------ paging


def test_asset_paging_follows_the_archive(fw):
    base = f"{fw.url}/api/dandisets/000021/versions/draft/assets/"
    everything = all_assets(fw, "000021", metadata="false")
    n = len(everything)
    assert n >= 3
    r1 = requests.get(base, params={"page_size": 1, "order": "path"}, timeout=30).json()
    assert r1["count"] == n and r1["previous"] is None
    # DRF's next link: the request URL with page replaced and the query re-sorted
    assert r1["next"] == f"{base}?order=path&page=2&page_size=1"
    r2 = requests.get(r1["next"], timeout=30).json()
    assert r2["count"] is None  # LazyPagination: the count only on page 1
    assert r2["previous"] == f"{base}?order=path&page_size=1"
    assert r2["next"] == f"{base}?order=path&page=3&page_size=1"
    pages, url = [], base + "?page_size=1&order=path"
    while url:
        j = requests.get(url, timeout=30).json()
        pages += j["results"]
        url = j["next"]
    assert [a["path"] for a in pages] == sorted(a["path"] for a in everything)
    beyond = requests.get(base, params={"page": n + 5}, timeout=30)
    assert beyond.status_code == 200 and beyond.json()["results"] == []
    for bad in ("0", "last", "-1"):
        r = requests.get(base, params={"page": bad}, timeout=30)
        assert (r.status_code, r.json()) == (404, {"detail": "Invalid page."})
    # page_size: capped at 1000, nonsense falls back to 100 (DRF's _positive_int)
    assert len(requests.get(base, params={"page_size": "x"}, timeout=30).json()["results"]) == n
    versions = f"{fw.url}/api/dandisets/000021/versions/"
    v = requests.get(versions, timeout=30).json()
    assert v["count"] == 2 and [x["version"] for x in v["results"]] == ["draft", "0.251116.2246"]
    assert requests.get(versions, params={"page": 2}, timeout=30).status_code == 404


def test_asset_list_filters_and_errors(fw):
    base = f"{fw.url}/api/dandisets/000022/versions/draft/assets/"
    every = all_assets(fw, "000022", metadata="false")
    first = sorted(a["path"] for a in every)[0]
    subject = first.split("/")[0]
    exact = requests.get(base, params={"path": first}, timeout=30).json()["results"]
    assert [a["path"] for a in exact] == [first]
    prefix = requests.get(base, params={"path": subject.upper()}, timeout=30).json()
    assert {a["path"] for a in prefix["results"]} == {
        a["path"] for a in every if a["path"].startswith(subject)
    }  # istartswith
    lfp = requests.get(base, params={"glob": "*_ECEPHYS.nwb"}, timeout=30).json()["results"]
    assert {a["path"] for a in lfp} == {a["path"] for a in every if "_probe-" in a["path"]}
    desc = requests.get(base, params={"order": "-path"}, timeout=30).json()["results"]
    assert [a["path"] for a in desc] == sorted((a["path"] for a in every), reverse=True)
    assert "metadata" not in desc[0]
    r = requests.get(base, params={"order": "size"}, timeout=30)
    assert r.status_code == 400 and "order" in r.json()
    r = requests.get(base, params={"metadata": "maybe"}, timeout=30)
    assert (r.status_code, r.json()) == (400, {"metadata": ["Must be a valid boolean."]})
    assert requests.get(base, params={"zarr": "true"}, timeout=30).json()["count"] == 0


def test_paths_endpoint(fw):
    base = f"{fw.url}/api/dandisets/000021/versions/0.251116.2246/assets/paths/"
    every = all_assets(fw, "000021", version="0.251116.2246", metadata="false")
    top = requests.get(base, timeout=30).json()
    subjects = sorted({a["path"].split("/")[0] for a in every})
    assert [r["path"] for r in top["results"]] == subjects and top["count"] == len(subjects)
    assert all(r["asset"] is None for r in top["results"])
    assert sum(r["aggregate_files"] for r in top["results"]) == len(every)
    inner = requests.get(base, params={"path_prefix": subjects[0] + "/"}, timeout=30).json()
    for row in inner["results"]:
        (a,) = [a for a in every if a["path"] == row["path"]]
        assert row["asset"]["asset_id"] == a["asset_id"] and row["aggregate_size"] == a["size"]
    missing = requests.get(base, params={"path_prefix": "sub-0/"}, timeout=30)
    assert missing.status_code == 404


# ------------------------------------------------------------------------------ metadata


def test_dandiset_version_and_asset_shapes(fw):
    d = requests.get(f"{fw.url}/api/dandisets/000021/", timeout=30).json()
    assert d["identifier"] == "000021" and d["embargo_status"] == "OPEN"
    pub, draft = d["most_recent_published_version"], d["draft_version"]
    assert pub["version"] == "0.251116.2246" and draft["version"] == "draft"
    assets = all_assets(fw, "000021")
    assert pub["asset_count"] == len(assets) and pub["size"] == sum(a["size"] for a in assets)
    assert "dandiset" not in pub  # nested with child_context: no dandiset inside
    info = requests.get(f"{fw.url}/api/dandisets/000021/versions/draft/info/", timeout=30).json()
    assert info["dandiset"]["identifier"] == "000021" and info["asset_validation_errors"] == []
    meta = requests.get(f"{fw.url}/api/dandisets/000021/versions/0.251116.2246/", timeout=30)
    assert meta.json()["id"] == "DANDI:000021/0.251116.2246"
    assert meta.json()["assetsSummary"]["numberOfFiles"] == len(assets)
    a = assets[0]
    m = a["metadata"]
    assert set(a) == {"asset_id", "blob", "zarr", "path", "size", "created", "modified", "metadata"}
    assert m["id"] == f"dandiasset:{a['asset_id']}" and m["identifier"] == a["asset_id"]
    assert m["path"] == a["path"] and m["contentSize"] == a["size"]
    assert m["contentUrl"][0] == f"{fw.url}/api/assets/{a['asset_id']}/download/"
    blob = a["blob"]
    assert m["contentUrl"][1] == f"{fw.url}/dandiarchive/blobs/{blob[:3]}/{blob[3:6]}/{blob}"
    assert m["encodingFormat"] == "application/x-nwb"
    # the same metadata from the asset endpoints; info/ is the row plus metadata
    assert requests.get(f"{fw.url}/api/assets/{a['asset_id']}/", timeout=30).json() == m
    nested = f"{fw.url}/api/dandisets/000021/versions/draft/assets/{a['asset_id']}/"
    assert requests.get(nested, timeout=30).json() == m
    assert requests.get(nested + "info/", timeout=30).json() == a
    for url in (
        f"{fw.url}/api/dandisets/000023/",
        f"{fw.url}/api/dandisets/000021/versions/0.200101.0000/",
        f"{fw.url}/api/assets/{a['blob']}/",
        f"{fw.url}/api/dandisets/000022/versions/draft/assets/{a['asset_id']}/",
    ):
        r = requests.get(url, timeout=30)
        assert r.status_code == 404 and "detail" in r.json(), url


# ------------------------------------------------------------------------------ download


def test_download_redirects_to_the_blob_with_ranges(fw, dataset):
    a = all_assets(fw, "000022")[0]
    f = dataset / "files" / _file_of(dataset, a)
    url = f"{fw.url}/api/assets/{a['asset_id']}/download/"
    for method in (requests.get, requests.head):
        r = method(url, allow_redirects=False, timeout=30)
        assert r.status_code == 302
    loc = r.headers["Location"]
    assert urlsplit(loc).path == urlsplit(a["metadata"]["contentUrl"][1]).path
    name = a["path"].split("/")[-1]
    assert parse_qs(urlsplit(loc).query)["response-content-disposition"] == [
        f'attachment; filename="{name}"'
    ]
    full = requests.get(url, timeout=30)
    assert full.status_code == 200 and full.content == f.read_bytes()
    assert full.headers["ETag"] == f'"{a["metadata"]["digest"]["dandi:dandi-etag"]}"'
    assert full.headers["Content-Disposition"] == f'attachment; filename="{name}"'
    part = requests.get(url, headers={"Range": "bytes=100-199"}, timeout=30)
    assert part.status_code == 206 and part.content == f.read_bytes()[100:200]
    assert part.headers["Content-Range"] == f"bytes 100-199/{f.stat().st_size}"
    tail = requests.get(loc, headers={"Range": f"bytes={f.stat().st_size}-"}, timeout=30)
    assert tail.status_code == 416
    nested = f"{fw.url}/api/dandisets/000022/versions/draft/assets/{a['asset_id']}/download/"
    assert requests.get(nested, allow_redirects=False, timeout=30).headers["Location"] == loc


def test_wrong_digest_faults(fw, dataset):
    assets = all_assets(fw, "000021")
    target, other = assets[0], assets[1]
    fw.set_faults([{"kind": "dandi_wrong_digest", "match": target["path"]}])
    now = {a["path"]: a["metadata"]["digest"] for a in all_assets(fw, "000021")}
    good = target["metadata"]["digest"]
    bad = now[target["path"]]
    for k in ("dandi:sha2-256", "dandi:dandi-etag"):
        assert bad[k] != good[k] and len(bad[k]) == len(good[k])
    assert bad["dandi:dandi-etag"].split("-")[1] == good["dandi:dandi-etag"].split("-")[1]
    assert now[other["path"]] == other["metadata"]["digest"]
    fw.set_faults([{"kind": "dandi_wrong_sha256", "match": target["path"]}])
    one = requests.get(f"{fw.url}/api/assets/{target['asset_id']}/", timeout=30).json()["digest"]
    assert one["dandi:dandi-etag"] == good["dandi:dandi-etag"]
    assert one["dandi:sha2-256"] != good["dandi:sha2-256"]
    fw.clear_faults()
    # a mirror serving other bytes: flip_byte on the blob (its query names the file)
    name = target["path"].split("/")[-1]
    fw.set_faults([{"kind": "flip_byte", "offset": 1000, "match": name}])
    got = requests.get(f"{fw.url}/api/assets/{target['asset_id']}/download/", timeout=30)
    f = dataset / "files" / _file_of(dataset, target)
    assert len(got.content) == f.stat().st_size and got.content != f.read_bytes()
    assert hashlib.sha256(got.content).hexdigest() != good["dandi:sha2-256"]
    with pytest.raises(ValueError, match="unknown parameters"):
        fw.set_faults([{"kind": "dandi_wrong_digest", "digest": "both"}])


def test_lazy_files_are_generated_for_a_listing(tmp_path, dataset):
    lazy = synth.make_dataset(
        tmp_path / "lazy", seed=3, sessions=3, probes_per_session=2, duration_s=60, files="lazy"
    )
    assert not nwb_files(lazy)
    with FakeWarehouse(lazy) as fw:
        listed = all_assets(fw, "000022")
    assert len(listed) == len([p for p in nwb_files(lazy)])
    # byte-identical to the eager dataset's files, so the digests agree too
    eager = {a["path"]: a["metadata"]["digest"] for a in listed}
    with FakeWarehouse(dataset) as fw:
        assert {a["path"]: a["metadata"]["digest"] for a in all_assets(fw, "000022")} == eager


def test_realistic_paths_use_the_real_subject_ids(tmp_path):
    # The realistic catalogue's known DANDI subjects (sub-<donor id>), e.g. sub-699733573 for
    # 715093703 on the real archive; without generating any file (the paths endpoint at the root
    # needs sizes, so look at the catalogue the stand-in builds instead).
    ds = synth.make_dataset(tmp_path / "real", seed=0, realistic=True)
    with FakeWarehouse(ds) as fw:
        arc = fake_dandi.archive_for(fw)
        paths = {a.path for a in arc.assets("000021")}
        assert len(arc.assets("000021")) + len(arc.assets("000022")) == 58 + 325
        assert "sub-699733573/sub-699733573_ses-715093703.nwb" in paths
        lfp = "sub-699733573/sub-699733573_ses-715093703_probe-810755797_ecephys.nwb"
        assert lfp in paths
        assert any(a.path.startswith("sub-744912845/") for a in arc.assets("000022"))
    shutil.rmtree(ds)
