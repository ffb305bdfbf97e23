"""The plan before any byte moves: the `plan` command and the preflight in the selection
checkpoint, on the demo (real fake warehouse, real snakemake)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import yaml

import workflow_helpers as helpers

pytestmark = pytest.mark.e2e


def write_config(workdir, **download) -> str:
    config = yaml.safe_load((workdir / "config/demo.yaml").read_text())
    config["download"].update(download)
    (workdir / "config/test.yaml").write_text(yaml.safe_dump(config))
    return "config/test.yaml"


def plan_command(workdir, configfile: str, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "ecephys_pipeline", "plan", "--configfile", configfile, *extra],
        cwd=workdir,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_plan_command_prints_the_plan_and_writes_nothing(tmp_path):
    workdir = helpers.copy_workflow(tmp_path / "wf")
    proc = plan_command(workdir, "config/demo.yaml", "--json", "plan.json")
    assert proc.returncode == 0, proc.stderr
    for line in ("sessions: 2", "files: 7", "bytes already present: 0.00 GB", "free space in"):
        assert line in proc.stdout, proc.stdout
    plan = json.loads((workdir / "plan.json").read_text())
    served = workdir / "resources/fake_warehouse/dataset/files"
    assert plan["to_fetch_bytes"] == sum((served / f["path"]).stat().st_size for f in plan["files"])
    assert len([f for f in plan["files"] if f["probe_id"] is None]) == 2
    assert not (workdir / "resources/allen_cache").exists(), "a plan downloads nothing"
    assert not (workdir / "resources/fake_warehouse/url").exists(), "the demo server was stopped"


def test_plan_counts_what_is_already_present(tmp_path):
    workdir = helpers.copy_workflow(tmp_path / "wf")
    helpers.run_snakemake(workdir)
    proc = plan_command(workdir, "config/demo.yaml", "--json", "plan.json")
    assert proc.returncode == 0, proc.stderr
    plan = json.loads((workdir / "plan.json").read_text())
    assert plan["to_fetch_bytes"] == 0 and plan["present_bytes"] == plan["total_bytes"] > 0


def test_not_enough_space_stops_the_run_before_any_byte_is_fetched(tmp_path):
    workdir = helpers.copy_workflow(tmp_path / "wf")
    configfile = write_config(workdir, reserve_free_gb=1e9)  # keep an exabyte free: never fits
    proc = subprocess.run(
        [*helpers.SNAKEMAKE, "--cores", "2", "--configfile", configfile],
        cwd=workdir,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode != 0
    log = (workdir / "logs/select/select_sessions.log").read_text()
    assert "free" in log and "GB" in log, log[-2000:]
    cache = workdir / "resources/allen_cache"
    assert not list(cache.rglob("*.nwb")) and not list(cache.rglob("*.part"))
    assert not (workdir / "results/selection/selection.json").exists()

    refused = plan_command(workdir, configfile)
    assert refused.returncode == 1 and "free" in refused.stderr
