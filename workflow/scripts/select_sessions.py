import logging
from pathlib import Path

from ecephys_pipeline import logs, plan, selection, sources

logs.to_file(snakemake.log[0])
spec = selection.load_spec(snakemake.input.spec)
cache_dir = Path(snakemake.input.tables[0]).parent
tables = selection.load_tables(cache_dir)
chosen = selection.resolve(spec, tables)
chosen.to_json(snakemake.output.selection)
resolved = chosen.to_dict()
settings = snakemake.config["download"]
if settings["preflight"]:
    source = sources.Source.from_config(snakemake.params.source)
    the_plan = plan.make_plan(resolved, source, cache_dir)
    logging.info("plan:\n%s", the_plan.summary(resolved))
    try:
        plan.check_space(the_plan, reserve_bytes=int(settings["reserve_free_gb"] * 1e9))
    except Exception:
        Path(snakemake.output.selection).unlink()  # no selection, no download
        raise
    the_plan.to_json(snakemake.output.plan)
else:
    Path(snakemake.output.plan).write_text('{"preflight": false}\n')
