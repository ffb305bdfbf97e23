import logging
import sys

from ecephys_pipeline import logs, metadata, rma, sources

logs.to_file(snakemake.log[0])
try:
    table = sources.fetch_table(
        sources.Source.from_config(snakemake.params.source),
        snakemake.wildcards.table,
        # the config's download.read_timeout_s and download.max_attempts
        policy=rma.RetryPolicy.from_config(snakemake.config),
    )
except (sources.SourceError, rma.RmaError, metadata.MetadataError) as e:
    sys.exit(f"error: {e}")
metadata.write_table_csv(table, snakemake.output.table)
logging.info(
    "%s: %d rows, %d columns -> %s",
    snakemake.wildcards.table,
    len(table),
    len(table.columns),
    snakemake.output.table,
)
