import json
import logging
from pathlib import Path

from ecephys_pipeline import atomic, logs, report

logs.to_file(snakemake.log[0])


def load(path):
    return json.loads(Path(path).read_text())


lock = load(snakemake.input.lock)
selection = load(snakemake.input.selection)
records = [load(p) for p in snakemake.input.records]
atomic.write_text(
    snakemake.output.run,
    report.run_html(
        load(snakemake.input.manifest), selection, snakemake.params.config, snakemake.params.spec
    ),
)
atomic.write_text(snakemake.output.files, report.files_html(lock, records, snakemake.params.config))
report.save(report.selection_counts_figure(selection["counts"]), snakemake.output.selection_counts)
logging.info(
    "run report: %d input files (%d bytes), %d selection steps, %d sessions",
    len(lock["files"]),
    sum(e["size"] for e in lock["files"].values()),
    len(selection["counts"]),
    len(selection["sessions"]),
)
