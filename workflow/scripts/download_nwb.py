import logging
import sys

from ecephys_pipeline import layout, logs, mirrors, sources

logs.to_file(snakemake.log[0])
config = snakemake.config
probe_id = snakemake.wildcards.get("probe_id")
try:
    f = mirrors.Fetching.from_config(config)
    mirrors.fetch_nwb(
        f.mirrors,
        layout.nwb_of_record(snakemake.output.record),
        int(snakemake.wildcards.session_id),
        int(probe_id) if probe_id else None,
        cache_dir=config["cache_dir"],
        lock_file=snakemake.params.lock_file,
        options=f.options,
        policy=f.policy,
        listing=f.listing,
    )
except sources.EXPECTED_ERRORS as e:
    logging.error("%s", e)
    sys.exit(1)
