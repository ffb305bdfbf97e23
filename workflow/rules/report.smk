# The report stage: figures per session and tables for the run, made from the Parquet and the
# run's records (never from the NWB). Outputs are part of the default target (seconds per
# session), and flagged report() so that `snakemake --report report.html` shows them.


rule report_session:
    input:
        units="results/parquet/units/session_id={session_id}/part-0.parquet",
        waveforms="results/parquet/waveforms/session_id={session_id}/part-0.parquet",
        stimulus="results/parquet/stimulus_presentations/session_id={session_id}/part-0.parquet",
        spikes="results/parquet/spikes/session_id={session_id}",
        tables=expand(f"{CACHE}/{layout.TABLE}", table=layout.TABLES),
    output:
        unit_filters=session_figure("unit_filters.svg", "Unit filters"),
        quality_metrics=session_figure("quality_metrics.svg", "Quality metrics"),
        waveforms=session_figure("waveforms.svg", "Waveforms"),
        raster_psth=session_figure("raster_psth.png", "Raster and PSTH"),
        channel_maps=session_figure("channel_maps.svg", "Channel maps"),
    log:
        "logs/report/session_{session_id}.log",
    conda:
        "../envs/pipeline.yaml"
    threads: 1
    resources:
        mem_mb=2048,
        runtime=15,
    params:
        unit_filters=unit_filters(),
    script:
        "../scripts/report_session.py"


rule report_run:
    input:
        manifest="results/manifest.json",
        lock="results/ecephys.lock.json",
        selection="results/selection/selection.json",
        records=download_records,
    output:
        run=report(
            "results/report/run/run.html",
            caption="../report/run.rst",
            category="Run",
            labels={"table": "the run"},
        ),
        files=report(
            "results/report/run/files.html",
            caption="../report/files.rst",
            category="Run",
            labels={"table": "input files"},
        ),
        selection_counts=report(
            "results/report/run/selection_counts.svg",
            caption="../report/selection_counts.rst",
            category="Run",
            labels={"table": "selection counts"},
        ),
    log:
        "logs/report/run.log",
    conda:
        "../envs/pipeline.yaml"
    threads: 1
    resources:
        mem_mb=512,
        runtime=5,
    params:
        config=config,
        spec=SPEC,
    script:
        "../scripts/report_run.py"


localrules:
    report_run,
