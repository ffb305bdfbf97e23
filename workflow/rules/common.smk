import functools
import json
import sys
from pathlib import Path

from ecephys_pipeline import download, layout, lockfile, mirrors, stale, terminal
from ecephys_pipeline.analysis import ANALYSIS_DATASETS
from ecephys_pipeline.fake import demo

CACHE = config["cache_dir"]


wildcard_constraints:
    session_id=r"\d+",
    probe_id=r"\d+",
    table="|".join(layout.TABLES),


# ----------------------------------------------------------------------------------------------
# The offline demo, wrapped around the run: with demo.enabled the workflow prepares the synthetic
# dataset and runs the fake warehouse on a free loopback port for the duration of the run; the
# server writes its address to source.url_file, where the jobs read it. The product never knows.


def start_demo_services():
    url = demo.start_for(config)
    if url:
        logger.info(
            f"demo: fake warehouse serving {config['demo']['dataset_dir']} at {url}"
        )


# The terminal: the plan before the first download (selected_sessions), each download's
# progress while it runs (a thread of this process reading the .part sizes), a summary at the end.
PROGRESS = terminal.ProgressWatcher("results/selection/plan.json")


onstart:
    start_demo_services()
    PROGRESS.start()


onsuccess:
    PROGRESS.stop()
    demo.stop_for(config)
    # partitions of sessions no longer selected leave the dataset roots (nothing is deleted)
    moved = stale.retire_unselected("results", "results/selection/selection.json")
    if moved:
        print(stale.describe(moved), file=sys.stderr)
    print(
        terminal.run_summary(configfiles=list(workflow.overwrite_configfiles)),
        file=sys.stderr,
    )


onerror:
    PROGRESS.stop()
    demo.stop_for(config)


# ----------------------------------------------------------------------------------------------
# Targets from the selection checkpoint.


def selected_sessions():
    """The selection artifact (results/selection/selection.json) once the checkpoint ran."""
    output = checkpoints.select_sessions.get().output
    terminal.announce_plan(output.selection, output.plan)  # once, before any download
    with open(output.selection) as handle:
        return json.load(handle)["sessions"]


def selected_files():
    """Every NWB file of the selection, relative to the cache: session files, then LFP files."""
    sessions = selected_sessions()
    return [layout.nwb_path(s["session_id"]) for s in sessions] + [
        layout.nwb_path(s["session_id"], p["probe_id"])
        for s in sessions
        for p in s["probes"]
        if p["download_lfp"]
    ]


def dandi_listings(wildcards=None):
    """The pinned DANDI versions' listings the run verifies against (none if DANDI is unused)."""
    return [
        str(p) for p in mirrors.listing_files(mirrors.dandi_versions(config), CACHE)
    ]


def download_records(wildcards):
    """Every file of the selection: the lock file lists them all."""
    return [f"{CACHE}/{layout.record_path(f)}" for f in selected_files()]


def parquet_outputs(session_id):
    datasets = ["units", "waveforms", "stimulus_presentations", "running_speed"]
    files = [
        f"results/parquet/{d}/session_id={session_id}/part-0.parquet" for d in datasets
    ]
    return files + [f"results/parquet/spikes/session_id={session_id}"]


def analysis_outputs(session_id):
    return [
        f"results/parquet/{d}/session_id={session_id}/part-0.parquet"
        for d in ANALYSIS_DATASETS
    ]


def all_parquet_outputs(wildcards):
    return [
        f
        for s in selected_sessions()
        for f in parquet_outputs(s["session_id"]) + analysis_outputs(s["session_id"])
    ]


LFP_STORE = "results/lfp/session_id={session_id}/probe_id={probe_id}.zarr"


def lfp_store_outputs(wildcards):
    """One LFP store per selected probe with an LFP file, when lfp_arrays.enabled."""
    if not config["lfp_arrays"]["enabled"]:
        return []
    return [
        LFP_STORE.format(session_id=s["session_id"], probe_id=p["probe_id"])
        for s in selected_sessions()
        for p in s["probes"]
        if p["download_lfp"]
    ]


def get_final_output(wildcards):
    return [
        "results/ecephys.lock.json",
        "results/manifest.json",
        f"{CACHE}/{layout.CACHE_MANIFEST}",
        *all_parquet_outputs(wildcards),
        *lfp_store_outputs(wildcards),
    ]


# ----------------------------------------------------------------------------------------------
# Parameters handed to the scripts.


def unit_filters():
    return SPEC["unit_filters"]


@functools.cache
def pinned_files():
    """The lock file's entries (lock_file set), read once per run; else an empty mapping."""
    if not config["lock_file"]:
        return {}
    return lockfile.read_lock(config["lock_file"])["files"]


def nwb_file(wildcards):
    """The NWB file a job's wildcards name, relative to the cache."""
    return layout.nwb_path(wildcards.session_id, wildcards.get("probe_id"))


def pinned_entry(wildcards):
    """What the lock file pins for this file (size, sha256), or None: a changed pin reruns the
    jobs that download or read it. URL and ETag are left out: they may differ between mirrors
    and runs (the demo's port) without the bytes changing."""
    entry = pinned_files().get(nwb_file(wildcards))
    return None if entry is None else {k: entry[k] for k in ("size", "sha256")}


def cache_state(wildcards):
    """'changed' when the cached file no longer matches its record (a byte flipped, the file
    replaced or removed since it was verified): the download job then runs again and repairs
    it. Only stat() calls: cheap for every file of the dataset."""
    changed = download.changed_since_verified(Path(CACHE) / nwb_file(wildcards))
    return "changed" if changed else "ok"


def analysis_options():
    """The analysis stage's options; unit_filters: the selection's, or None (every unit)."""
    opts = config["analysis"]
    return {
        "bins": dict(opts["bins"]),
        "stimuli": opts["stimuli"],
        "unit_filters": (
            SPEC["unit_filters"] if opts["restrict_to_unit_filters"] else None
        ),
    }


def source_config():
    """What the scripts need to reach the source (a url_file is read at run time)."""
    return {"source": config["source"]}


def download_runtime(wildcards, attempt):
    """Minutes: a 3 GB file at the warehouse's slow ~0.5 MB/s takes ~100 min; more on a retry."""
    return 240 * attempt


def lfp_options():
    return {k: v for k, v in config["lfp_arrays"].items() if k != "enabled"}


def recorded_mb(record):
    """The size (MB) of the file a download record stands for."""
    with open(record) as handle:
        return json.load(handle)["size"] / 1e6


def extract_mem_mb(wildcards, input, attempt):
    """Extraction holds one probe's spikes and the waveform block: scale with the file."""
    return int((1024 + 1.5 * recorded_mb(input.record)) * attempt)


def analysis_mem_mb(wildcards, input, attempt):
    """The analysis holds the session's spike times (~ the spike files' size) plus one chunk."""
    spikes = sum(f.stat().st_size for f in Path(input.spikes).rglob("*.parquet"))
    return int((1024 + 1.5 * spikes / 2**20) * attempt)


# ----------------------------------------------------------------------------------------------
# The report stage (workflow/rules/report.smk).


def session_figure(name, category):
    return report(
        f"results/report/session_{{session_id}}/{name}",
        caption=f"../report/{name.rsplit('.', 1)[0]}.rst",
        category=category,
        subcategory="session {session_id}",
        labels={"session": "{session_id}", "figure": category},
    )


def report_outputs(wildcards):
    """The report's figures and tables: part of the default target."""
    sessions = [s["session_id"] for s in selected_sessions()]
    return [
        *rules.report_run.output,
        *expand(rules.report_session.output, session_id=sessions),
    ]
