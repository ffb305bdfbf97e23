"""The fake warehouse over real sockets: RMA, downloads, S3 layout, faults, CLI, AllenSDK oracle.

The dataset is built here (not by synth) so these tests depend only on the fake itself.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import random
import signal
import socket
import subprocess
import sys
import textwrap
import time
import xml.etree.ElementTree as ET
from email.utils import formatdate
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import requests

from ecephys_pipeline.fake import FakeWarehouse, validate_faults

T = 10  # seconds: timeout of every client call
S1, S2 = 715093703, 719161530
P1A, P1B, P2A = 810755797, 810755799, 729445648
WKF_S1, WKF_S2, WKF_LFP = 1026124469, 1026124034, 1026124481
SIZES = {"s1": 300_000, "s2": 120_000, "lfp": 200_000}
RMA = "/api/v2/data/query.json?"
PAGE = ",rma::options[start_row$eq{start}][num_rows$eq{count}][order$eq'id']"
S3 = "/visual-coding-neuropixels/ecephys-cache/"
S3NS = "{http://s3.amazonaws.com/doc/2006-03-01/}"

CHANNEL_Q = (
    "criteria=model::EcephysChannel,rma::include,structure,rma::options[tabular$eq'"
    "ecephys_channels.id,ecephys_probe_id,local_index,probe_horizontal_position,"
    "probe_vertical_position,anterior_posterior_ccf_coordinate,dorsal_ventral_ccf_coordinate,"
    "left_right_ccf_coordinate,structures.id as ecephys_structure_id,"
    "structures.acronym as ecephys_structure_acronym']"
)
SESSION_Q = (
    "criteria=model::EcephysSession,rma::include,specimen(donor(age)),"
    "well_known_files(well_known_file_type)"
)
CHANNEL_KEYS = [
    "id",
    "ecephys_probe_id",
    "local_index",
    "probe_horizontal_position",
    "probe_vertical_position",
    "anterior_posterior_ccf_coordinate",
    "dorsal_ventral_ccf_coordinate",
    "left_right_ccf_coordinate",
    "ecephys_structure_id",
    "ecephys_structure_acronym",
]


# ------------------------------------------------------------------------------ dataset


def _session(sid, specimen, stim, fail_eye, sex, days, genotype):
    return {
        "id": sid,
        "specimen_id": specimen,
        "stimulus_name": stim,
        "fail_eye_tracking": fail_eye,
        "published_at": "2019-10-03T00:00:00Z",
        "date_of_acquisition": "2019-01-19T08:54:18Z",
        "isi_experiment_id": 700000000 + sid % 1000,
        "specimen": {
            "id": specimen,
            "name": f"Mouse-{specimen}",
            "donor": {
                "id": specimen + 1,
                "name": f"donor-{specimen}",
                "sex": sex,
                "full_genotype": genotype,
                "age": {"id": 9000 + days, "name": f"P{days}", "days": days},
            },
        },
    }


def _wkf(wid, atype, aid, kind, name):
    return {
        "id": wid,
        "path": f"/external/ecephys/prod0/{name}",
        "download_link": f"/api/v2/well_known_file_download/{wid}",
        "attachable_id": aid,
        "attachable_type": atype,
        "well_known_file_type_id": 1 if kind == "EcephysNwb" else 2,
        "well_known_file_type": {"id": 1 if kind == "EcephysNwb" else 2, "name": kind},
    }


def build_dataset(root: Path) -> dict:
    rng = random.Random(1234)
    wh = root / "warehouse"
    wh.mkdir(parents=True)
    sessions = [
        _session(S1, 699733581, "brain_observatory_1.1", False, "M", 118, "Sst-IRES-Cre/wt"),
        _session(S2, 703279284, "functional_connectivity", True, "F", 100, None),
    ]
    probes = [
        {"id": P1A, "ecephys_session_id": S1, "name": "probeA", "phase": "3a",
         "sampling_rate": 29999.967418, "lfp_sampling_rate": 1249.998642, "use_lfp_data": True},
        {"id": P1B, "ecephys_session_id": S1, "name": "probeB", "phase": "3a",
         "sampling_rate": 30000.1, "lfp_sampling_rate": 1250.0, "use_lfp_data": False},
        {"id": P2A, "ecephys_session_id": S2, "name": "probeA", "phase": "PXI",
         "sampling_rate": 30000.0, "lfp_sampling_rate": 1250.0, "use_lfp_data": True},
    ]  # fmt: skip
    channels = []
    cid = 849705558
    for probe in probes:
        for local in range(4):
            structure = [385, 382, None, 385][local]
            channels.append({
                "id": cid, "ecephys_probe_id": probe["id"], "local_index": local,
                "probe_horizontal_position": [43, 11, 59, 27][local],
                "probe_vertical_position": 20 * (local // 2 + 1),
                "anterior_posterior_ccf_coordinate": 8165.0 + local,
                "dorsal_ventral_ccf_coordinate": 3314.0, "left_right_ccf_coordinate": 6862.0,
                "structure_id": structure, "valid_data": local != 3,
            })  # fmt: skip
            cid += 2
    units = []
    uid = 951061537
    for ch in channels:
        for _ in range(2):
            units.append({
                "id": uid, "ecephys_channel_id": ch["id"],
                "quality": "good" if uid % 3 else "noise", "snr": round(rng.uniform(1, 5), 3),
                "firing_rate": round(rng.uniform(0.1, 20), 3), "isi_violations": 0.1,
                "presence_ratio": 0.99, "amplitude_cutoff": 0.01, "isolation_distance": None,
                "epoch_name_quality_metrics": "complete_session", "PT_ratio": 0.5,
            })  # fmt: skip
            uid += 2
    wkfs = [
        _wkf(WKF_S1, "EcephysSession", S1, "EcephysNwb", f"session_{S1}.nwb"),
        _wkf(WKF_S2, "EcephysSession", S2, "EcephysNwb", f"session_{S2}.nwb"),
        _wkf(WKF_LFP, "EcephysProbe", P1A, "EcephysLfpNwb", f"probe_{P1A}_lfp.nwb"),
    ]
    structures = [
        {"id": 385, "acronym": "VISp", "name": "Primary visual area"},
        {"id": 382, "acronym": "CA1", "name": "Field CA1"},
    ]
    for name, rows in [
        ("EcephysSession", sessions),
        ("EcephysProbe", probes),
        ("EcephysChannel", channels),
        ("EcephysUnit", units),
        ("WellKnownFile", wkfs),
        ("Structure", structures),
    ]:
        (wh / f"{name}.json").write_text(json.dumps(rows))
    files = {}
    for key, rel in [
        ("s1", f"session_{S1}/session_{S1}.nwb"),
        ("s2", f"session_{S2}/session_{S2}.nwb"),
        ("lfp", f"session_{S1}/probe_{P1A}_lfp.nwb"),
    ]:
        path = root / "files" / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(rng.randbytes(SIZES[key]))
        files[key] = path
    s3 = root / "s3"
    s3.mkdir()
    (s3 / "manifest.json").write_text(json.dumps({"manifest": [{"type": "manifest_version"}]}))
    for table in ("sessions", "probes", "channels", "units"):
        (s3 / f"{table}.csv").write_text(f"id,table\n1,{table}\n")
    return {
        "sessions": sessions,
        "probes": probes,
        "channels": channels,
        "units": units,
        "wkfs": wkfs,
        "files": files,
    }


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("fake_dataset")
    info = build_dataset(root)
    info["root"] = root
    return info


@pytest.fixture(scope="module")
def server(dataset):
    with FakeWarehouse(dataset["root"]) as fw:
        yield fw


@pytest.fixture
def fw(server):
    server.clear_faults()
    server.clear_requests()
    yield server
    server.clear_faults()


def rma(fw, query: str, start=0, count=5000, page=True) -> dict:
    url = fw.url + RMA + query + (PAGE.format(start=start, count=count) if page else "")
    r = requests.get(url, timeout=T)
    assert r.headers["Content-Type"].startswith("application/json")
    body = r.json()
    body["_status"] = r.status_code
    return body


def rma_all(fw, query: str, count=5000) -> list[dict]:
    """AllenSDK's paging loop, bounded."""
    rows, start, total = [], 0, None
    for _ in range(1000):
        env = rma(fw, query, start, count)
        assert env["success"], env["msg"]
        assert env["num_rows"] == len(env["msg"])
        rows += env["msg"]
        start += env["num_rows"]
        total = env["total_rows"] if total is None else total
        assert env["total_rows"] == total
        if start >= total:
            return rows
    raise AssertionError("paging did not finish")


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# ------------------------------------------------------------------------------ RMA


def test_requests_encodes_queries_like_allensdk_sees_them(fw):
    url = requests.Request("GET", fw.url + RMA + CHANNEL_Q + PAGE.format(start=0, count=5000))
    prepared = url.prepare().url
    assert "%5Btabular$eq'ecephys_channels.id," in prepared
    assert "structures.id%20as%20ecephys_structure_id" in prepared
    assert "rma::options%5Bstart_row$eq0%5D%5Bnum_rows$eq5000%5D%5Border$eq'id'%5D" in prepared
    logged_before = len(fw.requests)
    assert requests.get(prepared, timeout=T).json()["success"]
    assert fw.requests[logged_before]["query"].endswith("[order$eq'id']")


def test_sessions_query_nests_includes(fw, dataset):
    env = rma(fw, SESSION_Q)
    assert env["_status"] == 200
    assert {k: env[k] for k in ("success", "id", "start_row", "num_rows", "total_rows")} == {
        "success": True,
        "id": 0,
        "start_row": 0,
        "num_rows": 2,
        "total_rows": 2,
    }
    rows = env["msg"]
    assert [r["id"] for r in rows] == [S1, S2]
    s1 = rows[0]
    assert s1["specimen"]["donor"]["age"]["days"] == 118
    assert s1["specimen"]["donor"]["sex"] == "M"
    assert s1["fail_eye_tracking"] is False
    assert [w["id"] for w in s1["well_known_files"]] == [WKF_S1]
    assert s1["well_known_files"][0]["well_known_file_type"]["name"] == "EcephysNwb"
    assert rows[1]["specimen"]["donor"]["full_genotype"] is None


def test_includes_only_what_was_asked(fw):
    plain = rma(fw, "criteria=model::EcephysSession")["msg"][0]
    assert "specimen" not in plain and "well_known_files" not in plain
    assert plain["stimulus_name"] == "brain_observatory_1.1"
    shallow = rma(fw, "criteria=model::EcephysSession,rma::include,specimen")["msg"][0]
    assert shallow["specimen"]["name"] == "Mouse-699733581"
    assert "donor" not in shallow["specimen"]
    wkf = rma(fw, "criteria=model::WellKnownFile")["msg"][0]
    assert "well_known_file_type" not in wkf and wkf["well_known_file_type_id"] == 1
    probe = rma(fw, f"criteria=model::EcephysProbe[id$eq{P1A}],rma::include,well_known_files")
    assert [w["id"] for w in probe["msg"][0]["well_known_files"]] == [WKF_LFP]


def test_sessions_filtered_as_allensdk_renders_them(fw):
    q = (
        f"criteria=model::EcephysSession[id$in{S1},{S2}][fail_eye_tracking$eqfalse]"
        "[stimulus_name$in'brain_observatory_1.1','functional_connectivity'],"
        "rma::include,specimen(donor(age)),well_known_files(well_known_file_type)"
    )
    env = rma(fw, q)
    assert [r["id"] for r in env["msg"]] == [S1] and env["total_rows"] == 1
    q2 = f"criteria=model::EcephysSession[id$in{S2}][fail_eye_tracking$eqtrue]"
    assert [r["id"] for r in rma(fw, q2)["msg"]] == [S2]


def test_probes_unfiltered_and_filtered(fw, dataset):
    rows = rma(fw, "criteria=model::EcephysProbe")["msg"]
    assert rows == sorted(dataset["probes"], key=lambda p: p["id"])
    q = f"criteria=model::EcephysProbe[id$in{P1A},{P1B},{P2A}][ecephys_session_id$in{S1}]"
    assert [r["id"] for r in rma(fw, q)["msg"]] == sorted([P1A, P1B])


def test_channels_tabular_with_double_options_clause(fw, dataset):
    rows = rma_all(fw, CHANNEL_Q)
    valid = [c for c in dataset["channels"] if c["valid_data"]]
    assert len(rows) == len(valid) == 9  # valid_data false channels are not served
    assert all(list(r) == CHANNEL_KEYS for r in rows)
    assert [r["id"] for r in rows] == sorted(c["id"] for c in valid)
    by_id = {r["id"]: r for r in rows}
    first = valid[0]
    assert by_id[first["id"]]["ecephys_structure_id"] == 385
    assert by_id[first["id"]]["ecephys_structure_acronym"] == "VISp"
    no_structure = next(c for c in valid if c["structure_id"] is None)
    assert by_id[no_structure["id"]]["ecephys_structure_acronym"] is None
    # filtered form
    q = CHANNEL_Q.replace(
        "model::EcephysChannel",
        f"model::EcephysChannel[id$in{first['id']}][ecephys_probe_id$in{P1A}]",
    )
    assert [r["id"] for r in rma(fw, q)["msg"]] == [first["id"]]


def test_units_unfiltered_filtered_and_association_paths(fw, dataset):
    units = dataset["units"]
    assert len(rma_all(fw, "criteria=model::EcephysUnit", count=7)) == len(units)
    ch_probe = {c["id"]: c["ecephys_probe_id"] for c in dataset["channels"]}
    probe_session = {p["id"]: p["ecephys_session_id"] for p in dataset["probes"]}
    s2_units = [u["id"] for u in units if probe_session[ch_probe[u["ecephys_channel_id"]]] == S2]
    q = (
        "criteria=model::EcephysUnit,rma::criteria,"
        f"ecephys_channel(ecephys_probe(ecephys_session[id$in{S2}]))"
    )
    assert [r["id"] for r in rma(fw, q)["msg"]] == s2_units
    u0, u1 = units[0], units[5]
    q = (
        f"criteria=model::EcephysUnit,rma::criteria[id$in{u0['id']},{u1['id']}],"
        f"rma::criteria[ecephys_channel_id$in{u0['ecephys_channel_id']}],"
        f"rma::criteria,ecephys_channel(ecephys_probe[id$in{P1A}]),"
        f"rma::criteria,ecephys_channel(ecephys_probe(ecephys_session[id$in{S1}]))"
    )
    assert [r["id"] for r in rma(fw, q)["msg"]] == [u0["id"]]
    # units on an invalid channel still belong to their probe
    bad = next(c for c in dataset["channels"] if not c["valid_data"])
    q = (
        "criteria=model::EcephysUnit,rma::criteria,"
        f"ecephys_channel(ecephys_probe[id$in{bad['ecephys_probe_id']}])"
    )
    got = {r["ecephys_channel_id"] for r in rma(fw, q)["msg"]}
    assert bad["id"] in got


def test_well_known_file_queries(fw):
    q = (
        "criteria=model::WellKnownFile,rma::criteria,well_known_file_type[name$eq'EcephysNwb']"
        f"[attachable_type$eq'EcephysSession'][attachable_id$eq{S1}]"
    )
    rows = rma(fw, q)["msg"]
    assert (
        len(rows) == 1 and rows[0]["download_link"] == f"/api/v2/well_known_file_download/{WKF_S1}"
    )
    q = (
        "criteria=model::WellKnownFile,rma::criteria,well_known_file_type[name$eq'EcephysLfpNwb']"
        f"[attachable_type$eq'EcephysProbe'][attachable_id$eq{P1A}]"
    )
    assert [r["id"] for r in rma(fw, q)["msg"]] == [WKF_LFP]
    q_none = q.replace(str(P1A), str(P1B))  # a probe without LFP: empty, like the 7 real ones
    env = rma(fw, q_none)
    assert env["success"] and env["msg"] == [] and env["total_rows"] == 0
    q_all = (
        "criteria=model::WellKnownFile,rma::criteria,"
        "well_known_file_type[name$in'EcephysNwb','EcephysLfpNwb']"
    )
    assert [r["id"] for r in rma(fw, q_all)["msg"]] == sorted([WKF_S1, WKF_S2, WKF_LFP])


def test_metric_bundles_are_an_empty_list(fw):
    q = (
        "criteria=model::EcephysUnitMetricBundle,rma::criteria,"
        f"ecephys_unit(ecephys_channel(ecephys_probe(ecephys_session[id$in{S1}])))"
    )
    env = rma(fw, q)
    assert env["success"] and env["msg"] == [] and env["total_rows"] == 0


def test_paging_is_stable_and_totals_are_right(fw, dataset):
    expected = sorted(u["id"] for u in dataset["units"])
    seen = []
    for start in range(0, len(expected), 2):
        env = rma(fw, "criteria=model::EcephysUnit", start, 2)
        assert env["start_row"] == start and env["total_rows"] == len(expected)
        assert env["num_rows"] == len(env["msg"]) == min(2, len(expected) - start)
        seen += [r["id"] for r in env["msg"]]
    assert seen == expected
    past = rma(fw, "criteria=model::EcephysUnit", len(expected) + 10, 2)
    assert past["success"] and past["num_rows"] == 0 and past["msg"] == []
    desc = rma(fw, "criteria=model::EcephysProbe,rma::options[order$eq'id desc']", page=False)
    assert [r["id"] for r in desc["msg"]] == sorted([P1A, P1B, P2A], reverse=True)
    by_name = rma(fw, "criteria=model::EcephysProbe,rma::options[order$eq'name,id']", page=False)
    assert [r["id"] for r in by_name["msg"]] == sorted([P1A, P2A]) + [P1B]


def test_default_page_size_and_cap(fw, dataset):
    env = rma(fw, "criteria=model::EcephysUnit", page=False)
    assert env["num_rows"] == min(50, len(dataset["units"]))  # DEFAULT_NUM_ROWS
    env = rma(fw, "criteria=model::EcephysUnit,rma::options[num_rows$eq1000000]", page=False)
    assert env["num_rows"] == len(dataset["units"])


def test_q_parameter_and_operators(fw):
    r = requests.get(fw.url + RMA + f"q=model::EcephysProbe[id$eq{P2A}]", timeout=T).json()
    assert [x["id"] for x in r["msg"]] == [P2A]
    for flt, ids in [
        (f"[id$ne{P2A}]", [P1A, P1B]),
        (f"[id$gt{P1A}]", [P1B]),
        (f"[id$ge{P1A}]", [P1A, P1B]),
        (f"[id$lt{P1A}]", [P2A]),
        (f"[id$le{P1A}]", [P2A, P1A]),
        ("[name$eq'probeB']", [P1B]),
        ("[phase$in'PXI']", [P2A]),
        ("[use_lfp_data$eqtrue]", [P2A, P1A]),
        ("[name$il'PROBE*']", [P2A, P1A, P1B]),
    ]:
        rows = rma(fw, f"criteria=model::EcephysProbe{flt}")["msg"]
        assert [x["id"] for x in rows] == sorted(ids), flt


@pytest.mark.parametrize(
    ("query", "needle"),
    [
        ("criteria=model::NoSuchModel", "unknown model 'NoSuchModel'"),
        ("criteria=model::EcephysProbe[bogus$eq1]", "unknown field 'bogus'"),
        ("criteria=model::EcephysProbe[id$eq1", "unbalanced"),
        ("criteria=model::EcephysProbe[id$xx1]", "unknown operator $xx"),
        ("criteria=model::EcephysProbe[use_lfp_data$eqmaybe]", "invalid boolean"),
        ("criteria=model::EcephysProbe,rma::include,nope", "unknown association 'nope'"),
        ("criteria=model::EcephysProbe,rma::options[frobnicate$eq1]", "unknown option"),
        ("criteria=rma::include,structure", "before model::"),
        (
            "criteria=model::EcephysChannel,rma::options[tabular$eq'structures.acronym']",
            "is not part of the query",
        ),
    ],
)
def test_errors_are_success_false_with_a_message(fw, query, needle):
    env = rma(fw, query)
    assert env["_status"] == 400
    assert env["success"] is False
    assert isinstance(env["msg"], str) and needle in env["msg"], env["msg"]
    assert {k: env[k] for k in ("id", "start_row", "num_rows", "total_rows")} == dict.fromkeys(
        ("id", "start_row", "num_rows", "total_rows"), 0
    )


def test_missing_criteria_is_an_error(fw):
    r = requests.get(fw.url + "/api/v2/data/query.json", timeout=T)
    assert r.status_code == 400 and r.json()["success"] is False


# ------------------------------------------------------------------------------ downloads


@pytest.mark.parametrize("prefix", ["/", "//"])
def test_download_single_and_double_slash(fw, dataset, prefix):
    url = f"{fw.url}{prefix}api/v2/well_known_file_download/{WKF_S1}"
    r = requests.get(url, timeout=T)
    data = dataset["files"]["s1"].read_bytes()
    assert r.status_code == 200 and r.content == data
    assert r.headers["Content-Length"] == str(len(data))
    assert r.headers["Content-Type"] == "application/octet-stream"
    assert r.headers["Accept-Ranges"] == "bytes"
    assert r.headers["ETag"].startswith('"') and r.headers["Last-Modified"].endswith("GMT")
    assert f'filename="session_{S1}.nwb"' in r.headers["Content-Disposition"]
    assert fw.requests[-1]["path"] == f"{prefix}api/v2/well_known_file_download/{WKF_S1}"
    assert fw.requests[-1]["bytes_sent"] == len(data)


def test_download_lfp_and_unknown_ids(fw, dataset):
    r = requests.get(f"{fw.url}//api/v2/well_known_file_download/{WKF_LFP}", timeout=T)
    assert r.status_code == 200 and sha(r.content) == sha(dataset["files"]["lfp"].read_bytes())
    for bad in ("999", "abc", ""):
        r = requests.get(f"{fw.url}/api/v2/well_known_file_download/{bad}", timeout=T)
        assert r.status_code == 404


def test_ranges_if_range_416_head_and_etag_stability(fw, dataset):
    url = f"{fw.url}//api/v2/well_known_file_download/{WKF_S2}"
    data = dataset["files"]["s2"].read_bytes()
    size = len(data)
    with requests.Session() as s:  # one keep-alive connection for all of these
        head = s.head(url, timeout=T)
        assert head.status_code == 200 and head.content == b""
        assert head.headers["Content-Length"] == str(size)
        etag, lm = head.headers["ETag"], head.headers["Last-Modified"]
        assert s.head(url, timeout=T).headers["ETag"] == etag  # stable
        r = s.get(url, headers={"Range": "bytes=1000-"}, timeout=T)
        assert r.status_code == 206 and r.content == data[1000:]
        assert r.headers["Content-Range"] == f"bytes 1000-{size - 1}/{size}"
        assert r.headers["Content-Length"] == str(size - 1000)
        r = s.get(url, headers={"Range": "bytes=10-19"}, timeout=T)
        assert r.status_code == 206 and r.content == data[10:20]
        r = s.get(url, headers={"Range": "bytes=-100"}, timeout=T)
        assert r.status_code == 206 and r.content == data[-100:]
        r = s.get(url, headers={"Range": f"bytes=100-{size * 2}"}, timeout=T)
        assert r.status_code == 206 and r.content == data[100:]
        r = s.get(url, headers={"Range": f"bytes={size}-"}, timeout=T)
        assert r.status_code == 416 and r.headers["Content-Range"] == f"bytes */{size}"
        r = s.get(url, headers={"Range": "bytes=5-", "If-Range": etag}, timeout=T)
        assert r.status_code == 206 and r.content == data[5:]
        r = s.get(url, headers={"Range": "bytes=5-", "If-Range": '"other"'}, timeout=T)
        assert r.status_code == 200 and r.content == data
        r = s.get(url, headers={"Range": "bytes=5-", "If-Range": lm}, timeout=T)
        assert r.status_code == 206
        stale = formatdate(time.time() - 86400 * 400, usegmt=True)
        r = s.get(url, headers={"Range": "bytes=5-", "If-Range": stale}, timeout=T)
        assert r.status_code == 200 and len(r.content) == size
        head = s.head(url, headers={"Range": "bytes=0-9"}, timeout=T)
        assert head.status_code == 206 and head.headers["Content-Length"] == "10"
        assert s.get(url, timeout=T).headers["ETag"] == etag


# ------------------------------------------------------------------------------ S3 layout


@pytest.mark.parametrize("base", [S3, "/allen-brain-observatory" + S3])
def test_s3_objects(fw, dataset, base):
    r = requests.get(fw.url + base + "sessions.csv", timeout=T)
    assert r.status_code == 200 and r.text == "id,table\n1,sessions\n"
    assert r.headers["ETag"] == '"' + hashlib.md5(r.content).hexdigest() + '"'
    assert json.loads(requests.get(fw.url + base + "manifest.json", timeout=T).text)["manifest"]
    r = requests.get(fw.url + base + f"session_{S1}/probe_{P1A}_lfp.nwb", timeout=T)
    assert r.content == dataset["files"]["lfp"].read_bytes()
    r = requests.get(
        fw.url + base + f"session_{S1}/session_{S1}.nwb", headers={"Range": "bytes=0-99"}, timeout=T
    )
    assert r.status_code == 206 and r.content == dataset["files"]["s1"].read_bytes()[:100]
    r = requests.get(fw.url + base + "nope.csv", timeout=T)
    assert r.status_code == 404 and r.headers["Content-Type"] == "application/xml"
    err = ET.fromstring(r.content)
    assert err.tag == "Error" and err.findtext("Code") == "NoSuchKey"
    assert err.findtext("Key") == "visual-coding-neuropixels/ecephys-cache/nope.csv"
    assert requests.head(fw.url + base + "nope.csv", timeout=T).status_code == 404
    assert (
        requests.get(fw.url + base + "../warehouse/EcephysUnit.json", timeout=T).status_code == 404
    )


def _list(fw, path="/", **params):
    r = requests.get(fw.url + path, params={"list-type": "2", **params}, timeout=T)
    assert r.status_code == 200 and r.headers["Content-Type"] == "application/xml"
    root = ET.fromstring(r.content)
    assert root.tag == S3NS + "ListBucketResult"
    keys = [c.findtext(S3NS + "Key") for c in root.findall(S3NS + "Contents")]
    prefixes = [c.findtext(S3NS + "Prefix") for c in root.findall(S3NS + "CommonPrefixes")]
    return root, keys, prefixes


def test_s3_listing(fw, dataset):
    prefix = "visual-coding-neuropixels/ecephys-cache/"
    root, keys, _ = _list(fw, prefix=prefix)
    expected = sorted(
        [prefix + f"{t}.csv" for t in ("sessions", "probes", "channels", "units")]
        + [prefix + "manifest.json"]
        + [
            prefix + f"session_{S1}/session_{S1}.nwb",
            prefix + f"session_{S1}/probe_{P1A}_lfp.nwb",
            prefix + f"session_{S2}/session_{S2}.nwb",
        ]
    )
    assert keys == expected
    assert root.findtext(S3NS + "IsTruncated") == "false"
    contents = {c.findtext(S3NS + "Key"): c for c in root.findall(S3NS + "Contents")}
    s1 = contents[prefix + f"session_{S1}/session_{S1}.nwb"]
    assert int(s1.findtext(S3NS + "Size")) == SIZES["s1"]
    head = requests.head(fw.url + S3 + f"session_{S1}/session_{S1}.nwb", timeout=T)
    assert s1.findtext(S3NS + "ETag") == head.headers["ETag"]
    # path-style bucket, delimiter
    _, keys2, prefixes = _list(fw, "/allen-brain-observatory", prefix=prefix, delimiter="/")
    assert prefixes == [prefix + f"session_{S1}/", prefix + f"session_{S2}/"]
    assert keys2 == [k for k in expected if k.count("/") == 2]
    # paging with continuation tokens, bounded
    got, token = [], None
    for _ in range(20):
        extra = {"continuation-token": token} if token else {}
        root, page, _ = _list(fw, prefix=prefix, **{"max-keys": "3"}, **extra)
        assert len(page) <= 3
        got += page
        if root.findtext(S3NS + "IsTruncated") == "false":
            break
        token = root.findtext(S3NS + "NextContinuationToken")
    assert got == expected
    _, none, _ = _list(fw, prefix="raw-data/")
    assert none == []


# ------------------------------------------------------------------------------ faults


def _stream(url, headers=None, timeout=T):
    """GET with stream=True; returns (bytes received, exception or None)."""
    got = bytearray()
    try:
        with requests.get(url, stream=True, headers=headers or {}, timeout=timeout) as r:
            for chunk in r.iter_content(8192):
                got += chunk
    except (requests.RequestException, ConnectionError) as exc:
        return bytes(got), exc
    return bytes(got), None


def _raw_get(url, headers=None, timeout=T):
    """GET with http.client, keeping every byte that arrived: (status, bytes, error or None).

    error is "incomplete" when the connection ended before Content-Length bytes, else the
    socket exception (reset, timeout)."""
    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=timeout)
    got, status, err = bytearray(), None, None
    try:
        conn.request("GET", url[len(f"http://{parts.netloc}") :], headers=headers or {})
        resp = conn.getresponse()
        status = resp.status
        for _ in range(100_000):
            chunk = resp.read1(65536)
            if not chunk:
                break
            got += chunk
        if resp.length:
            err = "incomplete"
    except OSError as exc:
        err = exc
    finally:
        conn.close()
    return status, bytes(got), err


def wkf_url(fw, wid=WKF_S1):
    return f"{fw.url}//api/v2/well_known_file_download/{wid}"


def test_fault_validation():
    with pytest.raises(ValueError, match="unknown kind"):
        validate_faults([{"kind": "explode"}])
    with pytest.raises(ValueError, match="needs bytes"):
        validate_faults([{"kind": "drop_after"}])
    with pytest.raises(ValueError, match="times"):
        validate_faults([{"kind": "ignore_range", "times": -1}])


def test_fault_drop_after(fw, dataset):
    fw.set_faults([{"kind": "drop_after", "match": "well_known_file_download", "bytes": 50_000,
                    "times": 2}])  # fmt: skip
    status, got, err = _raw_get(wkf_url(fw))
    assert status == 200 and err is not None  # reset (or EOF) before Content-Length bytes
    assert len(got) <= 50_000 < SIZES["s1"]
    assert got == dataset["files"]["s1"].read_bytes()[: len(got)]
    got, exc = _stream(wkf_url(fw))  # what a requests client sees
    assert isinstance(exc, requests.ConnectionError | requests.exceptions.ChunkedEncodingError)
    assert len(got) < SIZES["s1"]
    got, exc = _stream(wkf_url(fw))  # times=2 used up: the next request is clean
    assert exc is None and len(got) == SIZES["s1"]
    assert [e["faults"] for e in fw.requests] == [["drop_after"], ["drop_after"], []]


def test_fault_status_with_retry_after(fw):
    fw.set_faults([{"kind": "status", "code": 503, "retry_after": 1, "times": 2,
                    "match": "query.json"}])  # fmt: skip
    for _ in range(2):
        r = requests.get(fw.url + RMA + "criteria=model::EcephysProbe", timeout=T)
        assert r.status_code == 503 and r.headers["Retry-After"] == "1"
        assert r.headers["Content-Type"].startswith("text/html") and "<html>" in r.text
    assert requests.get(fw.url + RMA + "criteria=model::EcephysProbe", timeout=T).ok
    fw.set_faults([{"kind": "status", "code": 500, "body": "<html>boom</html>", "match": ""}])
    r = requests.get(wkf_url(fw), timeout=T)
    assert r.status_code == 500 and r.text == "<html>boom</html>"


def test_fault_stall(fw):
    fw.set_faults([{"kind": "stall", "after_bytes": 1000, "seconds": 3, "times": 1}])
    status, got, err = _raw_get(wkf_url(fw), timeout=0.5)
    assert status == 200 and isinstance(err, TimeoutError)  # the socket went quiet
    assert len(got) == 1000
    fw.set_faults([{"kind": "stall", "after_bytes": 1000, "seconds": 0.6, "times": 1}])
    t0 = time.monotonic()
    got, exc = _stream(wkf_url(fw))
    assert exc is None and len(got) == SIZES["s1"] and time.monotonic() - t0 >= 0.5


def test_fault_short_body(fw, dataset):
    fw.set_faults([{"kind": "short_body", "bytes": 12_345, "times": 2}])
    status, got, err = _raw_get(wkf_url(fw))
    assert status == 200 and err == "incomplete" and len(got) == 12_345
    assert got == dataset["files"]["s1"].read_bytes()[:12_345]
    entry = fw.requests[-1]
    assert entry["bytes_sent"] == 12_345 and entry["faults"] == ["short_body"]
    got, exc = _stream(wkf_url(fw))
    assert isinstance(exc, requests.exceptions.ChunkedEncodingError) and len(got) < 12_345 + 1


def test_fault_flip_byte_absolute_offset(fw, dataset):
    data = dataset["files"]["s1"].read_bytes()
    fw.set_faults([{"kind": "flip_byte", "offset": 200_000}])
    got, exc = _stream(wkf_url(fw))
    assert exc is None and len(got) == len(data) and sha(got) != sha(data)
    diff = [i for i in range(len(data)) if got[i] != data[i]]
    assert diff == [200_000] and got[200_000] == data[200_000] ^ 0xFF
    got, exc = _stream(wkf_url(fw), headers={"Range": "bytes=199990-200009"})
    assert got[10] == data[200_000] ^ 0xFF and got[:10] == data[199_990:200_000]


def test_fault_wrong_length(fw):
    fw.set_faults([{"kind": "wrong_length", "content_length": SIZES["s2"] + 500, "times": 2}])
    status, got, err = _raw_get(wkf_url(fw, WKF_S2))
    assert status == 200 and err == "incomplete" and len(got) == SIZES["s2"]
    with requests.get(wkf_url(fw, WKF_S2), stream=True, timeout=T) as r:
        assert r.headers["Content-Length"] == str(SIZES["s2"] + 500)
        with pytest.raises(requests.RequestException):
            for _chunk in r.iter_content(8192):
                pass
    fw.set_faults([{"kind": "wrong_length", "content_length": 1000, "times": 1}])
    r = requests.get(wkf_url(fw, WKF_S2), timeout=T)  # a short claim: the client stops at it
    assert len(r.content) == 1000


def test_fault_ignore_range_and_no_validators(fw, dataset):
    fw.set_faults([{"kind": "ignore_range"}, {"kind": "no_validators"}])
    r = requests.get(wkf_url(fw, WKF_S2), headers={"Range": "bytes=100-"}, timeout=T)
    assert r.status_code == 200 and r.content == dataset["files"]["s2"].read_bytes()
    assert "ETag" not in r.headers and "Last-Modified" not in r.headers
    assert "Content-Range" not in r.headers


def test_fault_bandwidth(fw):
    fw.set_faults([{"kind": "bandwidth", "bytes_per_second": 200_000, "match": str(WKF_S2)}])
    t0 = time.monotonic()
    got, exc = _stream(wkf_url(fw, WKF_S2))
    elapsed = time.monotonic() - t0
    assert exc is None and len(got) == SIZES["s2"]
    assert elapsed >= 0.9 * SIZES["s2"] / 200_000
    t0 = time.monotonic()  # other files are not matched
    assert len(_stream(wkf_url(fw, WKF_LFP))[0]) == SIZES["lfp"]


def test_fault_rma_error_and_zero_rows(fw):
    fw.set_faults([{"kind": "rma_error", "msg": "database timeout", "match": "EcephysUnit",
                    "times": 1}])  # fmt: skip
    env = rma(fw, "criteria=model::EcephysUnit")
    assert env["success"] is False and env["msg"] == "database timeout"
    assert rma(fw, "criteria=model::EcephysUnit")["success"] is True
    fw.set_faults([{"kind": "rma_zero_rows", "match": "EcephysProbe"}])
    env = rma(fw, "criteria=model::EcephysProbe")
    assert env["success"] and env["num_rows"] == 0 and env["msg"] == [] and env["total_rows"] == 3
    assert rma(fw, "criteria=model::EcephysSession")["num_rows"] == 2  # not matched


def test_fault_rma_total_rows_and_repeat_page(fw, dataset):
    units = sorted(u["id"] for u in dataset["units"])
    fw.set_faults([{"kind": "rma_total_rows", "total_rows": 7, "match": "EcephysUnit", "times": 1}])
    env = rma(fw, "criteria=model::EcephysUnit", 0, 2)
    assert env["total_rows"] == 7 and [r["id"] for r in env["msg"]] == units[:2]
    assert rma(fw, "criteria=model::EcephysUnit", 0, 2)["total_rows"] == len(units)
    fw.set_faults([{"kind": "rma_repeat_page", "match": "EcephysUnit"}])
    for start in (0, 2, 4):  # the same first page, whatever start_row asks for
        env = rma(fw, "criteria=model::EcephysUnit", start, 2)
        assert [r["id"] for r in env["msg"]] == units[:2]
        assert env["start_row"] == start and env["total_rows"] == 10**9
    fw.set_faults([{"kind": "rma_repeat_page", "total_rows": 40, "match": "EcephysUnit"}])
    assert rma(fw, "criteria=model::EcephysUnit", 2, 2)["total_rows"] == 40


def test_fault_rma_row_sets_and_drops_nested_keys(fw):
    query = "criteria=model::EcephysSession,rma::include,specimen(donor(age))"
    clean = rma(fw, query)["msg"]
    assert clean[1]["specimen"]["donor"]["age"]
    fw.set_faults(
        [{"kind": "rma_row", "index": 1, "set": {"id": "../../etc", "specimen.donor.sex": None},
          "drop": ["specimen.donor.age", "no.such.key"], "match": "EcephysSession"}]
    )  # fmt: skip
    rows = rma(fw, query)["msg"]
    assert rows[0] == clean[0]
    assert rows[1]["id"] == "../../etc" and rows[1]["specimen"]["donor"]["sex"] is None
    assert "age" not in rows[1]["specimen"]["donor"]
    assert {k: v for k, v in rows[1].items() if k not in ("id", "specimen")} == {
        k: v for k, v in clean[1].items() if k not in ("id", "specimen")
    }
    fw.set_faults([{"kind": "rma_row", "index": 99, "drop": ["id"]}])  # past the page: no-op
    assert rma(fw, query)["msg"] == clean
    for bad in ({"set": ["id"]}, {"drop": "id"}, {"index": -1}, {"index": True}):
        with pytest.raises(ValueError, match="rma_row"):
            validate_faults([{"kind": "rma_row", **bad}])
    with pytest.raises(ValueError, match="total_rows"):
        validate_faults([{"kind": "rma_total_rows", "total_rows": 1.5}])


def test_faults_over_http_control_routes(fw):
    r = requests.post(fw.url + "/_fake/faults", json=[{"kind": "status", "code": 502}], timeout=T)
    assert r.status_code == 200 and r.json()["faults"][0]["kind"] == "status"
    assert requests.get(wkf_url(fw), timeout=T).status_code == 502
    r = requests.post(fw.url + "/_fake/faults", json=[{"kind": "nope"}], timeout=T)
    assert r.status_code == 400 and "unknown kind" in r.json()["error"]
    assert requests.delete(fw.url + "/_fake/faults", timeout=T).json()["faults"] == []
    assert requests.get(wkf_url(fw), timeout=T).status_code == 200
    log = requests.get(fw.url + "/_fake/requests", timeout=T).json()
    assert [e["status"] for e in log[-2:]] == [502, 200]
    assert set(log[-1]) >= {"method", "path", "query", "range", "status", "bytes_sent"}


def test_head_consumes_only_header_faults(fw):
    fw.set_faults([{"kind": "drop_after", "bytes": 10, "times": 1}])
    assert requests.head(wkf_url(fw), timeout=T).status_code == 200
    got, exc = _stream(wkf_url(fw))
    assert exc is not None and len(got) <= 10


# ------------------------------------------------------------------------------ lifecycle, CLI


def test_refuses_non_loopback(dataset):
    with pytest.raises(ValueError, match="loopback"):
        FakeWarehouse(dataset["root"], host="0.0.0.0")


def test_stop_closes_idle_keepalive_connections(dataset):
    fw = FakeWarehouse(dataset["root"]).start()
    s = requests.Session()
    assert s.get(fw.url + RMA + "criteria=model::EcephysProbe", timeout=T).ok
    t0 = time.monotonic()
    fw.stop()
    assert time.monotonic() - t0 < 5
    with pytest.raises(requests.ConnectionError):
        s.get(fw.url + RMA + "criteria=model::EcephysProbe", timeout=2)
    s.close()


def test_cli_port_file_serves_and_stops_on_sigterm(dataset, tmp_path):
    port_file = tmp_path / "port"
    fault = json.dumps({"kind": "status", "code": 503, "match": "/_never_"})
    proc = subprocess.Popen(
        [sys.executable, "-m", "ecephys_pipeline.fake", "--data", str(dataset["root"]),
         "--port", "0", "--port-file", str(port_file), "--fault", fault],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 20
        while not port_file.exists():
            assert proc.poll() is None, proc.communicate(timeout=5)
            assert time.monotonic() < deadline, "port file never appeared"
            time.sleep(0.05)
        url = port_file.read_text().strip()
        assert url.startswith("http://127.0.0.1:")
        r = requests.get(url + f"//api/v2/well_known_file_download/{WKF_S2}", timeout=T)
        assert r.status_code == 200 and len(r.content) == SIZES["s2"]
        faults = requests.get(url + "/_fake/faults", timeout=T).json()
        assert faults[0]["match"] == "/_never_"
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=15) == 0
        assert not port_file.exists()
        with pytest.raises(requests.ConnectionError):
            requests.get(url + "/_fake/requests", timeout=2)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)


def test_cli_rejects_bad_fault(dataset):
    proc = subprocess.run(
        [sys.executable, "-m", "ecephys_pipeline.fake", "--data", str(dataset["root"]),
         "--fault", '{"kind": "nope"}'],
        capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert proc.returncode == 2 and "unknown kind" in proc.stderr


# ------------------------------------------------------------------------------ AllenSDK oracle

ALLENSDK_PYTHON = os.environ.get("ALLENSDK_PYTHON", "/opt/allensdk-venv/bin/python")

ORACLE = textwrap.dedent(
    """
    import hashlib, json, sys, logging
    logging.disable(logging.WARNING)
    from allensdk.brain_observatory.ecephys.ecephys_project_api.ecephys_project_warehouse_api \\
        import EcephysProjectWarehouseApi
    from allensdk.brain_observatory.ecephys.ecephys_project_api.rma_engine import RmaEngine
    api = EcephysProjectWarehouseApi(RmaEngine(scheme="http", host=sys.argv[1], timeout=60))
    sessions = api.get_sessions()
    probes = api.get_probes()
    channels = api.get_channels()
    units = api.get_units()
    h = hashlib.sha256()
    for chunk in api.get_session_data(int(sys.argv[2])):
        h.update(chunk)
    lfp = hashlib.sha256()
    for chunk in api.get_probe_lfp_data(int(sys.argv[3])):
        lfp.update(chunk)
    try:
        api.get_probe_lfp_data(int(sys.argv[4]))
        missing = "no error"
    except ValueError as exc:
        missing = str(exc)
    print(json.dumps({
        "sessions": sorted(int(i) for i in sessions.index),
        "has_nwb": [bool(x) for x in sessions["has_nwb"]],
        "age": [float(x) for x in sessions["age_in_days"]],
        "genotype": list(sessions["genotype"]),
        "session_type": list(sessions["session_type"]),
        "probes": sorted(int(i) for i in probes.index),
        "has_lfp": {str(k): bool(v) for k, v in probes["has_lfp_data"].items()},
        "channels": sorted(int(i) for i in channels.index),
        "channel_columns": list(channels.columns),
        "units": sorted(int(i) for i in units.index),
        "nwb_sha256": h.hexdigest(),
        "lfp_sha256": lfp.hexdigest(),
        "missing_lfp": missing,
    }))
    """
)


@pytest.mark.allensdk
@pytest.mark.skipif(not Path(ALLENSDK_PYTHON).exists(), reason="AllenSDK interpreter not found")
def test_allensdk_warehouse_api_against_the_fake(server, dataset, tmp_path):
    server.clear_faults()
    server.clear_requests()
    host = server.url.removeprefix("http://")
    script = tmp_path / "oracle.py"
    script.write_text(ORACLE)
    proc = subprocess.run(
        [ALLENSDK_PYTHON, str(script), host, str(S1), str(P1A), str(P1B)],
        capture_output=True, text=True, timeout=300, cwd=tmp_path,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["sessions"] == [S1, S2]
    assert out["has_nwb"] == [True, True]
    assert out["age"] == [118.0, 100.0]
    assert out["genotype"] == ["Sst-IRES-Cre/wt", "wt"]  # None -> "wt" in AllenSDK
    assert out["session_type"] == ["brain_observatory_1.1", "functional_connectivity"]
    assert out["probes"] == sorted([P1A, P1B, P2A])
    assert out["has_lfp"] == {str(P1A): True, str(P1B): False, str(P2A): True}
    assert out["channels"] == sorted(c["id"] for c in dataset["channels"] if c["valid_data"])
    assert out["channel_columns"] == CHANNEL_KEYS[1:]
    assert out["units"] == sorted(u["id"] for u in dataset["units"])
    assert out["nwb_sha256"] == sha(dataset["files"]["s1"].read_bytes())
    assert out["lfp_sha256"] == sha(dataset["files"]["lfp"].read_bytes())
    assert out["missing_lfp"].startswith(f"expected exactly 1 LFP NWB file for probe {P1B}")
    paths = [r["path"] for r in server.requests]
    assert f"//api/v2/well_known_file_download/{WKF_S1}" in paths  # AllenSDK's double slash


def test_port_is_really_listening_on_loopback(server):
    host, port = server.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=T):
        pass


# ------------------------------------------------------------------------------ lazy files (synth)


def _synth():
    synth = pytest.importorskip("ecephys_pipeline.synth")
    if not all(hasattr(synth, f) for f in ("make_dataset", "ensure_session_nwb", "ensure_lfp_nwb")):
        pytest.skip("ecephys_pipeline.synth lacks the lazy-file API")
    return synth


def test_lazy_files_are_generated_on_first_request(tmp_path):
    synth = _synth()
    root = synth.make_dataset(
        tmp_path / "lazy", seed=3, files="lazy", sessions=1, probes_per_session=2,
        units_per_probe=2, duration_s=30, lfp_duration_s=0.5,
    )  # fmt: skip
    root = Path(root)
    assert not list((root / "files").rglob("*.nwb"))
    wkfs = json.loads((root / "warehouse/WellKnownFile.json").read_text())
    session_wkf = next(w for w in wkfs if w["attachable_type"] == "EcephysSession")
    lfp_wkf = next(w for w in wkfs if w["attachable_type"] == "EcephysProbe")
    sid = session_wkf["attachable_id"]
    with FakeWarehouse(root) as fw:
        # two clients at once: one generation, identical bytes
        import concurrent.futures as cf

        url = fw.url + "/" + session_wkf["download_link"]
        with cf.ThreadPoolExecutor(2) as pool:
            bodies = list(pool.map(lambda _: requests.get(url, timeout=120).content, range(2)))
        on_disk = (root / f"files/session_{sid}/session_{sid}.nwb").read_bytes()
        assert bodies[0] == bodies[1] == on_disk and on_disk[:8] == b"\x89HDF\r\n\x1a\n"
        key = f"session_{sid}/probe_{lfp_wkf['attachable_id']}_lfp.nwb"
        r = requests.get(fw.url + S3 + key, timeout=120)  # S3 route generates too
        assert r.status_code == 200 and r.content == (root / "files" / key).read_bytes()
        _, keys, _ = _list(fw, prefix=S3.lstrip("/") + f"session_{sid}/")
        assert S3.lstrip("/") + key in keys
