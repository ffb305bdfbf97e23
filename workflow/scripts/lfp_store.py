import logging
import sys

from ecephys_pipeline import download, lfp, logs, nwb

logs.to_file(snakemake.log[0])
try:
    # the files behind the records, unchanged since they were verified (the LFP file pinned)
    lfp_file = download.verified_file(snakemake.input.lfp_record, expected=snakemake.params.pinned)
    session_file = download.verified_file(snakemake.input.session_record)
    lfp.convert_lfp(
        lfp_file.path,
        session_file.path,
        snakemake.output.store,
        source_sha256=lfp_file.sha256,
        **snakemake.params.options,
    )
except (download.DownloadError, nwb.NwbError) as e:
    logging.error("%s", e)
    sys.exit(1)
