import logging
import sys
from pathlib import Path

from ecephys_pipeline import __version__, download, extract, logs, nwb

logs.to_file(snakemake.log[0])
try:
    # the file behind the record, unchanged since it was verified (and the pinned one)
    record = download.verified_file(snakemake.input.record, expected=snakemake.params.pinned)
    extract.extract_session(
        record.path,
        Path(snakemake.output.units).parents[2],
        unit_filters=snakemake.params.unit_filters,
        source_sha256=record.sha256,
        pipeline_version=__version__,
    )
except (download.DownloadError, nwb.NwbError) as e:
    logging.error("%s", e)
    sys.exit(1)
