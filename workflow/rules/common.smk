import json

from ecephys_pipeline import demo, selection

CACHE = config["cache_dir"]
TABLES = ["sessions", "probes", "channels", "units"]
SPEC = selection.load_spec(config["selection"])
DEMO = config.get("demo", {})


wildcard_constraints:
    session_id=r"\d+",
    probe_id=r"\d+",
    table="|".join(TABLES),


# ----------------------------------------------------------------------------------------------
# The offline demo: the workflow prepares the synthetic dataset and runs the fake warehouse on a
# free loopback port for the duration of the run (the jobs read its address from a file).


def start_demo_services():
    if DEMO.get("enabled"):
        demo.ensure_dataset(
            DEMO["dataset_dir"],
            seed=DEMO["seed"],
            sessions=DEMO["sessions"],
            realistic=DEMO["realistic"],
        )
        url = demo.start(DEMO["dataset_dir"])
        logger.info(f"demo: fake warehouse serving {DEMO['dataset_dir']} at {url}")


def stop_demo_services():
    if DEMO.get("enabled"):
        demo.stop(DEMO["dataset_dir"])


onstart:
    start_demo_services()


onsuccess:
    stop_demo_services()


onerror:
    stop_demo_services()


# ----------------------------------------------------------------------------------------------
# Targets from the selection checkpoint.


def selected_sessions():
    """The selection artifact (results/selection/selection.json) once the checkpoint ran."""
    with open(checkpoints.select_sessions.get().output.selection) as handle:
        return json.load(handle)["sessions"]


def lfp_downloads():
    return [
        f"{CACHE}/session_{s['session_id']}/probe_{p['probe_id']}_lfp.nwb"
        for s in selected_sessions()
        for p in s["probes"]
        if p["download_lfp"]
    ]


def download_records(wildcards):
    """Every file of the selection: the lock file lists them all."""
    session_files = [
        f"{CACHE}/session_{s['session_id']}/session_{s['session_id']}.nwb"
        for s in selected_sessions()
    ]
    return [f"{f}.download.json" for f in session_files + lfp_downloads()]


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
        f"{CACHE}/manifest.json",
        *all_parquet_outputs(wildcards),
    ]


# ----------------------------------------------------------------------------------------------
# Parameters handed to the scripts.


def unit_filters():
    return SPEC["unit_filters"]


def download_options():
    return dict(config["download"])


def source_config():
    """What the scripts need to reach the source (the demo's address is read at run time)."""
    return {"source": config["source"], "demo": DEMO}


def download_runtime(wildcards, attempt):
    """Minutes: a 3 GB file at the warehouse's slow ~0.5 MB/s takes ~100 min; more on a retry."""
    return 240 * attempt


def extract_mem_mb(wildcards, input, attempt):
    """Extraction holds one probe's spikes and the waveform block: scale with the file."""
    return int((1024 + 1.5 * input.size_mb) * attempt)
