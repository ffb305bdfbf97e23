"""The terminal: the plan before the downloads, progress while they run, a summary at the end.

Real files: a plan.json and selection.json as the checkpoint writes them, a .part file that a
thread grows while the watcher's own thread reports it.
"""

from __future__ import annotations

import io
import json
import threading
import time

from ecephys_pipeline import terminal

SELECTION = {
    "sessions": [
        {
            "session_id": 11,
            "session_type": "brain_observatory_1.1",
            "probes": [
                {"probe_id": 21, "name": "probeA", "download_lfp": True},
                {"probe_id": 22, "name": "probeB", "download_lfp": False},
            ],
        }
    ]
}


def write_plan(tmp_path, sizes):
    cache = tmp_path / "cache"
    (cache / "session_11").mkdir(parents=True)
    files = [
        {
            "path": "session_11/session_11.nwb",
            "session_id": 11,
            "probe_id": None,
            "url": "http://x/1",
            "size": sizes[0],
            "present": 0,
        },
        {
            "path": "session_11/probe_21_lfp.nwb",
            "session_id": 11,
            "probe_id": 21,
            "url": "http://x/2",
            "size": sizes[1],
            "present": 0,
        },
    ]
    plan = tmp_path / "plan.json"
    plan.write_text(json.dumps({"cache_dir": str(cache), "files": files}))
    selection = tmp_path / "selection.json"
    selection.write_text(json.dumps(SELECTION))
    return cache, selection, plan


def test_plan_is_printed_once_with_what_is_on_disk_now(tmp_path):
    cache, selection, plan = write_plan(tmp_path, [3_000_000_000, 1_000_000])
    (cache / "session_11/probe_21_lfp.nwb").write_bytes(b"x" * 1_000_000)  # finished
    out = io.StringIO()
    assert terminal.announce_plan(selection, plan, stream=out)
    text = out.getvalue()
    assert "session 11 brain_observatory_1.1: probeA, probeB (no LFP)" in text
    assert "files: 2" in text
    assert "bytes already present: 0.00 GB (1,000,000 bytes)" in text
    assert "bytes to download: 3.00 GB (3,000,000,000 bytes)" in text
    assert "free space in" in text
    assert not terminal.announce_plan(selection, plan, stream=out), "once per plan"
    assert out.getvalue() == text


def test_progress_lines_while_a_part_file_grows(tmp_path):
    cache, _selection, plan = write_plan(tmp_path, [2_000_000, 1_000_000])
    part = cache / "session_11/session_11.nwb.part"
    out = io.StringIO()
    watcher = terminal.ProgressWatcher(plan, interval=0.05, stream=out)
    assert watcher.lines() == [], "no .part, no line"
    stop = threading.Event()

    def grow():
        with open(part, "wb") as handle:
            while not stop.is_set() and handle.tell() < 1_900_000:
                handle.write(b"x" * 20_000)
                handle.flush()
                time.sleep(0.01)

    writer = threading.Thread(target=grow)
    writer.start()
    watcher.start()
    time.sleep(0.6)
    stop.set()
    writer.join()
    time.sleep(0.2)
    watcher.stop()
    lines = out.getvalue().splitlines()
    assert lines, "the watcher reported the download"
    assert all(line.startswith("download session_11/session_11.nwb: ") for line in lines)
    assert any("MB/s" in line and "ETA" in line and "%" in line for line in lines), lines
    # one line per file per look at most, and none once the .part stops growing
    assert len(lines) <= 0.8 / 0.05 + 1
    assert watcher.lines() == []


def test_progress_ignores_a_missing_or_preflight_free_plan(tmp_path):
    watcher = terminal.ProgressWatcher(tmp_path / "plan.json", interval=1)
    assert watcher.lines() == []
    (tmp_path / "plan.json").write_text('{"preflight": false}\n')
    assert watcher.lines() == []
