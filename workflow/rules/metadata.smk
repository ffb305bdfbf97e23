rule fetch_metadata_table:
    output:
        table=f"{CACHE}/{layout.TABLE}",
    log:
        "logs/metadata/{table}.log",
    conda:
        "../envs/pipeline.yaml"
    threads: 1
    resources:
        mem_mb=2048,
        runtime=60,
    params:
        source=source_config(),
    script:
        "../scripts/fetch_metadata_table.py"


rule cache_manifest:
    output:
        manifest=f"{CACHE}/{layout.CACHE_MANIFEST}",
    log:
        "logs/metadata/cache_manifest.log",
    conda:
        "../envs/pipeline.yaml"
    threads: 1
    resources:
        mem_mb=256,
        runtime=5,
    script:
        "../scripts/cache_manifest.py"


localrules:
    fetch_metadata_table,
    cache_manifest,
