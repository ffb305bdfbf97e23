"""The download engine against the real fake warehouse (127.0.0.1), real files, every fault kind.

No mocks: each fault of architecture.md §2 is injected into the running server and the real client
has to end in identical bytes at ``dest`` or a clear error with nothing corrupt at ``dest``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import h5py
import numpy as np
import pytest
import requests

from ecephys_pipeline import download as dl
from ecephys_pipeline import mirrors, sources
from ecephys_pipeline.download import (
    ChecksumMismatchError,
    DownloadError,
    DownloadRecord,
    Options,
    adopt_existing,
    download_file,
    remote_size,
)
from ecephys_pipeline.download import http as dl_http
from ecephys_pipeline.download import progress as dl_progress
from ecephys_pipeline.download import ranges as dl_ranges
from ecephys_pipeline.download import retry as dl_retry
from ecephys_pipeline.download import state as dl_state
from ecephys_pipeline.download.digests import Digester
from ecephys_pipeline.download.http import parse_retry_after
from ecephys_pipeline.download.record import read_json
from ecephys_pipeline.lockfile import (
    LockMismatchError,
    expected_for,
    read_lock,
    write_lock,
)
from ecephys_pipeline.plan import InsufficientSpaceError, check_free_space

fake_warehouse = pytest.importorskip("ecephys_pipeline.fake")

S3 = "/visual-coding-neuropixels/ecephys-cache"
MiB = 1 << 20
SMALL = 3 * MiB  # session 1: most fault tests
BIG = 12 * MiB  # session 2: parallel ranges and the kill test


def _write_nwb_like(path: Path, n_bytes: int, seed: int) -> None:
    """A real HDF5 file of about ``n_bytes`` (random payload, contiguous, uncompressed)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    data = np.random.default_rng(seed).integers(0, 256, n_bytes, dtype=np.uint8)
    with h5py.File(path, "w") as f:
        f.create_dataset("acquisition/raw", data=data)
        f.attrs["session_id"] = seed


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("dataset")
    (root / "dataset.json").write_text(json.dumps({"format": 1, "seed": 0, "params": {}}))
    wh = root / "warehouse"
    wh.mkdir()
    for model in ("EcephysSession", "EcephysProbe", "EcephysChannel", "EcephysUnit", "Structure"):
        (wh / f"{model}.json").write_text("[]")
    wkf = [
        {
            "id": 9001,
            "path": "/external/ecephys/session_1.nwb",
            "download_link": "/api/v2/well_known_file_download/9001",
            "attachable_id": 1,
            "attachable_type": "EcephysSession",
            "well_known_file_type_id": 1,
            "well_known_file_type": {"id": 1, "name": "EcephysNwb"},
        }
    ]
    (wh / "WellKnownFile.json").write_text(json.dumps(wkf))
    _write_nwb_like(root / "files/session_1/session_1.nwb", SMALL, 1)
    _write_nwb_like(root / "files/session_2/session_2.nwb", BIG, 2)
    page = root / "files/session_3/session_3.nwb"
    page.parent.mkdir(parents=True)
    page.write_text("<!DOCTYPE html><html><body><h1>503 Service Unavailable</h1></body></html>\n")
    return root


@pytest.fixture(scope="module")
def server(dataset):
    with fake_warehouse.FakeWarehouse(dataset) as fw:
        yield fw


@pytest.fixture
def fake(server):
    server.clear_faults()
    yield server
    server.clear_faults()


def url(fake, sid: int) -> str:
    return f"{fake.url}{S3}/session_{sid}/session_{sid}.nwb"


def source(dataset: Path, sid: int) -> Path:
    return dataset / f"files/session_{sid}/session_{sid}.nwb"


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def new_requests(fake, since: int, sid: int | None = None) -> list[dict]:
    """Requests logged since index ``since``. The fake logs a request when its handler returns,
    which can be just after the client has its response: wait until the log stops growing."""
    n, deadline = -1, time.monotonic() + 3
    while time.monotonic() < deadline:
        reqs = list(fake.requests)[since:]
        if len(reqs) == n:
            break
        n = len(reqs)
        time.sleep(0.1)
    if sid is not None:
        reqs = [r for r in reqs if f"session_{sid}.nwb" in r["path"]]
    return reqs


def ranged(reqs: list[dict]) -> list[dict]:
    return [r for r in reqs if r.get("range") and r["method"] == "GET"]


def assert_clean_success(rec: DownloadRecord, dest: Path, src: Path) -> None:
    assert dest.read_bytes() == src.read_bytes()
    assert rec.sha256 == sha(src) and rec.size == src.stat().st_size
    assert not Path(f"{dest}.part").exists() and not Path(f"{dest}.part.json").exists()
    on_disk = json.loads(Path(f"{dest}.download.json").read_text())
    assert {k: on_disk[k] for k in rec.to_dict()} == rec.to_dict()


FAST = Options(backoff_base_s=0.05, backoff_max_s=2)


def fast(**changes) -> Options:
    return dataclasses.replace(FAST, **changes)


# ----------------------------------------------------------------------------- basic behaviour


def test_plain_download_writes_record_and_rerun_does_not_refetch(fake, dataset, tmp_path):
    dest = tmp_path / "cache/session_1/session_1.nwb"
    rec = download_file(url(fake, 1), dest)
    assert_clean_success(rec, dest, source(dataset, 1))
    assert rec.etag and rec.last_modified and rec.url == url(fake, 1)
    assert not Path(f"{dest}.part.lock").exists()

    n0 = len(fake.requests)
    again = download_file(url(fake, 1), dest, expected=rec)
    assert again == rec
    assert new_requests(fake, n0) == []  # size + mtime match the record: no request, no hashing


def test_warehouse_double_slash_route_and_remote_size(fake, dataset, tmp_path):
    wkf = f"{fake.url}//api/v2/well_known_file_download/9001"
    assert remote_size(wkf) == SMALL_SIZE(dataset)
    rec = download_file(wkf, tmp_path / "s1.nwb")
    assert rec.sha256 == sha(source(dataset, 1))


def SMALL_SIZE(dataset: Path) -> int:  # noqa: N802 - reads like a constant
    return source(dataset, 1).stat().st_size


def test_progress_callable_is_called(fake, dataset, tmp_path, monkeypatch):
    monkeypatch.setattr(dl_progress, "PROGRESS_INTERVAL", 0.0)
    seen: list[tuple[int, int | None]] = []
    fake.set_faults([{"kind": "bandwidth", "match": "session_1.nwb", "bytes_per_second": 8 * MiB}])
    download_file(url(fake, 1), tmp_path / "p.nwb", progress=lambda d, t: seen.append((d, t)))
    assert seen and seen[-1][1] == SMALL_SIZE(dataset)
    assert [d for d, _ in seen] == sorted(d for d, _ in seen)


def test_progress_log_lines(fake, tmp_path, monkeypatch, caplog):
    monkeypatch.setattr(dl_progress, "PROGRESS_INTERVAL", 0.0)
    fake.set_faults([{"kind": "bandwidth", "match": "session_1.nwb", "bytes_per_second": 8 * MiB}])
    with caplog.at_level("INFO", logger="ecephys_pipeline.download"):
        download_file(url(fake, 1), tmp_path / "p.nwb")
    lines = [r.getMessage() for r in caplog.records]
    assert any("MB/s, ETA" in m and "%" in m and "of 3.0 MiB" in m for m in lines), lines
    assert any(m.startswith("p.nwb: done, 3.0 MiB") for m in lines)


# ----------------------------------------------------------------------------- fault matrix


def test_drop_after_resumes_with_range(fake, dataset, tmp_path):
    fake.set_faults([{"kind": "drop_after", "match": "session_1.nwb", "times": 1, "bytes": MiB}])
    n0 = len(fake.requests)
    dest = tmp_path / "s1.nwb"
    rec = download_file(url(fake, 1), dest, options=FAST)
    assert_clean_success(rec, dest, source(dataset, 1))
    resumed = ranged(new_requests(fake, n0, 1))
    assert resumed, new_requests(fake, n0)
    assert resumed[0]["status"] == 206
    start = int(resumed[0]["range"].split("=")[1].split("-")[0])
    assert 0 < start <= MiB  # resumed from what the dropped attempt had written


def test_status_503_retry_after_is_honoured(fake, dataset, tmp_path):
    fake.set_faults(
        [{"kind": "status", "match": "session_1.nwb", "times": 1, "code": 503, "retry_after": 2}]
    )
    t0 = time.monotonic()
    rec = download_file(url(fake, 1), tmp_path / "s1.nwb", options=Options(backoff_base_s=0.01))
    assert time.monotonic() - t0 >= 1.9  # waited Retry-After, not the 10 ms backoff
    assert rec.sha256 == sha(source(dataset, 1))


def test_stall_is_detected_by_read_timeout_and_resumed(fake, dataset, tmp_path):
    fake.set_faults(
        [{"kind": "stall", "match": "session_1.nwb", "times": 1, "after_bytes": MiB,
          "seconds": 30}]
    )  # fmt: skip
    n0 = len(fake.requests)
    t0 = time.monotonic()
    dest = tmp_path / "s1.nwb"
    rec = download_file(url(fake, 1), dest, options=fast(read_timeout_s=1))
    assert time.monotonic() - t0 < 10
    assert_clean_success(rec, dest, source(dataset, 1))
    assert ranged(new_requests(fake, n0, 1)), "the stalled transfer was not resumed"


def test_trickling_connection_is_dropped_and_resumed(fake, dataset, tmp_path, monkeypatch):
    # bytes keep coming (300 B/s), so no read timeout fires; the rate floor catches it
    monkeypatch.setattr(dl_http, "_LOW_RATE_WINDOW", 1.0)
    fake.set_faults(
        [{"kind": "bandwidth", "match": "session_1.nwb", "times": 1, "bytes_per_second": 300}]
    )
    n0 = len(fake.requests)
    dest = tmp_path / "s1.nwb"
    t0 = time.monotonic()
    rec = download_file(url(fake, 1), dest, options=fast(read_timeout_s=5))
    assert time.monotonic() - t0 < 5
    assert_clean_success(rec, dest, source(dataset, 1))
    assert [r["status"] for r in ranged(new_requests(fake, n0, 1))] == [206]


def test_short_body_is_resumed_to_identical_bytes(fake, dataset, tmp_path):
    fake.set_faults([{"kind": "short_body", "match": "session_1.nwb", "times": 1, "bytes": MiB}])
    n0 = len(fake.requests)
    dest = tmp_path / "s1.nwb"
    rec = download_file(url(fake, 1), dest, options=FAST)
    assert_clean_success(rec, dest, source(dataset, 1))
    assert ranged(new_requests(fake, n0, 1))


def test_flip_byte_once_is_refused_then_refetched(fake, dataset, tmp_path):
    good = sha(source(dataset, 1))
    fake.set_faults([{"kind": "flip_byte", "match": "session_1.nwb", "times": 1, "offset": 5000}])
    dest = tmp_path / "s1.nwb"
    rec = download_file(url(fake, 1), dest, expected={"sha256": good}, options=FAST)
    assert_clean_success(rec, dest, source(dataset, 1))
    aside = list(tmp_path.glob("s1.nwb.mismatch-*"))
    assert len(aside) == 1 and sha(aside[0]) != good  # the bad copy was kept aside, not used


def test_flip_byte_always_ends_in_clear_error_nothing_at_dest(fake, dataset, tmp_path):
    good = sha(source(dataset, 1))
    fake.set_faults([{"kind": "flip_byte", "match": "session_1.nwb", "times": None, "offset": 7}])
    dest = tmp_path / "s1.nwb"
    with pytest.raises(ChecksumMismatchError) as ei:
        download_file(url(fake, 1), dest, expected={"sha256": good}, options=FAST)
    msg = str(ei.value)
    assert good in msg and url(fake, 1) in msg and "s1.nwb" in msg
    assert not dest.exists() and not Path(f"{dest}.part").exists()
    assert list(tmp_path.glob("s1.nwb.mismatch-*"))


@pytest.mark.parametrize("delta", [-4096, +4096])
def test_wrong_length_recovers_identical_bytes(fake, dataset, tmp_path, delta):
    size = SMALL_SIZE(dataset)
    fake.set_faults(
        [{"kind": "wrong_length", "match": "session_1.nwb", "times": 1,
          "content_length": size + delta}]
    )  # fmt: skip
    dest = tmp_path / "s1.nwb"
    rec = download_file(url(fake, 1), dest, options=FAST)
    assert_clean_success(rec, dest, source(dataset, 1))


def test_wrong_length_with_expected_size_never_streams_a_wrong_file(fake, dataset, tmp_path):
    size = SMALL_SIZE(dataset)
    fake.set_faults(
        [{"kind": "wrong_length", "match": "session_1.nwb", "times": None,
          "content_length": size - 10}]
    )  # fmt: skip
    dest = tmp_path / "s1.nwb"
    with pytest.raises(DownloadError, match=f"{size - 10} bytes but {size} are expected"):
        download_file(url(fake, 1), dest, expected={"size": size}, options=FAST)
    assert not dest.exists()


def test_always_lying_content_length_gives_up_after_a_few_bodies(fake, dataset, tmp_path):
    size = SMALL_SIZE(dataset)
    fake.set_faults(
        [{"kind": "wrong_length", "match": "session_1.nwb", "times": None,
          "content_length": size + 4096}]
    )  # fmt: skip
    n0 = len(fake.requests)
    dest = tmp_path / "s1.nwb"
    with pytest.raises(DownloadError) as ei:
        download_file(url(fake, 1), dest, options=FAST)
    assert "restarting at 0" in str(ei.value) and not dest.exists()
    full_bodies = [r for r in new_requests(fake, n0, 1) if r["status"] == 200]
    assert len(full_bodies) <= dl_retry.MAX_VERIFY_FAILURES  # not 4 * max_attempts full downloads


def test_ignore_range_restarts_from_zero(fake, dataset, tmp_path):
    fake.set_faults(
        [
            {"kind": "drop_after", "match": "session_1.nwb", "times": 1, "bytes": MiB},
            {"kind": "ignore_range", "match": "session_1.nwb", "times": None},
        ]
    )
    n0 = len(fake.requests)
    dest = tmp_path / "s1.nwb"
    rec = download_file(url(fake, 1), dest, options=FAST)
    assert_clean_success(rec, dest, source(dataset, 1))  # not a partial + a full body appended
    r = ranged(new_requests(fake, n0, 1))
    assert r and r[0]["status"] == 200


def test_no_validators_resume_is_guarded_by_size(fake, dataset, tmp_path):
    fake.set_faults(
        [
            {"kind": "no_validators", "match": "session_1.nwb", "times": None},
            {"kind": "drop_after", "match": "session_1.nwb", "times": 1, "bytes": MiB},
        ]
    )
    n0 = len(fake.requests)
    dest = tmp_path / "s1.nwb"
    rec = download_file(url(fake, 1), dest, options=FAST)
    assert_clean_success(rec, dest, source(dataset, 1))
    assert rec.etag is None and rec.last_modified is None
    assert [r["status"] for r in ranged(new_requests(fake, n0, 1))] == [206]


def test_bandwidth_capped_parallel_ranges(fake, dataset, tmp_path, monkeypatch):
    monkeypatch.setattr(dl_ranges, "MIN_RANGE", MiB)
    fake.set_faults([{"kind": "bandwidth", "match": "session_2.nwb", "bytes_per_second": 3 * MiB}])
    n0 = len(fake.requests)
    dest = tmp_path / "s2.nwb"
    t0 = time.monotonic()
    rec = download_file(url(fake, 2), dest, options=fast(connections_per_file=4))
    elapsed = time.monotonic() - t0
    assert_clean_success(rec, dest, source(dataset, 2))
    gets = ranged(new_requests(fake, n0, 2))
    assert len([r for r in gets if r["status"] == 206 and r["range"] != "bytes=0-0"]) == 4
    assert elapsed < 0.75 * BIG / (3 * MiB)  # one capped connection needs 4 s, 4 need ~1 s


def test_parallel_pieces_are_hashed_as_they_arrive_not_again_at_the_end(
    fake, dataset, tmp_path, monkeypatch
):
    monkeypatch.setattr(dl_ranges, "MIN_RANGE", MiB)
    monkeypatch.setattr(dl_ranges, "PIECE", MiB)  # 12 MiB, 4 connections: 12 pieces
    rehashed: list = []  # files hashed from disk (the real hashing still runs)
    real_of_file = Digester.of_file

    def of_file(*args, **kw):
        rehashed.append(args)
        return real_of_file(*args, **kw)

    monkeypatch.setattr(Digester, "of_file", staticmethod(of_file))
    # capped, and one response drops: pieces land over time, one of them in two attempts
    fake.set_faults(
        [{"kind": "bandwidth", "match": "session_2.nwb", "bytes_per_second": 6 * MiB},
         {"kind": "drop_after", "match": "session_2.nwb", "times": 2, "bytes": MiB // 2}]
    )  # fmt: skip
    n0 = len(fake.requests)
    dest = tmp_path / "s2.nwb"
    rec = download_file(url(fake, 2), dest, options=fast(connections_per_file=4))
    assert_clean_success(rec, dest, source(dataset, 2))
    assert rehashed == []  # the digest followed the pieces: no second pass over the file
    pieces = [r for r in ranged(new_requests(fake, n0, 2)) if r["range"] != "bytes=0-0"]
    firsts = sorted(int(r["range"][6:].split("-")[0]) for r in pieces)
    step = -(-source(dataset, 2).stat().st_size // 12)
    assert [s for s in firsts if s % step == 0] == [i * step for i in range(12)]


def test_parallel_attempts_that_progress_are_not_counted_as_failures(
    fake, dataset, tmp_path, monkeypatch
):
    monkeypatch.setattr(dl_ranges, "MIN_RANGE", MiB)
    # every response dies after 512 KiB: 12 MiB in 4 ranges needs ~7 attempts, all progressing
    fake.set_faults([{"kind": "drop_after", "match": "session_2.nwb", "bytes": 512 * 1024}])
    dest = tmp_path / "s2.nwb"
    rec = download_file(url(fake, 2), dest, options=fast(connections_per_file=4, max_attempts=2))
    assert_clean_success(rec, dest, source(dataset, 2))


def test_parallel_falls_back_to_one_stream_when_ranges_are_ignored(fake, dataset, tmp_path):
    fake.set_faults([{"kind": "ignore_range", "match": "session_2.nwb", "times": None}])
    dest = tmp_path / "s2.nwb"
    rec = download_file(url(fake, 2), dest, options=fast(connections_per_file=4))
    assert_clean_success(rec, dest, source(dataset, 2))


def test_parallel_range_dropped_is_resumed(fake, dataset, tmp_path, monkeypatch):
    monkeypatch.setattr(dl_ranges, "MIN_RANGE", MiB)
    fake.set_faults([{"kind": "drop_after", "match": "session_2.nwb", "times": 2, "bytes": MiB}])
    dest = tmp_path / "s2.nwb"
    rec = download_file(url(fake, 2), dest, options=fast(connections_per_file=4))
    assert_clean_success(rec, dest, source(dataset, 2))


def test_parallel_stalled_range_is_detected_and_resumed(
    fake, dataset, tmp_path, monkeypatch, caplog
):
    monkeypatch.setattr(dl_ranges, "MIN_RANGE", MiB)
    # times=2: the one-byte probe request takes one (it never reaches 1 MiB), one range stalls
    fake.set_faults(
        [{"kind": "stall", "match": "session_2.nwb", "times": 2, "after_bytes": MiB,
          "seconds": 30}]
    )  # fmt: skip
    n0 = len(fake.requests)
    dest = tmp_path / "s2.nwb"
    t0 = time.monotonic()
    with caplog.at_level("WARNING", logger="ecephys_pipeline.download"):
        rec = download_file(
            url(fake, 2), dest, options=fast(connections_per_file=4, read_timeout_s=1)
        )
    assert time.monotonic() - t0 < 10
    assert_clean_success(rec, dest, source(dataset, 2))
    assert any("Read timed out" in r.getMessage() for r in caplog.records)
    starts = [int(r["range"][6:].split("-")[0]) for r in ranged(new_requests(fake, n0, 2))]
    assert len(starts) == 6  # probe + 4 ranges + the stalled range resumed mid-way
    step = -(-source(dataset, 2).stat().st_size // 4)
    assert any(0 < s % step <= MiB for s in starts), starts  # resumed inside the stalled range


def test_html_page_with_200_is_refused_clearly(fake, dataset, tmp_path):
    dest = tmp_path / "s3.nwb"
    with pytest.raises(DownloadError) as ei:
        download_file(url(fake, 3), dest, options=FAST)
    msg = str(ei.value)
    assert "not an HDF5 file" in msg and "error page" in msg and "503 Service Unavailable" in msg
    assert not dest.exists()


def test_html_body_injected_by_status_fault_is_refused(fake, tmp_path):
    fake.set_faults(
        [{"kind": "status", "match": "session_1.nwb", "times": None, "code": 200,
          "body": "<html><body>Internal error, please retry</body></html>"}]
    )  # fmt: skip
    dest = tmp_path / "s1.nwb"
    with pytest.raises(DownloadError, match="not an HDF5 file"):
        download_file(url(fake, 1), dest, options=FAST)
    assert not dest.exists()


def test_every_attempt_failing_names_url_file_and_each_attempt(fake, tmp_path):
    fake.set_faults([{"kind": "status", "match": "session_1.nwb", "times": None, "code": 500}])
    dest = tmp_path / "s1.nwb"
    with pytest.raises(DownloadError) as ei:
        download_file(url(fake, 1), dest, options=fast(max_attempts=3))
    msg = str(ei.value)
    assert url(fake, 1) in msg and str(dest) in msg
    for i in (1, 2, 3):
        assert f"attempt {i}: HTTP 500" in msg
    assert "attempt 4" not in msg and not dest.exists()


def test_404_is_not_retried(fake, tmp_path):
    n0 = len(fake.requests)
    with pytest.raises(DownloadError, match="HTTP 404.*not retried"):
        download_file(f"{fake.url}{S3}/session_9/session_9.nwb", tmp_path / "x.nwb", options=FAST)
    assert len([r for r in new_requests(fake, n0) if r["method"] == "GET"]) == 1


def test_drops_mid_stream_keep_the_part_and_report_progress(fake, dataset, tmp_path):
    fake.set_faults([{"kind": "drop_after", "match": "session_1.nwb", "times": None, "bytes": 0}])
    dest = tmp_path / "s1.nwb"
    with pytest.raises(DownloadError) as ei:
        download_file(url(fake, 1), dest, options=fast(max_attempts=2))
    assert "attempt 2" in str(ei.value) and not dest.exists()


# ----------------------------------------------------------------------------- kill and resume


def test_sigkill_mid_transfer_then_resume_in_new_process(fake, dataset, tmp_path):
    dest = tmp_path / "cache/s2.nwb"
    part = Path(f"{dest}.part")
    fake.set_faults([{"kind": "bandwidth", "match": "session_2.nwb", "bytes_per_second": 4 * MiB}])
    code = textwrap.dedent(
        f"""
        from ecephys_pipeline.download import download_file
        download_file({url(fake, 2)!r}, {str(dest)!r})
        """
    )
    child = subprocess.Popen([sys.executable, "-c", code])
    try:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if part.exists() and part.stat().st_size >= 2 * MiB:
                break
            assert child.poll() is None, "the child finished before it could be killed"
            time.sleep(0.05)
        os.kill(child.pid, signal.SIGKILL)
    finally:
        child.wait(10)
    assert child.returncode == -signal.SIGKILL
    assert not dest.exists() and part.stat().st_size >= 2 * MiB
    fake.clear_faults()
    n0 = len(fake.requests)
    rec = download_file(url(fake, 2), dest)  # a "new process": nothing in memory is shared
    assert_clean_success(rec, dest, source(dataset, 2))
    r = ranged(new_requests(fake, n0, 2))
    assert r and r[0]["status"] == 206 and r[0]["range"].startswith("bytes=")
    assert not r[0]["range"].startswith("bytes=0-")


def test_parallel_sigkill_resumes_each_range(fake, dataset, tmp_path):
    dest = tmp_path / "s2.nwb"
    sidecar = Path(f"{dest}.part.json")
    fake.set_faults([{"kind": "bandwidth", "match": "session_2.nwb", "bytes_per_second": MiB}])
    n_before = len(fake.requests)
    code = textwrap.dedent(
        f"""
        from ecephys_pipeline.download import Options, download_file, ranges
        ranges.MIN_RANGE = 1 << 20
        download_file({url(fake, 2)!r}, {str(dest)!r}, options=Options(connections_per_file=4))
        """
    )
    child = subprocess.Popen([sys.executable, "-c", code])
    try:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            meta = read_json(sidecar) or {}
            if meta.get("ranges") and all(r[2] > 0 for r in meta["ranges"]):
                break
            time.sleep(0.05)
        os.kill(child.pid, signal.SIGKILL)
    finally:
        child.wait(10)
    fake.clear_faults()
    # the server logs the child's 4 range requests once it notices the dead sockets
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if len(ranged(new_requests(fake, n_before, 2))) >= 5:  # the probe + 4 ranges
            break
        time.sleep(0.1)
    ranges = json.loads(sidecar.read_text())["ranges"]
    assert len(ranges) == 4 and all(0 < done < end - start for start, end, done in ranges)
    n0 = len(fake.requests)
    rec = download_file(url(fake, 2), dest, options=Options(connections_per_file=4))
    assert_clean_success(rec, dest, source(dataset, 2))
    starts = sorted(int(r["range"][6:].split("-")[0]) for r in ranged(new_requests(fake, n0, 2)))
    assert starts == sorted(start + done for start, _end, done in ranges)


def _complete_part(fake, dataset, dest: Path, size: int | None) -> None:
    info = dl.remote_info(url(fake, 1))
    shutil.copyfile(source(dataset, 1), f"{dest}.part")
    meta = {"url": url(fake, 1), "etag": info.etag, "last_modified": info.last_modified}
    Path(f"{dest}.part.json").write_text(json.dumps({**meta, "size": size}))


def test_complete_part_is_placed_without_a_request(fake, dataset, tmp_path):
    dest = tmp_path / "s1.nwb"
    _complete_part(fake, dataset, dest, SMALL_SIZE(dataset))
    n0 = len(fake.requests)
    rec = download_file(url(fake, 1), dest)
    assert_clean_success(rec, dest, source(dataset, 1))
    assert new_requests(fake, n0) == []


def test_complete_part_of_unknown_size_416_is_accepted(fake, dataset, tmp_path):
    dest = tmp_path / "s1.nwb"
    _complete_part(fake, dataset, dest, None)  # e.g. the first response had no Content-Length
    n0 = len(fake.requests)
    rec = download_file(url(fake, 1), dest)
    assert_clean_success(rec, dest, source(dataset, 1))
    assert [r["status"] for r in new_requests(fake, n0)] == [416]


def test_part_larger_than_the_remote_file_restarts(fake, dataset, tmp_path):
    dest = tmp_path / "s1.nwb"
    _complete_part(fake, dataset, dest, None)
    with open(f"{dest}.part", "ab") as f:
        f.write(b"junk" * 100)
    rec = download_file(url(fake, 1), dest, options=FAST)
    assert_clean_success(rec, dest, source(dataset, 1))


def _stale_part(fake, dest: Path, size: int, etag: str) -> None:
    Path(f"{dest}.part").write_bytes(os.urandom(MiB))  # bytes of an older version
    meta = {"url": url(fake, 1), "etag": etag, "last_modified": None, "size": size}
    Path(f"{dest}.part.json").write_text(json.dumps(meta))


def test_part_of_an_older_remote_version_is_not_spliced(fake, dataset, tmp_path):
    dest = tmp_path / "s1.nwb"
    _stale_part(fake, dest, SMALL_SIZE(dataset), '"older-version"')
    n0 = len(fake.requests)
    rec = download_file(url(fake, 1), dest, options=FAST)  # If-Range fails -> 200 -> restart at 0
    assert_clean_success(rec, dest, source(dataset, 1))
    assert [r["status"] for r in ranged(new_requests(fake, n0, 1))] == [200]


def test_part_with_an_etag_other_than_the_lock_is_discarded(fake, dataset, tmp_path):
    dest = tmp_path / "s1.nwb"
    _stale_part(fake, dest, SMALL_SIZE(dataset), '"older-version"')
    current = dl.remote_info(url(fake, 1)).etag
    n0 = len(fake.requests)
    rec = download_file(url(fake, 1), dest, expected={"etag": current, "url": url(fake, 1)})
    assert_clean_success(rec, dest, source(dataset, 1))
    assert ranged(new_requests(fake, n0, 1)) == []  # not even tried


def test_second_downloader_of_the_same_file_is_refused(fake, tmp_path):
    dest = tmp_path / "s1.nwb"
    with dl_state.DestLock(dest):
        with pytest.raises(DownloadError, match="another process is downloading"):
            download_file(url(fake, 1), dest)


# ----------------------------------------------------------------------------- existing files


def test_adopt_existing_file_without_record(fake, dataset, tmp_path):
    dest = tmp_path / "session_1/session_1.nwb"
    dest.parent.mkdir()
    shutil.copyfile(source(dataset, 1), dest)  # e.g. an AllenSDK cache
    n0 = len(fake.requests)
    rec = download_file(url(fake, 1), dest)
    assert rec.sha256 == sha(dest) and Path(f"{dest}.download.json").exists()
    assert [r["method"] for r in new_requests(fake, n0)] == ["HEAD"]  # size check, no body


def test_truncated_existing_file_is_set_aside_and_refetched(fake, dataset, tmp_path):
    dest = tmp_path / "s1.nwb"
    dest.write_bytes(source(dataset, 1).read_bytes()[: 2 * MiB])  # AllenSDK's killed download
    rec = download_file(url(fake, 1), dest)
    assert_clean_success(rec, dest, source(dataset, 1))
    assert list(tmp_path.glob("s1.nwb.mismatch-*"))


def test_adopt_existing_with_wrong_expected_sha_refuses(dataset, tmp_path):
    dest = tmp_path / "s1.nwb"
    shutil.copyfile(source(dataset, 1), dest)
    with pytest.raises(ChecksumMismatchError, match="not adopted.*sha256"):
        adopt_existing(dest, {"sha256": "0" * 64})
    assert not dest.exists() and list(tmp_path.glob("s1.nwb.mismatch-*"))


def test_modified_file_with_stale_record_is_rehashed(fake, dataset, tmp_path):
    dest = tmp_path / "s1.nwb"
    rec = download_file(url(fake, 1), dest)
    with open(dest, "r+b") as f:  # silent local corruption after the download
        f.seek(4000)
        f.write(b"\xff\xfe")
    again = download_file(url(fake, 1), dest)
    assert again.sha256 == rec.sha256 and dest.read_bytes() == source(dataset, 1).read_bytes()
    assert list(tmp_path.glob("s1.nwb.mismatch-*"))


# ----------------------------------------------------------------------------- lock file


def test_lock_file_is_deterministic_and_checks(fake, dataset, tmp_path):
    cache = tmp_path / "cache"
    recs = [
        download_file(url(fake, sid), cache / f"session_{sid}/session_{sid}.nwb") for sid in (2, 1)
    ]
    lock = tmp_path / "lock.json"
    write_lock(recs, lock, cache_dir=cache)
    first = lock.read_bytes()
    write_lock(list(reversed(recs)), lock, cache_dir=cache)
    assert lock.read_bytes() == first
    doc = read_lock(lock)
    assert list(doc["files"]) == ["session_1/session_1.nwb", "session_2/session_2.nwb"]
    assert set(doc["files"]["session_1/session_1.nwb"]) == {
        "size",
        "sha256",
        "dandi_etag",
        "url",
        "etag",
        "mirror",
        "published",
    }
    assert str(tmp_path) not in first.decode()  # relative paths only
    # the files agree with their lock: fetch_nwb under the lock accepts them as they are (their
    # origin unknown to the mirrors: "cache")
    bucket = mirrors.Mirrors.of(sources.Source("s3", fake.url))
    n0 = len(fake.requests)
    for sid, rec in zip((2, 1), recs, strict=True):
        got = mirrors.fetch_nwb(bucket, rec.path, sid, cache_dir=cache, lock_file=lock)
        assert (got.size, got.sha256, got.mirror) == (rec.size, rec.sha256, "cache")
        assert expected_for(rec.path, doc, cache_dir=cache)["sha256"] == rec.sha256
    assert new_requests(fake, n0) == []


def test_lock_mismatch_is_an_error_and_sets_the_file_aside(fake, dataset, tmp_path):
    cache = tmp_path / "cache"
    dest = cache / "session_1/session_1.nwb"
    rec = download_file(url(fake, 1), dest)
    lock = tmp_path / "lock.json"
    write_lock([rec], lock, cache_dir=cache)
    doc = json.loads(lock.read_text())
    doc["files"]["session_1/session_1.nwb"]["sha256"] = "ab" * 32
    lock.write_text(json.dumps(doc))
    doc = read_lock(lock)
    # the file on disk differs from its lock entry: refused, set aside, and fetched again, whose
    # bytes differ from the lock too
    with pytest.raises(LockMismatchError) as ei:
        bucket = mirrors.Mirrors.of(sources.Source("s3", fake.url))
        mirrors.fetch_nwb(bucket, dest, 1, cache_dir=cache, lock_file=lock, options=FAST)
    msg = str(ei.value)
    assert "session_1/session_1.nwb" in msg and "ab" * 32 in msg and rec.sha256 in msg
    assert not dest.exists() and list(dest.parent.glob("session_1.nwb.mismatch-*"))

    # download_file with the (wrong) lock entry: refused every time, nothing at dest
    with pytest.raises(ChecksumMismatchError, match="ab" * 32):
        download_file(
            url(fake, 1), dest, expected=expected_for(dest, doc, cache_dir=cache), options=FAST
        )
    assert not dest.exists()


def test_remote_changed_since_lock_is_not_retried(fake, tmp_path):
    n0 = len(fake.requests)
    dest = tmp_path / "s1.nwb"
    with pytest.raises(DownloadError, match="remote file changed since the lock file"):
        download_file(
            url(fake, 1), dest, expected={"etag": '"0123"', "url": url(fake, 1)}, options=FAST
        )
    assert len(new_requests(fake, n0)) == 1 and not dest.exists()


# ----------------------------------------------------------------------------- preflight


def test_preflight_refuses_a_plan_larger_than_free_space(tmp_path):
    free = shutil.disk_usage(tmp_path).free
    plan = [(tmp_path / "a.nwb", 2 * MiB), (tmp_path / "b.nwb", free)]
    with pytest.raises(InsufficientSpaceError) as ei:
        check_free_space(plan, tmp_path / "not/yet/created")
    msg = str(ei.value)
    assert "free space or point cache_dir elsewhere" in msg and str(tmp_path) in msg


def test_preflight_counts_part_bytes_and_present_files(tmp_path):
    (tmp_path / "done.nwb").write_bytes(b"x" * 100)
    Path(f"{tmp_path}/half.nwb.part").write_bytes(b"x" * 300)
    Path(f"{tmp_path}/half.nwb.part.json").write_text(json.dumps({"size": 1000}))
    need = check_free_space(
        [(tmp_path / "done.nwb", 100), (tmp_path / "half.nwb", 1000), (tmp_path / "new", 50)],
        tmp_path,
        reserve_bytes=0,
    )
    assert need == 700 + 50
    Path(f"{tmp_path}/half.nwb.part.json").unlink()  # no sidecar: the .part will be discarded
    assert check_free_space([(tmp_path / "half.nwb", 1000)], tmp_path, reserve_bytes=0) == 1000


def test_parse_retry_after():
    assert parse_retry_after("7") == 7.0
    now = 1_700_000_000
    assert parse_retry_after("Tue, 14 Nov 2023 22:13:40 GMT", now=now) == pytest.approx(20)
    assert parse_retry_after("garbage") is None and parse_retry_after(None) is None


def test_retry_policy_one_decision_per_failure():
    def policy(**kw):
        return dl_retry.RetryPolicy(backoff_base_s=1, backoff_max_s=10, rand=lambda: 1.0, **kw)

    failed = dl_retry.AttemptFailed
    p = policy(max_attempts=3)
    # no progress: exponential backoff (full jitter at its top here), stop after max_attempts
    assert [p.after(failed("HTTP 500"), 0, 100) for _ in range(3)] == [1, 2, None]
    assert p.history[0] == "attempt 1: HTTP 500; .part has 0 of 100 bytes"
    assert len(p.history) == 3 and not p.wrong_bytes
    # progress resets the count: a connection that keeps dropping still finishes
    p = policy(max_attempts=2)
    assert all(p.after(failed("reset"), n, None) is not None for n in range(10, 100, 10))
    # Retry-After is honoured up to backoff_max_s; fatal stops at once
    assert policy(max_attempts=8).after(failed("503", retry_after=30), 0, None) == 10
    assert policy(max_attempts=8).after(failed("404", fatal=True), 0, None) is None
    # wrong bytes: at most MAX_VERIFY_FAILURES restarts, and the end is a checksum error
    p = policy(max_attempts=100)
    delays = [p.after(failed("sha256", bad_bytes=True), 0, 100) for _ in range(5)]
    assert delays.index(None) == dl_retry.MAX_VERIFY_FAILURES - 1 == 2
    assert p.wrong_bytes


def test_remote_size_falls_back_to_range_get(fake, dataset):
    # a server without HEAD support: the session keeps the real transport, HEAD is refused
    class NoHead(requests.Session):
        def head(self, *a, **kw):
            raise requests.ConnectionError("HEAD not allowed here")

    with NoHead() as s:
        assert remote_size(url(fake, 1), s) == SMALL_SIZE(dataset)


def test_threads_share_one_session(fake, dataset, tmp_path):
    # two different files at once through one Session (Snakemake runs jobs in parallel)
    errors = []
    with requests.Session() as s:

        def go(sid):
            try:
                download_file(url(fake, sid), tmp_path / f"{sid}.nwb", session=s)
            except Exception as e:  # pragma: no cover - reported below
                errors.append(e)

        ts = [threading.Thread(target=go, args=(sid,)) for sid in (1, 2)]
        for t in ts:
            t.start()
        for t in ts:
            t.join(30)
    assert not errors
    assert sha(tmp_path / "2.nwb") == sha(source(dataset, 2))


# ----------------------------------------------------------------------------- moved sources


def _partial_part(dest: Path, from_url: str, prefix: bytes, size: int, validators: bool) -> None:
    info = dl.remote_info(from_url) if validators else None
    dest.parent.mkdir(parents=True, exist_ok=True)
    Path(f"{dest}.part").write_bytes(prefix)
    meta = {
        "url": from_url,
        "etag": info.etag if info else None,
        "last_modified": info.last_modified if info else None,
        "size": size,
    }
    Path(f"{dest}.part.json").write_text(json.dumps(meta))


def test_part_from_another_url_resumes_when_its_validator_matches(fake, dataset, tmp_path):
    """The same file from another address (the S3 mirror, a new port) resumes, If-Range guarded."""
    dest = tmp_path / "s1.nwb"
    src = source(dataset, 1)
    _partial_part(dest, url(fake, 1), src.read_bytes()[:MiB], SMALL_SIZE(dataset), True)
    warehouse = f"{fake.url}//api/v2/well_known_file_download/9001"  # session_1 again
    n0 = len(fake.requests)
    rec = download_file(warehouse, dest, options=FAST)
    assert_clean_success(rec, dest, src)
    resumed = ranged(new_requests(fake, n0))
    assert resumed and resumed[0]["range"] == f"bytes={MiB}-" and resumed[0]["status"] == 206


def test_part_from_another_url_without_validator_starts_over(fake, dataset, tmp_path):
    """No ETag/Last-Modified to prove it is the same file: a .part from elsewhere is not trusted."""
    dest = tmp_path / "s1.nwb"
    warehouse = f"{fake.url}//api/v2/well_known_file_download/9001"  # session_1 again
    _partial_part(dest, warehouse, b"\0" * MiB, SMALL_SIZE(dataset), False)
    n0 = len(fake.requests)
    rec = download_file(url(fake, 1), dest, options=FAST)
    assert_clean_success(rec, dest, source(dataset, 1))  # the zeros were not spliced in
    assert ranged(new_requests(fake, n0)) == []


# ----------------------------------------------------------------------------- options


def _config_schema_download() -> dict:
    """The ``download:`` section of the config schema, wherever the schema lives."""
    import yaml

    root = Path(__file__).resolve().parents[1]
    for rel in ("src/ecephys_pipeline/schemas", "workflow/schemas"):
        path = root / rel / "config.schema.yaml"
        if path.exists():
            return yaml.safe_load(path.read_text())["properties"]["download"]["properties"]
    raise AssertionError("config.schema.yaml not found")


def test_options_defaults_are_the_config_schemas():
    """One default per setting: what the engine uses without a config is the config's default."""
    schema = _config_schema_download()
    engine = {f.name: f.default for f in dataclasses.fields(Options)}
    plan_keys = {"preflight"}  # the plan's; reserve_free_gb is both (it bounds unknown sizes)
    assert set(schema) - set(engine) == plan_keys
    for key in set(schema) & set(engine):
        assert engine[key] == schema[key]["default"], key
    assert Options.from_config({k: v["default"] for k, v in schema.items()}) == Options()
    assert Options.from_config({}) == Options()


def test_options_from_config_takes_every_setting_and_names_unknown_ones():
    section = {"max_attempts": 3, "read_timeout_s": 7.5, "connections_per_file": 4,
               "verify_hdf5": False, "preflight": False, "reserve_free_gb": 0}  # fmt: skip
    opts = Options.from_config(section)
    assert (opts.max_attempts, opts.read_timeout_s, opts.connections_per_file) == (3, 7.5, 4)
    assert opts.verify_hdf5 is False and opts.timeout == (opts.connect_timeout_s, 7.5)
    with pytest.raises(ValueError, match="unknown setting.*read_timeout\\b"):
        Options.from_config({"read_timeout": 30})
    with pytest.raises(ValueError, match="at least 1"):
        Options(max_attempts=0)


def test_a_body_without_length_is_downloaded_and_verified(fake, dataset, tmp_path):
    """Issue 12 item 6: no Content-Length, the body ends at the close; the bytes are still
    verified (sha256, HDF5) before they reach their final path."""
    fake.clear_requests()
    fake.set_faults([{"kind": "no_length", "match": "session_1.nwb"}])
    dest = tmp_path / "s1.nwb"
    rec = download_file(url(fake, 1), dest, options=FAST)
    assert_clean_success(rec, dest, source(dataset, 1))
    got = [r for r in fake.requests if r["method"] == "GET" and "session_1.nwb" in r["path"]]
    assert [(r["status"], r["faults"]) for r in got] == [(200, ["no_length"])]


def test_a_body_without_length_stops_before_the_disk_reserve(fake, dataset, tmp_path):
    """Issue 12 item 6: a body of unknown length must not fill the file system: it stops when
    only download.reserve_free_gb would be left, with one final error naming the setting."""
    size = source(dataset, 1).stat().st_size
    room = size // 8  # the room left above the reserve: an eighth of the file
    options = fast(reserve_free_gb=(shutil.disk_usage(tmp_path).free - room) / 1e9)
    fake.clear_requests()
    fake.set_faults([{"kind": "no_length", "match": "session_1.nwb"}])
    dest = tmp_path / "s1.nwb"
    with pytest.raises(DownloadError) as err:
        download_file(url(fake, 1), dest, options=options)
    message = str(err.value)
    assert "no Content-Length" in message and "reserve_free_gb" in message
    assert not dest.exists()
    assert Path(f"{dest}.part").stat().st_size < size // 2  # (slack: other writers on the disk)
    gets = [r for r in fake.requests if r["method"] == "GET" and "session_1.nwb" in r["path"]]
    assert len(gets) == 1, "final: not retried"
