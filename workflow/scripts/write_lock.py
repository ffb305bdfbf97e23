import json
import logging
from pathlib import Path

from ecephys_pipeline import download, logs

logs.to_file(snakemake.log[0])
records = []
for path in snakemake.input.records:
    with open(path) as handle:
        records.append(json.load(handle))
download.write_lock(records, snakemake.output.lock, cache_dir=Path(snakemake.input.manifest).parent)
logging.info(
    "lock file %s: %d files, %d bytes, each verified (size, sha256)",
    snakemake.output.lock,
    len(records),
    sum(r["size"] for r in records),
)
