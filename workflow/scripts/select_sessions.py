from pathlib import Path

from ecephys_pipeline import logs, selection

logs.to_file(snakemake.log[0])
spec = selection.load_spec(snakemake.input.spec)
tables = selection.load_tables(Path(snakemake.input.tables[0]).parent)
selection.resolve(spec, tables).to_json(snakemake.output.selection)
