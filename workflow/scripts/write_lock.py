import json
from pathlib import Path

from ecephys_pipeline import lockfile, logs

logs.to_file(snakemake.log[0])
records = []
for path in snakemake.input.records:
    with open(path) as handle:
        records.append(json.load(handle))
cache_dir = Path(snakemake.input.manifest).parent
lockfile.write_lock(records, snakemake.output.lock, cache_dir=cache_dir)
