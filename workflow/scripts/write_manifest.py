import logging
from pathlib import Path

from ecephys_pipeline import logs, provenance

logs.to_file(snakemake.log[0])
outputs = []
for path in map(Path, snakemake.input.parquet):
    outputs += sorted(path.rglob("*.parquet")) if path.is_dir() else [path]
manifest = provenance.run_manifest(
    config=snakemake.params.config,
    spec=snakemake.params.spec,
    lock_path=snakemake.input.lock,
    selection_path=snakemake.input.selection,
    outputs=outputs,
    root=Path("."),
)
provenance.write_run_manifest(snakemake.output.manifest, manifest)
logging.info(
    "run manifest %s: pipeline %s, %d inputs, %d outputs",
    snakemake.output.manifest,
    manifest["pipeline_version"],
    len(manifest["inputs"]),
    len(manifest["outputs"]),
)
