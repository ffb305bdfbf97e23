rule extract_session:
    input:
        record=f"{CACHE}/{layout.record_path(layout.SESSION_NWB)}",
    output:
        units="results/parquet/units/session_id={session_id}/part-0.parquet",
        waveforms="results/parquet/waveforms/session_id={session_id}/part-0.parquet",
        stimulus_presentations="results/parquet/stimulus_presentations/session_id={session_id}/part-0.parquet",
        running_speed="results/parquet/running_speed/session_id={session_id}/part-0.parquet",
        spikes=directory("results/parquet/spikes/session_id={session_id}"),
    log:
        "logs/extract/session_{session_id}.log",
    conda:
        "../envs/pipeline.yaml"
    threads: 1
    resources:
        mem_mb=extract_mem_mb,
        runtime=60,
    params:
        unit_filters=unit_filters(),
        pinned=pinned_entry,
    script:
        "../scripts/extract_session.py"


rule write_manifest:
    input:
        lock="results/ecephys.lock.json",
        selection="results/selection/selection.json",
        parquet=all_parquet_outputs,
    output:
        manifest="results/manifest.json",
    log:
        "logs/extract/write_manifest.log",
    conda:
        "../envs/pipeline.yaml"
    threads: 1
    resources:
        mem_mb=512,
        runtime=10,
    params:
        config=config,
        spec=SPEC,
    script:
        "../scripts/write_manifest.py"


localrules:
    write_manifest,
