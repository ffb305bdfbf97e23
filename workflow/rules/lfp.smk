# Per-probe LFP NWB -> chunked Zarr store (ecephys_pipeline.lfp), when lfp_arrays.enabled.


rule lfp_store:
    input:
        lfp_record=f"{CACHE}/{layout.record_path(layout.LFP_NWB)}",
        session_record=f"{CACHE}/{layout.record_path(layout.SESSION_NWB)}",
    output:
        store=directory(LFP_STORE),
    log:
        "logs/lfp/session_{session_id}_probe_{probe_id}.log",
    conda:
        "../envs/pipeline.yaml"
    threads: 1
    resources:
        # a few blocks of time_chunk x channels float32 + the HDF5 chunk cache + libraries
        mem_mb=2048,
        runtime=120,
    params:
        options=lfp_options(),
        pinned=pinned_entry,
    script:
        "../scripts/lfp_store.py"
