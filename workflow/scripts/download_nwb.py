import logging
import sys

from ecephys_pipeline import download, layout, logs, mirrors, rma, sources

logs.to_file(snakemake.log[0])
config = snakemake.config
probe_id = snakemake.wildcards.get("probe_id")
try:
    mirror_list = mirrors.Mirrors.from_config(config)
    policy = rma.RetryPolicy.from_config(config)
    mirrors.fetch_nwb(
        mirror_list,
        layout.nwb_of_record(snakemake.output.record),
        int(snakemake.wildcards.session_id),
        int(probe_id) if probe_id else None,
        cache_dir=config["cache_dir"],
        lock_file=snakemake.params.lock_file,
        options=download.Options.from_config(config["download"]),
        policy=policy,
        listing=mirror_list.listing(config["cache_dir"], policy=policy),
    )
except sources.EXPECTED_ERRORS as e:
    logging.error("%s", e)
    sys.exit(1)
