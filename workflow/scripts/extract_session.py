import json
import logging
import sys
from pathlib import Path

from ecephys_pipeline import __version__, extract, logs, nwb

logs.to_file(snakemake.log[0])
with open(snakemake.input.record) as handle:
    record = json.load(handle)
try:
    result = extract.extract_session(
        snakemake.input.nwb,
        Path(snakemake.output.units).parents[2],
        unit_filters=snakemake.params.unit_filters,
        source_sha256=record["sha256"],
        pipeline_version=__version__,
    )
except nwb.NwbError as e:
    sys.exit(
        f"error: {e}; the file passed verification, so it is not what this pipeline reads: "
        "check it against the lock file, or report it with the file's sha256"
    )
logging.info(
    "session %d (generation %s, %s): %s",
    result["session_id"],
    result["generation"],
    result["source_file"],
    ", ".join(f"{n:,} {dataset} rows" for dataset, n in result["counts"].items()),
)
