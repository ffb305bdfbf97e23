checkpoint select_sessions:
    input:
        tables=expand(f"{CACHE}/{layout.TABLE}", table=layout.TABLES),
        spec=config["selection"],
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
    params:
        source=source_config(),
        preflight=config["download"]["preflight"],
        reserve_free_gb=config["download"]["reserve_free_gb"],
    script:
        "../scripts/select_sessions.py"


localrules:
    select_sessions,
