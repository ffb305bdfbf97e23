import logging
import sys

from ecephys_pipeline import dandi, logs, mirrors, rma, sources

logs.to_file(snakemake.log[0])
config = snakemake.config
dandiset, version = snakemake.wildcards.dandiset, snakemake.wildcards.version
try:
    # fetched once: a published version never changes, so the kept copy is the listing
    listing = dandi.load_listing(
        dandi.api_url(mirrors.Mirrors.from_config(config).dandi_url),
        {dandiset: version},
        config["cache_dir"],
        policy=rma.RetryPolicy.from_config(config),
    )
except (dandi.DandiError, rma.RmaError, sources.SourceError) as e:
    sys.exit(
        f"error: {e}\nThe run holds every file to DANDI's published digests (dandi.verify_digests)"
        "; to verify by size, NWB content and lock file only, set dandi.verify_digests: false "
        "(and remove dandi from mirrors)"
    )
logging.info(
    "DANDI %s/%s: %d files listed with their digests -> %s",
    dandiset,
    version,
    len(listing.files),
    snakemake.output.listing,
)
