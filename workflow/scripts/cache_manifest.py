import logging
from pathlib import Path

from ecephys_pipeline import logs, metadata

logs.to_file(snakemake.log[0])
path = metadata.write_cache_manifest(Path(snakemake.output.manifest).parent)
logging.info("wrote the AllenSDK cache manifest %s", path)
