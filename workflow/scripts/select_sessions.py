import logging
import sys
from pathlib import Path

import requests

from ecephys_pipeline import dandi, download, logs, metadata, mirrors, plan, rma, selection, sources

logs.to_file(snakemake.log[0])
cache_dir = Path(snakemake.input.tables[0]).parent


def fail(error):
    """One line in the log (Snakemake shows it), no traceback, the fix named."""
    sys.exit(plan.explain(error, snakemake.config))


try:
    spec = selection.load_spec(snakemake.input.spec)
    tables = selection.load_tables(cache_dir)
    chosen = selection.resolve(spec, tables)
except (selection.SelectionError, ValueError) as e:  # SpecError, MetadataError
    fail(e)
chosen.to_json(snakemake.output.selection)
resolved = chosen.to_dict()
logging.info(
    "selected %d sessions, %d probes (%s)",
    len(resolved["sessions"]),
    sum(len(s["probes"]) for s in resolved["sessions"]),
    ", ".join(f"{c['filter']}: {c['sessions_left']}" for c in resolved["counts"]),
)
settings = snakemake.config["download"]  # not params: they decide whether, not what
if settings["preflight"]:
    try:
        config = snakemake.config  # mirrors decide where from, not what: no params
        f = mirrors.Fetching.from_config(config)
        the_plan = plan.make_plan(
            resolved,
            f.mirrors,
            cache_dir,
            listing=f.listing,
            options=f.options,
            policy=f.policy,
        )
        logging.info("plan:\n%s", the_plan.summary(resolved))
        plan.check_space(the_plan, reserve_bytes=int(settings["reserve_free_gb"] * 1e9))
    except (
        sources.SourceError,
        rma.RmaError,
        download.DownloadError,
        plan.InsufficientSpaceError,
        metadata.MetadataError,
        dandi.DandiError,
        requests.RequestException,
    ) as e:
        Path(snakemake.output.selection).unlink()  # no selection, no download
        fail(e)
    the_plan.to_json(snakemake.output.plan)
else:
    Path(snakemake.output.plan).write_text('{"preflight": false}\n')
