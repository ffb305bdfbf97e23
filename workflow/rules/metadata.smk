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


rule dandi_listing:
    output:
        listing=f"{CACHE}/{layout.DANDI_LISTING}",
    log:
        "logs/metadata/dandi_{dandiset}_{version}.log",
    conda:
        "../envs/pipeline.yaml"
    threads: 1
    resources:
        mem_mb=512,
        runtime=10,
    script:
        "../scripts/fetch_dandi_listing.py"


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
    dandi_listing,
    cache_manifest,
