"""Outputs of sessions and probes no longer selected leave the readers' roots, nothing deleted.

Real directory trees of the workflow's result layout (Parquet partitions, report folders, LFP
stores); the end-to-end case, a smaller selection after a run, is in test_report.py.
"""

from __future__ import annotations

import json
from pathlib import Path

from ecephys_pipeline import stale


def _store(results: Path, sid: int, pid: int, marker: str) -> Path:
    store = results / f"lfp/session_id={sid}/probe_id={pid}.zarr"
    store.mkdir(parents=True)
    (store / ".zgroup").write_text('{"zarr_format": 2}')
    (store / "marker").write_text(marker)
    return store


def _selection(path: Path, sessions: dict[int, dict[int, bool]]) -> Path:
    """selection.json as the select rule writes it: session -> {probe: download_lfp}."""
    path.write_text(json.dumps({"sessions": [
        {"session_id": sid, "session_type": "brain_observatory_1.1", "probes": [
            {"probe_id": pid, "name": f"probe{i}", "download_lfp": lfp, "has_lfp_data": True}
            for i, (pid, lfp) in enumerate(probes.items())
        ]}
        for sid, probes in sessions.items()
    ]}))  # fmt: skip
    return path


def test_lfp_stores_of_unselected_probes_and_sessions_are_retired_side_by_side(tmp_path):
    results = tmp_path / "results"
    units = results / "parquet/units/session_id=1"
    units.mkdir(parents=True)
    (units / "part-0.parquet").write_bytes(b"PAR1")
    _store(results, 1, 10, "1/10")
    _store(results, 1, 11, "1/11")
    _store(results, 2, 20, "2/20")
    sel = tmp_path / "selection.json"

    # session 1 stays, its probe 11 no longer with LFP; session 2 is dropped
    moved = stale.retire_unselected(results, _selection(sel, {1: {10: True, 11: False}}))
    assert sorted(p.relative_to(results).as_posix() for p in results.glob("lfp/*/*.zarr")) == [
        "lfp/session_id=1/probe_id=10.zarr"
    ]
    assert not (results / "lfp/session_id=2").exists(), "an emptied session partition goes too"
    assert (results / "stale/lfp/session_id=1/probe_id=11.zarr/marker").read_text() == "1/11"
    assert (results / "stale/lfp/session_id=2/probe_id=20.zarr/marker").read_text() == "2/20"
    assert units.is_dir(), "the selected session's Parquet stays"
    said = stale.describe(moved, results)
    assert "2 LFP stores" in said and "sessions no longer selected" not in said

    # later session 1 is dropped too: its last store joins the one retired before, which stays
    moved = stale.retire_unselected(results, _selection(sel, {3: {30: True}}))
    assert sorted(p.name for p in (results / "stale/lfp/session_id=1").iterdir()) == [
        "probe_id=10.zarr",
        "probe_id=11.zarr",
    ]
    assert not list(results.glob("lfp/*/*.zarr")) and not units.exists()
    assert (results / "stale/parquet/units/session_id=1/part-0.parquet").is_file()
    assert "sessions no longer selected (1)" in stale.describe(moved, results)


def test_nothing_moves_while_everything_is_selected(tmp_path):
    results = tmp_path / "results"
    store = _store(results, 1, 10, "1/10")
    sel = _selection(tmp_path / "selection.json", {1: {10: True}})
    assert stale.retire_unselected(results, sel) == []
    assert (store / "marker").read_text() == "1/10"
    assert stale.describe([], results) == ""
