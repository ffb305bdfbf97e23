import json
import sys

from ecephys_pipeline import layout, stale, terminal
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


def download_records(wildcards):
    """Every file of the selection: the lock file lists them all."""
    return [f"{CACHE}/{layout.record_path(f)}" for f in selected_files()]


def parquet_outputs(session_id):
    datasets = ["units", "waveforms", "stimulus_presentations", "running_speed"]
    files = [
        f"results/parquet/{d}/session_id={session_id}/part-0.parquet" for d in datasets
    ]
    return files + [f"results/parquet/spikes/session_id={session_id}"]


def all_parquet_outputs(wildcards):
    return [f for s in selected_sessions() for f in parquet_outputs(s["session_id"])]


def get_final_output(wildcards):
    return [
        "results/ecephys.lock.json",
        "results/manifest.json",
        f"{CACHE}/{layout.CACHE_MANIFEST}",
        *all_parquet_outputs(wildcards),
    ]


# ----------------------------------------------------------------------------------------------
# Parameters handed to the scripts.


def unit_filters():
    return SPEC["unit_filters"]


def download_options():
    return dict(config["download"])


def source_config():
    """What the scripts need to reach the source (a url_file is read at run time)."""
    return {"source": config["source"]}


def download_runtime(wildcards, attempt):
    """Minutes: a 3 GB file at the warehouse's slow ~0.5 MB/s takes ~100 min; more on a retry."""
    return 240 * attempt


def extract_mem_mb(wildcards, input, attempt):
    """Extraction holds one probe's spikes and the waveform block: scale with the file."""
    return int((1024 + 1.5 * input.size_mb) * attempt)


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
