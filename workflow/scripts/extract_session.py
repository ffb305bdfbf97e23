import logging
import sys
from pathlib import Path

from ecephys_pipeline import __version__, download, extract, logs, nwb

logs.to_file(snakemake.log[0])
try:
    # the file behind the record, unchanged since it was verified (and the pinned one)
    record = download.verified_file(snakemake.input.record, expected=snakemake.params.pinned)
except download.DownloadError as e:
    sys.exit(f"error: {e}")
try:
    result = extract.extract_session(
        record.path,
        Path(snakemake.output.units).parents[2],
        unit_filters=snakemake.params.unit_filters,
        source_sha256=record.sha256,
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
