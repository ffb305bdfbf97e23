checkpoint select_sessions:
    input:
        tables=expand(f"{CACHE}/{{table}}.csv", table=TABLES),
        spec=config["selection"],
    output:
        selection="results/selection/selection.json",
    log:
        "logs/select/select_sessions.log",
    resources:
        mem_mb=4096,
        runtime=10,
    conda:
        "../../envs/pipeline.yaml"
    script:
        "../scripts/select_sessions.py"


localrules:
    select_sessions,
