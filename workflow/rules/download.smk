# The NWB file is the download engine's to place (verified, atomically) and never Snakemake's to
# delete or copy: the rule's output is the file's record beside it (update(): a rerun keeps it, so
# the engine trusts an unchanged file without hashing). Params hold only what changes the bytes
# that must be there: the pinned size and sha256, and whether the cached file still matches its
# record. Tuning options (timeouts, attempts, connections) are read from the config by the script,
# so changing them reruns nothing.


rule download_session_nwb:
    input:
        # the published digests the file is held to (none if DANDI is unused)
        listings=dandi_listings(),
    output:
        record=update(f"{CACHE}/{layout.record_path(layout.SESSION_NWB)}"),
    log:
        "logs/download/session_{session_id}.log",
    retries: 1
    conda:
        "../envs/pipeline.yaml"
    threads: 1
    resources:
        downloads=1,
        mem_mb=512,
        runtime=download_runtime,
    params:
        pinned=pinned_entry,
        cache_state=cache_state,
        lock_file=config["lock_file"],
    script:
        "../scripts/download_nwb.py"


use rule download_session_nwb as download_lfp_nwb with:
    output:
        record=update(f"{CACHE}/{layout.record_path(layout.LFP_NWB)}"),
    log:
        "logs/download/session_{session_id}_probe_{probe_id}_lfp.log",


rule write_lock:
    input:
        records=download_records,
        manifest=f"{CACHE}/{layout.CACHE_MANIFEST}",
    output:
        lock="results/ecephys.lock.json",
    log:
        "logs/download/write_lock.log",
    conda:
        "../envs/pipeline.yaml"
    threads: 1
    resources:
        mem_mb=256,
        runtime=5,
    script:
        "../scripts/write_lock.py"


localrules:
    write_lock,


if config["download_on_submit_host"]:

    localrules:
        download_session_nwb,
        download_lfp_nwb,
