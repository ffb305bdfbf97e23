from pathlib import Path

from ecephys_pipeline import download, logs, sources

logs.to_file(snakemake.log[0])
probe_id = snakemake.wildcards.get("probe_id")
sources.fetch_nwb(
    sources.Source.from_config(snakemake.params.source),
    snakemake.output.nwb,
    int(snakemake.wildcards.session_id),
    int(probe_id) if probe_id else None,
    cache_dir=Path(snakemake.output.nwb).parents[1],
    lock_file=snakemake.params.lock_file,
    options=download.Options.from_config(snakemake.params.options),
)
