import logging
import sys
from pathlib import Path

from ecephys_pipeline import layout, logs, metadata, report

logs.to_file(snakemake.log[0])
session_id = int(snakemake.wildcards.session_id)
try:
    cache_dir = Path(snakemake.input.tables[0]).parent
    tables = {t: metadata.read_table(cache_dir / layout.table_path(t)) for t in layout.TABLES}
    data = report.read_session(
        units=Path(snakemake.input.units),
        waveforms=Path(snakemake.input.waveforms),
        spikes=Path(snakemake.input.spikes),
        stimulus=Path(snakemake.input.stimulus),
    )
except (metadata.MetadataError, OSError) as e:
    sys.exit(f"error: {e}")
logging.info(
    "session %d: %d units, %d peak-channel waveforms, %d spikes of the raster units, "
    "%d stimulus presentations",
    session_id,
    len(data["units"]),
    len(data["waveforms"]),
    len(data["spikes"]),
    len(data["stimulus"]),
)
figures = report.session_figures(
    session_id=session_id, tables=tables, filters=snakemake.params.unit_filters, **data
)
for name, figure in figures.items():
    path = report.save(figure, getattr(snakemake.output, name))
    logging.info("wrote %s (%d bytes)", path, path.stat().st_size)
