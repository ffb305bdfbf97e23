"""Selection and DAG building at the real dataset's scale (issue 5): the fake warehouse serves a
catalogue shaped like the real one (58 sessions, 332 probes, 7 without LFP); NWB files are
generated only when downloaded, so nothing here downloads."""

from __future__ import annotations

import json
import time

import pytest
import yaml

import workflow_helpers as helpers

pytestmark = pytest.mark.e2e

NO_LFP_PROBES = {773463023, 832810584, 846401828, 846401830, 846401834, 846401838, 846401841}


@pytest.fixture(scope="module")
def realistic(tmp_path_factory):
    workdir = helpers.copy_workflow(tmp_path_factory.mktemp("realistic"))
    (workdir / "config/all.yaml").write_text("all: true\nfetch_lfp: true\n")
    config = yaml.safe_load((workdir / "config/demo.yaml").read_text())
    config["demo"]["realistic"] = True
    config["selection"] = "config/all.yaml"
    config["download"]["preflight"] = False  # sizes would need every file generated
    config["mirrors"] = None  # so would DANDI's listing (its digests)
    config["dandi"] = {"verify_digests": False}
    (workdir / "config/scale.yaml").write_text(yaml.safe_dump(config))
    args = ("--configfile", "config/scale.yaml")
    helpers.run_snakemake(workdir, *args, "--until", "select_sessions")
    return workdir, args


def test_every_session_and_probe_is_selected(realistic):
    workdir, _ = realistic
    selection = json.loads((workdir / "results/selection/selection.json").read_text())
    sessions = selection["sessions"]
    probes = [p for s in sessions for p in s["probes"]]
    assert len(sessions) == 58 and len(probes) == 332
    assert {p["probe_id"] for p in probes if not p["download_lfp"]} == NO_LFP_PROBES
    assert 715093703 in {s["session_id"] for s in sessions}


def test_dry_run_plans_every_file(realistic):
    workdir, args = realistic
    started = time.monotonic()
    proc = helpers.run_snakemake(workdir, "-n", *args)
    seconds = time.monotonic() - started
    stats = dict(
        line.split()
        for line in proc.stdout.split("Job stats:")[1].splitlines()[3:]
        if len(line.split()) == 2
    )
    assert stats["download_session_nwb"] == "58"
    assert stats["download_lfp_nwb"] == "325"
    assert stats["extract_session"] == "58"
    print(f"snakemake -n over 58 sessions / 332 probes: {seconds:.1f} s")  # figure, not a gate
