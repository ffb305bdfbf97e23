import json
from pathlib import Path

from ecephys_pipeline import download, logs

logs.to_file(snakemake.log[0])
records = []
for path in snakemake.input.records:
    with open(path) as handle:
        records.append(json.load(handle))
download.write_lock(records, snakemake.output.lock, cache_dir=Path(snakemake.input.manifest).parent)
