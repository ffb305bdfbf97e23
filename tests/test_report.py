"""The report: figures made from the Parquet, deterministic bytes, and `snakemake --report`.

Unit tests build figures from hand-made tables; the end-to-end test runs the demo workflow once
(the figures are part of the default target), makes `--report report.zip` and opens every image
in it. The same run then serves the terminal's summary and the stale-partition tests.
"""

from __future__ import annotations

import json
import re
import struct
import zipfile
from pathlib import Path

import duckdb
import numpy as np
import pandas as pd
import polars as pl
import pytest

import workflow_helpers as helpers
from ecephys_pipeline import report

# ------------------------------------------------------------------------- image sizes


def png_size(data: bytes) -> tuple[int, int]:
    """(width, height) from a PNG's IHDR chunk."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    assert data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


def svg_size(data: bytes) -> tuple[str, str]:
    """The root element's width and height attributes, as written."""
    root = re.search(rb"<svg\b[^>]*>", data)
    assert root, "no <svg> element"
    width = re.search(rb'\bwidth="([^"]+)"', root.group(0)).group(1).decode()
    height = re.search(rb'\bheight="([^"]+)"', root.group(0)).group(1).decode()
    return width, height


# Written out here, not read from report.SESSION_FIGURES: the figures are 12 x 6 or 12 x 8 in,
# i.e. 864 x 432 / 864 x 576 pt in SVG and 1200 x 800 px in PNG at 100 dpi.
EXPECTED_SESSION = {
    "unit_filters.svg": ("864pt", "432pt"),
    "quality_metrics.svg": ("864pt", "432pt"),
    "waveforms.svg": ("864pt", "576pt"),
    "raster_psth.png": (1200, 800),
    "channel_maps.svg": ("864pt", "576pt"),
}
EXPECTED_RUN = {"selection_counts.svg": ("576pt", "288pt"), "run.html": None, "files.html": None}


def check_image(name: str, data: bytes, expected) -> None:
    assert len(data) > 1000, f"{name}: {len(data)} bytes"
    if name.endswith(".png"):
        assert png_size(data) == expected, name
    elif name.endswith(".svg"):
        assert svg_size(data) == expected, name
        assert data.count(b"<path") > 10, f"{name}: nothing drawn"


# ------------------------------------------------------------------------- hand-made tables


def catalogue() -> pd.DataFrame:
    """Eight units of session 1: area, and which filter each one fails (worked out by hand)."""
    return pd.DataFrame(
        {
            "unit_id": np.arange(8),
            "ecephys_session_id": 1,
            "ecephys_structure_acronym": ["VISp", "VISp", "VISp", "CA1", "CA1", "LGd", None, "LGd"],
            "quality": ["good", "noise", "good", "good", "good", "good", "good", "good"],
            #                ok     quality  amp    pres    isi    ok    no area  NaN amp
            "amplitude_cutoff": [0.01, 0.01, 0.2, 0.01, 0.01, 0.1, 0.01, np.nan],
            "presence_ratio": [0.99, 0.99, 0.99, 0.5, 0.99, 0.95, 0.99, 0.99],
            "isi_violations": [0.1, 0.1, 0.1, 0.1, 0.9, 0.5, 0.1, 0.1],
            "firing_rate": [1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0],
            "snr": [1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0],
            "d_prime": [1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0],
        }
    )


def test_filter_table_counts_each_filter_per_area():
    units = catalogue()
    extracted = units.iloc[[0, 5]]  # the two units that pass everything
    table = report.filter_table(units, None, extracted)
    assert list(table.index) == ["VISp", "CA1", "LGd", report.NO_AREA]  # cortex, HPF, thalamus
    assert table.loc["VISp"].to_dict() == {
        "units": 3,
        "quality": 2,
        "amplitude_cutoff": 2,
        "presence_ratio": 3,
        "isi_violations": 3,
        "in_brain": 3,
        "all filters": 1,
        "extracted": 1,
    }
    assert table.loc["CA1", ["presence_ratio", "isi_violations", "all filters"]].tolist() == [
        1,
        1,
        0,
    ]
    # 0.1 / 0.95 / 0.5 are on the limits and pass; a NaN amplitude cutoff never passes
    assert table.loc["LGd", ["amplitude_cutoff", "all filters", "extracted"]].tolist() == [1, 1, 1]
    assert table.loc[report.NO_AREA, ["in_brain", "all filters"]].tolist() == [0, 0]
    # a threshold switched off lets every non-NaN value through
    loose = report.filter_table(units, {"isi_violations_maximum": None}, extracted)
    assert loose.loc["CA1", "isi_violations"] == 2


def test_figures_are_deterministic_and_of_the_stated_size(tmp_path):
    units = catalogue()
    first = report.save(
        report.unit_filters_figure(report.filter_table(units, None, units), 1), tmp_path / "a.svg"
    )
    again = report.save(
        report.unit_filters_figure(report.filter_table(units, None, units), 1), tmp_path / "b.svg"
    )
    assert first.read_bytes() == again.read_bytes()
    assert b"<dc:date>" not in first.read_bytes()
    check_image("unit_filters.svg", first.read_bytes(), ("864pt", "432pt"))
    png_a, png_b = (
        report.save(report.quality_metrics_figure(units, units.iloc[[0, 5]], None, 1), path)
        for path in (tmp_path / "a.png", tmp_path / "b.png")
    )
    assert png_a.read_bytes() == png_b.read_bytes()
    assert png_size(png_a.read_bytes()) == (1200, 600)
    assert b"Software" not in png_a.read_bytes()


def test_raster_uses_the_preferred_stimulus_and_the_best_good_units():
    stim = pd.DataFrame({"stimulus_name": ["gabors"] * 5 + ["drifting_gratings"] * 2 + [None]})
    assert report.raster_stimulus(stim) == "drifting_gratings"
    assert report.raster_stimulus(stim.assign(stimulus_name="spontaneous")) is None
    units = pd.DataFrame(
        {
            "unit_id": [1, 2, 3, 4],
            "snr": [9.0, 5.0, 7.0, 7.0],
            "passes_default_filters": [False, True, True, True],
        }
    )
    assert report.raster_units(units, 2)["unit_id"].tolist() == [3, 4]  # SNR, then id


def test_files_table_lists_every_locked_file():
    lock = {
        "files": {
            "session_1/session_1.nwb": {"size": 10, "sha256": "ab" * 32, "url": "http://x/1"},
            "session_1/probe_2_lfp.nwb": {"size": 5, "sha256": "cd" * 32, "url": "http://x/2"},
        }
    }
    records = [{"path": "/c/session_1/session_1.nwb", "mtime_ns": 0}]
    page = report.files_html(lock, records, {"download": {"verify_hdf5": True}})
    for rel, entry in lock["files"].items():
        assert rel in page and entry["sha256"] in page and entry["url"] in page
    assert "2 files, 15 bytes" in page
    assert "opens as HDF5" in page


# ------------------------------------------------------------------------- end to end


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    workdir = helpers.copy_workflow(tmp_path_factory.mktemp("report"))
    proc = helpers.run_snakemake(workdir)
    return workdir, proc


@pytest.mark.e2e
def test_the_terminal_shows_the_plan_then_a_summary(demo_run):
    workdir, proc = demo_run
    err = proc.stderr
    plan_at, first_download = err.index("plan of this run"), err.index("rule download_")
    assert plan_at < first_download, "the plan comes before the downloads"
    assert err.count("plan of this run") == 1
    assert "bytes to download: 0.07 GB" in err
    summary = err[err.index("\ndone:\n") :]
    assert "sessions: 2" in summary
    units = len(pd.read_parquet(workdir / "results/parquet/units"))
    spikes = len(pd.read_parquet(workdir / "results/parquet/spikes", columns=["unit_id"]))
    assert f"units: {units:,}; spikes: {spikes:,}" in summary
    assert "snakemake --configfile config/demo.yaml --report report.html" in summary
    for log in (
        "metadata/units",
        "metadata/cache_manifest",
        "extract/write_manifest",
        "download/write_lock",
        "select/select_sessions",
        "report/run",
    ):
        assert (workdir / f"logs/{log}.log").read_text().strip(), f"{log}.log says nothing"


@pytest.mark.e2e
def test_report_zip_holds_every_figure(demo_run):
    workdir, _ = demo_run
    proc = helpers.run_snakemake(workdir, "--report", "report.zip")
    assert "Report created" in proc.stderr + proc.stdout
    sessions = json.loads((workdir / "results/selection/selection.json").read_text())["sessions"]
    assert len(sessions) == 2
    with zipfile.ZipFile(workdir / "report.zip") as z:
        found: dict[str, list[bytes]] = {}
        for name in z.namelist():
            found.setdefault(Path(name).name, []).append(z.read(name))
    for name, expected in EXPECTED_SESSION.items():
        assert len(found.get(name, [])) == len(sessions), f"{name}: one per session"
        for data in found[name]:
            check_image(name, data, expected)
    for name, expected in EXPECTED_RUN.items():
        (data,) = found[name]
        if expected:
            check_image(name, data, expected)
    page = found["report.html"][0].decode()
    for category in (
        "Unit filters",
        "Quality metrics",
        "Waveforms",
        "Raster and PSTH",
        "Channel maps",
        "Run",
    ):
        assert f'"{category}"' in page, category
    lock = json.loads((workdir / "results/ecephys.lock.json").read_text())
    files = found["files.html"][0].decode()
    for rel, entry in lock["files"].items():
        assert rel in files and entry["sha256"] in files
    # the figures are the files of results/report, byte for byte
    on_disk = workdir / f"results/report/session_{sessions[0]['session_id']}/raster_psth.png"
    assert on_disk.read_bytes() in found["raster_psth.png"]


@pytest.mark.e2e
def test_a_smaller_selection_leaves_only_its_partitions_readable(demo_run, tmp_path):
    """After the two-session run, a one-session spec: every reader sees one session; the other
    session's partitions are under results/stale/ and its NWB files are still in the cache."""
    workdir, _ = demo_run
    before = json.loads((workdir / "results/selection/selection.json").read_text())
    kept, dropped = (s["session_id"] for s in before["sessions"])
    spec = workdir / "config/one.yaml"
    spec.write_text("limit: 1\nfetch_lfp: true\n")
    proc = helpers.run_snakemake(workdir, "--config", "selection=config/one.yaml")
    assert f"sessions no longer selected ({dropped})" in proc.stderr
    parquet = workdir / "results/parquet"
    for dataset in ("units", "spikes", "waveforms", "stimulus_presentations", "running_speed"):
        root = parquet / dataset
        assert set(pd.read_parquet(root, columns=["session_id"]).session_id.astype(int)) == {kept}
        glob = f"{root}/**/*.parquet"
        polars = pl.scan_parquet(glob, hive_partitioning=True).select("session_id").unique()
        assert polars.collect()["session_id"].to_list() == [kept], dataset
        rows = duckdb.sql(
            f"SELECT DISTINCT session_id FROM read_parquet('{glob}', hive_partitioning = true)"
        ).fetchall()
        assert rows == [(kept,)], dataset
        assert (workdir / f"results/stale/parquet/{dataset}/session_id={dropped}").is_dir()
    assert (workdir / f"results/stale/report/session_{dropped}/raster_psth.png").is_file()
    # the LFP stores: the README's glob over results/lfp finds the kept session's only
    stores = sorted((workdir / "results/lfp").glob("session_id=*/probe_id=*.zarr"))
    assert stores and {s.parent.name for s in stores} == {f"session_id={kept}"}
    retired = sorted((workdir / f"results/stale/lfp/session_id={dropped}").glob("*.zarr"))
    assert retired and all((s / ".zgroup").is_file() for s in retired)
    cache = workdir / "resources/allen_cache"
    assert (cache / f"session_{dropped}/session_{dropped}.nwb").is_file(), "the cache is kept"
    manifest = json.loads((workdir / "results/manifest.json").read_text())
    assert all(f"session_id={dropped}" not in path for path in manifest["outputs"])
