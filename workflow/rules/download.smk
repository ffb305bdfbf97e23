# NWB outputs are update(): Snakemake must never delete a downloaded (or adopted) 2 GB file
# before rerunning a job; the download script adopts what is already there and verified.


rule download_session_nwb:
    output:
        nwb=update(f"{CACHE}/{layout.SESSION_NWB}"),
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
        source=source_config(),
        options=download_options(),
        lock_file=config["lock_file"],
    script:
        "../scripts/download_nwb.py"


use rule download_session_nwb as download_lfp_nwb with:
    output:
        nwb=update(f"{CACHE}/{layout.LFP_NWB}"),
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
