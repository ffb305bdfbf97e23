"""Foreseeable problems end in one line naming the fix, never a traceback: in the CLI and in
the workflow's own messages. Real commands, the real fake warehouse, real cached tables."""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

import pytest

import workflow_helpers as helpers
from ecephys_pipeline import layout, metadata, sources

fake = pytest.importorskip("ecephys_pipeline.fake")
synth = pytest.importorskip("ecephys_pipeline.synth")


def plan(workdir: Path, configfile: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "ecephys_pipeline", "plan", "--configfile", configfile],
        cwd=workdir,
        capture_output=True,
        text=True,
        timeout=300,
    )


def one_error_line(proc: subprocess.CompletedProcess) -> str:
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr, proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, proc.stderr
    return errors[0]


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    return helpers.copy_workflow(tmp_path_factory.mktemp("errors"))


def write_config(workdir: Path, name: str, **changes: str) -> str:
    text = (workdir / "config/demo.yaml").read_text()
    for old, new in changes.items():
        assert old in text
        text = text.replace(old, new)
    (workdir / f"config/{name}").write_text(text)
    return f"config/{name}"


def test_plan_with_tables_cached_from_another_catalogue(workdir, tmp_path):
    """The realistic catalogue's tables in the cache, the default demo's server: the first real
    id is unknown to the server. The fix: delete the cached tables."""
    dataset = tmp_path / "realistic"
    synth.make_dataset(dataset, seed=0, realistic=True, files="lazy")
    cache = workdir / "resources/stale_cache"
    cache.mkdir(parents=True)
    with fake.FakeWarehouse(dataset) as warehouse:
        source = sources.Source(kind="warehouse", url=warehouse.url)
        for table in layout.TABLES:
            metadata.write_table_csv(
                sources.fetch_table(source, table), cache / layout.table_path(table)
            )
    config = write_config(
        workdir,
        "stale.yaml",
        **{"cache_dir: resources/allen_cache": "cache_dir: resources/stale_cache"},
    )
    line = one_error_line(plan(workdir, config))
    assert "expected exactly one NWB file for session" in line
    assert "delete them (sessions.csv, probes.csv, channels.csv, units.csv" in line


def test_plan_with_real_ids_on_the_default_demo(workdir):
    config = write_config(
        workdir,
        "ids.yaml",
        **{"selection: config/selection.yaml": "selection: config/examples/one_session.yaml"},
    )
    line = one_error_line(plan(workdir, config))
    assert "session id 756029989" in line and "--configfile config/demo_realistic.yaml" in line


def test_plan_with_an_unreachable_source(workdir):
    with socket.socket() as s:  # a loopback port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    config = write_config(
        workdir,
        "down.yaml",
        **{
            "url_file: resources/fake_warehouse/url": f"url: http://127.0.0.1:{port}",
            "cache_dir: resources/allen_cache": "cache_dir: resources/empty_cache",
            "max_attempts: 8": "max_attempts: 1",
            "  enabled: true": "  enabled: false",
        },
    )
    line = one_error_line(plan(workdir, config))
    assert f"Is http://127.0.0.1:{port} reachable from here?" in line


@pytest.mark.e2e
def test_workflow_names_the_fix_for_an_example_on_the_wrong_demo(workdir):
    proc = helpers.run_snakemake(
        workdir, "--config", "selection=config/examples/one_session.yaml", check=False
    )
    assert proc.returncode != 0
    log = (workdir / "logs/select/select_sessions.log").read_text()
    assert "Traceback" not in log, log
    assert log.startswith("error: selection spec: session id 756029989"), log
    assert "--configfile config/demo_realistic.yaml" in proc.stderr
