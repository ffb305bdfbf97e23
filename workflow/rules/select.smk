checkpoint select_sessions:
    input:
        tables=expand(f"{CACHE}/{layout.TABLE}", table=layout.TABLES),
        spec=config["selection"],
        listings=dandi_listings(),
    output:
        selection="results/selection/selection.json",
        plan="results/selection/plan.json",
    log:
        "logs/select/select_sessions.log",
    conda:
        "../envs/pipeline.yaml"
    threads: 1
    resources:
        mem_mb=4096,
        runtime=10,
    # download.preflight, reserve_free_gb and the mirrors are read from the config by the
    # script: they decide whether the run may start, not what it produces: nothing reruns
    script:
        "../scripts/select_sessions.py"


localrules:
    select_sessions,
