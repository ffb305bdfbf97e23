import json
import logging
from pathlib import Path

from ecephys_pipeline import __version__, extract, logs

logs.to_file(snakemake.log[0])
with open(snakemake.input.record) as handle:
    record = json.load(handle)
result = extract.extract_session(
    snakemake.input.nwb,
    Path(snakemake.output.units).parents[2],
    unit_filters=snakemake.params.unit_filters,
    source_sha256=record["sha256"],
    pipeline_version=__version__,
)
logging.info(
    "session %d (generation %s, %s): %s",
    result["session_id"],
    result["generation"],
    result["source_file"],
    ", ".join(f"{n:,} {dataset} rows" for dataset, n in result["counts"].items()),
)
