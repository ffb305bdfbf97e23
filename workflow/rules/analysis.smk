rule analyze_session:
    input:
        units="results/parquet/units/session_id={session_id}/part-0.parquet",
        stimulus_presentations="results/parquet/stimulus_presentations/session_id={session_id}/part-0.parquet",
        running_speed="results/parquet/running_speed/session_id={session_id}/part-0.parquet",
        spikes="results/parquet/spikes/session_id={session_id}",
    output:
        stimulus_conditions="results/parquet/stimulus_conditions/session_id={session_id}/part-0.parquet",
        presentation_spike_counts="results/parquet/presentation_spike_counts/session_id={session_id}/part-0.parquet",
        presentation_spike_times="results/parquet/presentation_spike_times/session_id={session_id}/part-0.parquet",
        condition_spike_statistics="results/parquet/condition_spike_statistics/session_id={session_id}/part-0.parquet",
        presentation_running_speed="results/parquet/presentation_running_speed/session_id={session_id}/part-0.parquet",
    log:
        "logs/analysis/session_{session_id}.log",
    conda:
        "../envs/pipeline.yaml"
    threads: 1
    resources:
        mem_mb=analysis_mem_mb,
        runtime=60,
    params:
        options=analysis_options(),
    script:
        "../scripts/analyze_session.py"
