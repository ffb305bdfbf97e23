"""DANDI's own client (the ``dandi`` package, in its own virtualenv) judges the DANDI stand-in.

One module-scoped fixture serves a small synthetic dataset (one LFP file made larger than one
64 MiB dandi-etag part), sets two faults, and runs ONE client subprocess
(``tests/oracle/dandi_oracle.py``) that lists both dandisets (the published version of 000021, the
draft of 000022, two assets a page) and downloads four assets with ``dandi download``'s digest
check. The tests compare what the client saw with the bytes on disk and with our listing.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import requests

from ecephys_pipeline import synth
from ecephys_pipeline.download.digests import Digester
from ecephys_pipeline.fake import FakeWarehouse

ORACLE_SCRIPT = Path(__file__).parent / "oracle" / "dandi_oracle.py"
ORACLE_TIMEOUT_S = 120
MiB = 1024 * 1024
PUBLISHED_21 = "0.251116.2246"


def dandi_python() -> str | None:
    env = os.environ.get("DANDI_PYTHON")
    if env:
        return env
    local = Path(__file__).resolve().parents[1] / ".venv-dandi" / "bin" / "python"
    return str(local) if local.exists() else None


DANDI_PYTHON = dandi_python()

pytestmark = [
    pytest.mark.dandi,
    pytest.mark.skipif(
        DANDI_PYTHON is None,
        reason="no dandi client interpreter: set DANDI_PYTHON (make dandi-oracle builds "
        ".venv-dandi)",
    ),
]


def etag_by_definition(data: bytes) -> str:
    parts = [data[i : i + 64 * MiB] for i in range(0, len(data), 64 * MiB)]
    return hashlib.md5(b"".join(hashlib.md5(p).digest() for p in parts)).hexdigest() + (
        f"-{len(parts)}"
    )


def listing(fw, dandiset: str, version: str) -> dict[str, dict]:
    url = f"{fw.url}/api/dandisets/{dandiset}/versions/{version}/assets/"
    r = requests.get(url, params={"metadata": "true", "page_size": 1000}, timeout=60)
    r.raise_for_status()
    return {a["path"]: a for a in r.json()["results"]}


@pytest.fixture(scope="module")
def judged(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("dandi_oracle")
    ds = synth.make_dataset(tmp / "ds", seed=5, sessions=3, probes_per_session=2, duration_s=60)
    # One LFP file grows past one dandi-etag part (the stand-in does not read HDF5; the client
    # checks a 2-part etag while it streams).
    big = sorted((ds / "files").rglob("probe_*_lfp.nwb"))[0]
    with open(big, "ab") as fh:
        fh.write(bytes(range(251)) * (64 * MiB // 251 + 1000))
    with FakeWarehouse(ds) as fw:
        truth = {}  # what our stand-in publishes with no fault, and the bytes behind it
        for did, version in (("000021", PUBLISHED_21), ("000022", "draft")):
            for path, a in listing(fw, did, version).items():
                truth[path] = (did, a)
        files = {hashlib.sha256(p.read_bytes()).hexdigest(): p for p in ds.rglob("*.nwb")}
        assert {a["metadata"]["digest"]["dandi:sha2-256"] for _, a in truth.values()} == set(files)
        paths = sorted(truth)
        big_path = next(p for p in paths if files_of(truth, files, p) == big)
        session_21 = next(
            p for p in paths if truth[p][0] == "000021" and "_probe-" not in p and p != big_path
        )
        others = [p for p in paths if p not in (big_path, session_21)]
        wrong_digest, flipped = others[0], others[1]
        fw.set_faults(
            [
                {"kind": "dandi_wrong_digest", "match": wrong_digest},
                {"kind": "flip_byte", "offset": 4321, "match": blob_path(truth[flipped][1])},
            ]
        )
        published_now = {}
        for did, version in (("000021", PUBLISHED_21), ("000022", "draft")):
            published_now.update(listing(fw, did, version))
        downloads = {
            "session": session_21,
            "big": big_path,
            "wrong_digest": wrong_digest,
            "flipped": flipped,
        }
        plan = {
            "api_url": f"{fw.url}/api",
            "dandisets": {"000021": PUBLISHED_21, "000022": "draft"},
            "page_size": 2,
            "downloads": [
                {
                    "dandiset": truth[p][0],
                    "version": PUBLISHED_21 if truth[p][0] == "000021" else "draft",
                    "path": p,
                    "out": str(tmp / "dl" / key),
                }
                for key, p in downloads.items()
            ],
        }
        (tmp / "plan.json").write_text(json.dumps(plan))
        env = {
            **os.environ,
            "DANDI_NO_ET": "1",  # no version check against the internet (dandi.utils)
            "DANDI_CACHE": "ignore",  # fscacher: no persistent digest cache
            "HOME": str(tmp / "home"),  # keyring, platformdirs: nothing in the real home
            "PYTHONPATH": "",
        }
        proc = subprocess.run(
            [DANDI_PYTHON, str(ORACLE_SCRIPT), str(tmp / "plan.json"), str(tmp / "result.json")],
            env=env,
            capture_output=True,
            text=True,
            timeout=ORACLE_TIMEOUT_S,
        )
        assert proc.returncode == 0, proc.stderr[-4000:]
        log = fw.requests
    result = json.loads((tmp / "result.json").read_text())
    return {
        "result": result,
        "truth": truth,
        "files": files,
        "published_now": published_now,
        "downloads": dict(zip(downloads, result["downloads"], strict=True)),
        "paths": downloads,
        "log": log,
        "stderr": proc.stderr,
    }


def files_of(truth, files, path) -> Path:
    return files[truth[path][1]["metadata"]["digest"]["dandi:sha2-256"]]


def blob_path(asset: dict) -> str:
    b = asset["blob"]
    return f"/dandiarchive/blobs/{b[:3]}/{b[3:6]}/{b}"


def test_the_client_lists_what_we_publish(judged):
    res, truth, now = judged["result"], judged["truth"], judged["published_now"]
    assert sys.version_info >= (3, 10) and res["dandi_version"]
    for did, version in (("000021", PUBLISHED_21), ("000022", "draft")):
        seen = res["dandisets"][did]
        assert seen["version"] == version
        published = {"000021": PUBLISHED_21, "000022": "0.251116.2247"}[did]
        assert seen["versions"] == ["draft", published]
        ours = {p: a for p, (d, a) in truth.items() if d == did}
        assert seen["asset_count"] == len(ours) == seen["draft_asset_count"]
        assert seen["size"] == sum(a["size"] for a in ours.values())
        assert len(ours) > 2  # more than one page of 2: the client's parallel paging ran
        got = {a["path"]: a for a in seen["assets"]}
        assert sorted(got) == sorted(ours)
        for path, a in ours.items():
            c = got[path]
            assert (c["asset_id"], c["size"], c["blob"], c["content_size"]) == (
                a["asset_id"], a["size"], a["blob"], a["size"],
            )  # fmt: skip
            assert c["download_url"] == a["metadata"]["contentUrl"][0]
            assert c["content_url"] == a["metadata"]["contentUrl"][0]
            # the client read the digests we publish now (one asset's are wrong on purpose)
            published = now[path]["metadata"]["digest"]
            assert (c["sha256"], c["dandi_etag"]) == (
                published["dandi:sha2-256"], published["dandi:dandi-etag"],
            )  # fmt: skip
    # pages 2.. came in parallel from the first page's count: page=2 was asked for
    asked = [r["query"] for r in judged["log"] if r["path"].endswith("/assets/")]
    assert any("page=2" in q for q in asked)


def test_the_client_downloads_with_its_digest_check_passing(judged):
    for key in ("session", "big"):
        d = judged["downloads"][key]
        path = judged["paths"][key]
        assert d["error"] is None, (key, d)
        checks = [r.get("checksum") for r in d["records"] if isinstance(r, dict)]
        assert [c for c in checks if c] == ["ok"], d["records"]
        (got,) = d["files"]
        src = files_of(judged["truth"], judged["files"], path)
        data = Path(got).read_bytes()
        assert data == src.read_bytes()
        assert Path(got).name == path.split("/")[-1]
        # the client's own digest code on the downloaded file = hashlib = the definition
        assert d["sha256"] == hashlib.sha256(data).hexdigest()
        assert d["dandi_etag"] == etag_by_definition(data)
        assert d["dandi_etag"] == judged["truth"][path][1]["metadata"]["digest"]["dandi:dandi-etag"]
        # and the pipeline's own hasher (download/digests.py), the one every download uses
        ours = Digester.of_file(got)
        assert (ours.sha256, ours.dandi_etag) == (d["sha256"], d["dandi_etag"])
    assert judged["downloads"]["big"]["dandi_etag"].endswith("-2")
    assert judged["downloads"]["session"]["dandi_etag"].endswith("-1")


def test_the_client_refuses_a_wrong_published_digest(judged):
    d = judged["downloads"]["wrong_digest"]
    assert d["error"] and "error" in d["error"].lower()
    bad = [r for r in d["records"] if isinstance(r, dict) and r.get("checksum") == "differs"]
    assert len(bad) == 1 and bad[0]["status"] == "error"
    published = judged["published_now"][judged["paths"]["wrong_digest"]]["metadata"]["digest"]
    assert published["dandi:dandi-etag"] in bad[0]["message"]  # names the published etag
    assert d["dandi_etag"] in bad[0]["message"]  # and the one it computed


def test_the_client_refuses_a_mirror_serving_other_bytes(judged):
    d = judged["downloads"]["flipped"]
    bad = [r for r in d["records"] if isinstance(r, dict) and r.get("checksum") == "differs"]
    assert d["error"] and len(bad) == 1
    src = files_of(judged["truth"], judged["files"], judged["paths"]["flipped"]).read_bytes()
    (got,) = d["files"]
    data = Path(got).read_bytes()
    assert len(data) == len(src) and data != src
    assert [i for i in range(0, len(src), 4096) if data[i : i + 4096] != src[i : i + 4096]] == [
        4096
    ]  # exactly the block holding byte 4321
