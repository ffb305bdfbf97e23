"""RMA rows -> the four metadata tables, exactly as AllenSDK's cache writes them.

``EcephysProjectCache`` writes ``df.to_csv(path)`` of the warehouse API's post-processed output
(allen-warehouse.md §2), so ``sessions.csv``, ``probes.csv``, ``channels.csv`` and ``units.csv``
written here are the files an AllenSDK user has in their cache directory, and the directory with
:func:`write_cache_manifest` is a cache ``EcephysProjectCache(manifest=...)`` opens.
"""

from __future__ import annotations

import ast
import json
from pathlib import Path

import pandas as pd

from . import atomic, layout, rma

# The manifest EcephysProjectCache (AllenSDK 2.16.2, MANIFEST_VERSION 0.3.0) writes.
MANIFEST_VERSION = "0.3.0"
_MANIFEST_PATHS = (
    ("BASEDIR", "dir", ".", None),
    ("sessions", "file", "sessions.csv", "BASEDIR"),
    ("probes", "file", "probes.csv", "BASEDIR"),
    ("channels", "file", "channels.csv", "BASEDIR"),
    ("units", "file", "units.csv", "BASEDIR"),
    ("session_data", "dir", "session_%d", "BASEDIR"),
    ("session_nwb", "file", "session_%d.nwb", "session_data"),
    ("session_analysis_metrics", "file", "session_%d_analysis_metrics.csv", "session_data"),
    ("probe_lfp_nwb", "file", "probe_%d_lfp.nwb", "session_data"),
    ("movie_dir", "dir", "natural_movie_templates", "BASEDIR"),
    ("typewise_analysis_metrics", "file", "%s_analysis_metrics.csv", "BASEDIR"),
    ("natural_movie", "file", "natural_movie_%d.h5", "movie_dir"),
    ("natural_scene_dir", "dir", "natural_scene_templates", "BASEDIR"),
    ("natural_scene", "file", "natural_scene_%d.tiff", "natural_scene_dir"),
)


def cache_manifest() -> dict:
    entries: list[dict] = [{"type": "manifest_version", "value": MANIFEST_VERSION}]
    for key, kind, spec, parent in _MANIFEST_PATHS:
        entry = {"key": key, "type": kind, "spec": spec}
        if parent is not None:
            entry["parent_key"] = parent
        entries.append(entry)
    return {"manifest": entries}


def infer_column_types(df: pd.DataFrame) -> pd.DataFrame:
    """AllenSDK's ``infer_column_types``: literal-eval each column's cells; keep it if one fails."""
    df = df.copy()
    for column in df.columns:
        try:
            df[column] = df[column].apply(ast.literal_eval)
        except (ValueError, SyntaxError):
            continue
    return df.infer_objects()


def _frame(rows: list[dict]) -> pd.DataFrame:
    if not rows:
        raise ValueError("the warehouse returned no rows for this table")
    return infer_column_types(pd.DataFrame(rows)).set_index("id")


def sessions_table(rows: list[dict]) -> pd.DataFrame:
    """``EcephysProjectWarehouseApi.get_sessions`` post-processing."""
    df = _frame(rows)
    specimens = df["specimen"]
    df["age_in_days"] = [s["donor"]["age"]["days"] for s in specimens]
    df["sex"] = [s["donor"]["sex"] for s in specimens]
    df["genotype"] = [s["donor"]["full_genotype"] or "wt" for s in specimens]
    df["has_nwb"] = [
        any(w["well_known_file_type"]["name"] == "EcephysNwb" for w in files)
        for files in df["well_known_files"]
    ]
    df = df.drop(columns=["specimen", "fail_eye_tracking", "well_known_files"])
    return df.rename(columns={"stimulus_name": "session_type"})


def probes_table(rows: list[dict]) -> pd.DataFrame:
    return _frame(rows).rename(columns={"use_lfp_data": "has_lfp_data"})


def channels_table(rows: list[dict]) -> pd.DataFrame:
    return _frame(rows)


def units_table(rows: list[dict]) -> pd.DataFrame:
    return _frame(rows)


PROCESSORS = {
    "sessions": sessions_table,
    "probes": probes_table,
    "channels": channels_table,
    "units": units_table,
}


def write_table_csv(df: pd.DataFrame, path: Path) -> None:
    """``df.to_csv(path)`` as AllenSDK does, but never a half-written file at ``path``."""
    atomic.write_text(Path(path), df.to_csv(lineterminator="\n"))


def write_cache_manifest(cache_dir: Path) -> Path:
    """The cache's ``manifest.json``, byte-identical to what AllenSDK 2.16.2 writes."""
    path = Path(cache_dir) / "manifest.json"
    atomic.write_text(path, json.dumps(cache_manifest(), indent=2))
    return path


def fetch_table(table: str, base_url: str, **kwargs) -> pd.DataFrame:
    """Fetch one of the four tables from an RMA warehouse and post-process it like AllenSDK."""
    if table not in PROCESSORS:
        raise ValueError(f"unknown table {table!r}; expected one of {', '.join(layout.TABLES)}")
    rows = rma.fetch_rows(base_url, rma.TABLE_QUERIES[table], **kwargs)
    return PROCESSORS[table](rows)


def read_table(path: Path) -> pd.DataFrame:
    """Read a cached table back as AllenSDK does (``pd.read_csv(path, index_col="id")``)."""
    return pd.read_csv(path, index_col="id")
