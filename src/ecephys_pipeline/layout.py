"""The cache layout: where every file of the dataset lives, relative to ``cache_dir``.

It is AllenSDK's ``EcephysProjectCache`` layout (docs/allen-warehouse.md §3), which the public
bucket mirrors under its prefix, so a cache written here is one AllenSDK opens and a local source
is read with the same relative paths. The templates are Snakemake wildcard patterns as they stand
(``{session_id}``, ``{probe_id}``, ``{table}``), so the rules, the plan and the sources share one
definition.
"""

from __future__ import annotations

import os
from pathlib import Path

TABLES = ("sessions", "probes", "channels", "units")
"""The four metadata tables, in the order AllenSDK's cache lists them."""

TABLE = "{table}.csv"
CACHE_MANIFEST = "manifest.json"
SESSION_NWB = "session_{session_id}/session_{session_id}.nwb"
LFP_NWB = "session_{session_id}/probe_{probe_id}_lfp.nwb"
RECORD_SUFFIX = ".download.json"
# the DANDI Archive's listing of one published dandiset version, kept (docs/dandi.md §2)
DANDI_DIR = "dandi"
DANDI_LISTING = DANDI_DIR + "/{dandiset}_{version}.json"
"""A verified file's record sits beside it: ``<file>.download.json``."""


def table_path(table: str) -> str:
    return TABLE.format(table=table)


def nwb_path(session_id: int, probe_id: int | None = None) -> str:
    """A session NWB's (``probe_id=None``) or a probe's LFP NWB's path inside the cache."""
    if probe_id is None:
        return SESSION_NWB.format(session_id=int(session_id))
    return LFP_NWB.format(session_id=int(session_id), probe_id=int(probe_id))


def record_path(nwb_relative_path: str) -> str:
    return nwb_relative_path + RECORD_SUFFIX


def nwb_of_record(record: str | os.PathLike) -> Path:
    """The file a record stands beside (``<file>.download.json`` -> ``<file>``)."""
    text = str(record)
    if not text.endswith(RECORD_SUFFIX):
        raise ValueError(f"{record} is not a download record (*{RECORD_SUFFIX})")
    return Path(text.removesuffix(RECORD_SUFFIX))
