from pathlib import Path

from ecephys_pipeline import __version__, analysis, logs

logs.to_file(snakemake.log[0])
options = snakemake.params.options
analysis.analyze_session(
    Path(snakemake.input.units).parents[2],
    int(snakemake.wildcards.session_id),
    bins=options["bins"],
    stimuli=options["stimuli"],
    unit_filters=options["unit_filters"],
    pipeline_version=__version__,
)
