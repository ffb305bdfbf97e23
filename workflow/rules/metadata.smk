rule fetch_metadata_table:
    output:
        table=f"{CACHE}/{{table}}.csv",
    log:
        "logs/metadata/{table}.log",
    params:
        source=source_config(),
    resources:
        mem_mb=2048,
        runtime=60,
    conda:
        "../../envs/pipeline.yaml"
    script:
        "../scripts/fetch_metadata_table.py"


rule cache_manifest:
    output:
        manifest=f"{CACHE}/manifest.json",
    log:
        "logs/metadata/cache_manifest.log",
    resources:
        mem_mb=256,
        runtime=5,
    conda:
        "../../envs/pipeline.yaml"
    script:
        "../scripts/cache_manifest.py"


localrules:
    fetch_metadata_table,
    cache_manifest,
