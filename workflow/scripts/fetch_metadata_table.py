from ecephys_pipeline import logs, metadata, sources

logs.to_file(snakemake.log[0])
source = sources.Source.from_config(snakemake.params.source)
table = sources.fetch_table(source, snakemake.wildcards.table)
metadata.write_table_csv(table, snakemake.output.table)
