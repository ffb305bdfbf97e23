"""RMA rows -> the four metadata tables, exactly as AllenSDK's cache writes them, and the checks
every table passes before the pipeline uses it.

``EcephysProjectCache`` writes ``df.to_csv(path)`` of the warehouse API's post-processed output
(allen-warehouse.md §2), so ``sessions.csv``, ``probes.csv``, ``channels.csv`` and ``units.csv``
written here are the files an AllenSDK user has in their cache directory, and the directory with
:func:`write_cache_manifest` is a cache ``EcephysProjectCache(manifest=...)`` opens.

Whatever its origin (the warehouse, the bucket, a local cache, our own cache), a table is refused
with one :class:`MetadataError` line naming the table or file, the row and the fix when an id is
not a positive integer (ids become paths and Snakemake wildcards), a session row lacks the nested
fields AllenSDK reads, a column the pipeline needs is missing, or the file is not a table at all.
"""

from __future__ import annotations

import ast
import io
import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from . import atomic, layout, rma


class MetadataError(ValueError):
    """A metadata table cannot be used; the message names the table or file, the row and the fix."""


# Columns every table must have for the pipeline (the selection filters and joins on them).
REQUIRED_COLUMNS = {
    "sessions": ("session_type",),
    "probes": ("ecephys_session_id", "name"),
    "channels": ("ecephys_probe_id", "ecephys_structure_acronym"),
    "units": ("ecephys_channel_id", "amplitude_cutoff", "presence_ratio", "isi_violations"),
}
# Columns holding the id of the parent row (units -> channels -> probes -> sessions).
PARENT_ID = {
    "probes": "ecephys_session_id",
    "channels": "ecephys_probe_id",
    "units": "ecephys_channel_id",
}
# What sessions_table reads from each raw session row (AllenSDK's get_sessions post-processing).
SESSION_FIELDS = (
    "specimen.donor.age.days",
    "specimen.donor.sex",
    "specimen.donor.full_genotype",
    "well_known_files",
)

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


SOURCE_FIX = "the source is not the Allen service or serves a corrupt table: check source.url"


def _plain(value):
    return value.item() if isinstance(value, np.generic) else value


def _is_id(value) -> bool:
    """A positive integer (an integral float too: pandas reads an int column with gaps so)."""
    value = _plain(value)
    if isinstance(value, bool):
        return False
    if isinstance(value, float):
        return value.is_integer() and value > 0
    return isinstance(value, int) and value > 0


def _first_bad_id(values: pd.Index | pd.Series, *, allow_missing: bool) -> int | None:
    """Position of the first value that is not a positive integer, or None."""
    array = np.asarray(values)
    if array.dtype.kind in "iu":
        bad = np.flatnonzero(array <= 0)
        return int(bad[0]) if bad.size else None
    for position, value in enumerate(array):
        if allow_missing and pd.isna(value):
            continue
        if not _is_id(value):
            return position
    return None


def check_table(table: str, df: pd.DataFrame, *, where: str, fix: str) -> pd.DataFrame:
    """Refuse a table the pipeline cannot use, in one line: ``{where} has ...; {fix}``.

    ``where`` names the table ("the source's units table", a file path), ``fix`` says what to do.
    """
    missing = [c for c in REQUIRED_COLUMNS.get(table, ()) if c not in df.columns]
    if missing:
        raise MetadataError(
            f"{where} has no column {', '.join(map(repr, missing))} (columns: "
            f"{', '.join(map(str, df.columns[:8]))}{', ...' if len(df.columns) > 8 else ''}), "
            f"so it is not AllenSDK's {table} table of this dataset; {fix}"
        )
    bad = _first_bad_id(df.index, allow_missing=False)
    if bad is not None:
        raise MetadataError(
            f"{where} has a row with id {_plain(df.index[bad])!r} (row {bad + 1} of {len(df)}): "
            f"ids must be positive integers; {fix}"
        )
    parent = PARENT_ID.get(table)
    if parent is not None:
        bad = _first_bad_id(df[parent], allow_missing=True)
        if bad is not None:
            raise MetadataError(
                f"{where} has a row (id {_plain(df.index[bad])}) with {parent} "
                f"{_plain(df[parent].iloc[bad])!r}: ids must be positive integers; {fix}"
            )
    return df


def _frame(rows: list[dict], where: str) -> pd.DataFrame:
    if not rows:
        raise MetadataError(f"{where} is empty; {SOURCE_FIX}")
    df = infer_column_types(pd.DataFrame(rows))
    if "id" not in df.columns:
        raise MetadataError(f"{where} has rows without an 'id'; {SOURCE_FIX}")
    return df.set_index("id")


def _missing_field(row: dict, fields: Sequence[str]) -> str | None:
    """The first dotted field (up to the key that is absent) the nested row does not have."""
    for field in fields:
        node, keys = row, field.split(".")
        for depth, key in enumerate(keys):
            if not isinstance(node, dict) or key not in node:
                return ".".join(keys[: depth + 1])
            node = node[key]
    return None


def _is_nwb_file(entry) -> bool:
    kind = entry.get("well_known_file_type") if isinstance(entry, dict) else None
    return isinstance(kind, dict) and kind.get("name") == "EcephysNwb"


def sessions_table(rows: list[dict], where: str = "the source's sessions table") -> pd.DataFrame:
    """``EcephysProjectWarehouseApi.get_sessions`` post-processing."""
    df = _frame(rows, where)
    for column in ("specimen", "well_known_files"):
        if column not in df.columns:
            df[column] = None
    for sid, specimen, files in zip(df.index, df["specimen"], df["well_known_files"], strict=True):
        row = {"specimen": specimen, "well_known_files": files}
        missing = _missing_field(row, SESSION_FIELDS)
        if missing is None and not isinstance(files, list):
            missing = "well_known_files"
        if missing is not None:
            raise MetadataError(
                f"{where} has a row (id {_plain(sid)}) without {missing}, which AllenSDK's "
                f"sessions table is made from; {SOURCE_FIX}"
            )
    specimens = df["specimen"]
    df["age_in_days"] = [s["donor"]["age"]["days"] for s in specimens]
    df["sex"] = [s["donor"]["sex"] for s in specimens]
    df["genotype"] = [s["donor"]["full_genotype"] or "wt" for s in specimens]
    df["has_nwb"] = [any(_is_nwb_file(w) for w in files) for files in df["well_known_files"]]
    df = df.drop(columns=["specimen", "fail_eye_tracking", "well_known_files"], errors="ignore")
    return df.rename(columns={"stimulus_name": "session_type"})


def probes_table(rows: list[dict], where: str = "the source's probes table") -> pd.DataFrame:
    return _frame(rows, where).rename(columns={"use_lfp_data": "has_lfp_data"})


def channels_table(rows: list[dict], where: str = "the source's channels table") -> pd.DataFrame:
    return _frame(rows, where)


def units_table(rows: list[dict], where: str = "the source's units table") -> pd.DataFrame:
    return _frame(rows, where)


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
    where = f"the source's {table} table"
    return check_table(table, PROCESSORS[table](rows, where), where=where, fix=SOURCE_FIX)


def parse_table_csv(data: bytes | Path, table: str, *, where: str, fix: str) -> pd.DataFrame:
    """A table CSV read as AllenSDK reads it (``pd.read_csv(path, index_col="id")``), checked."""
    source = io.BytesIO(data) if isinstance(data, bytes) else data
    try:
        df = pd.read_csv(source)
    except pd.errors.EmptyDataError:
        raise MetadataError(f"{where} is empty; {fix}") from None
    except (ValueError, UnicodeDecodeError) as exc:  # ParserError is a ValueError
        reason = str(exc).strip().splitlines()[0][:120]
        raise MetadataError(f"{where} is not a CSV table ({reason}); {fix}") from None
    if "id" not in df.columns:
        raise MetadataError(f"{where} has no 'id' column, so it is not a {table} table; {fix}")
    return check_table(table, df.set_index("id"), where=where, fix=fix)


def read_table(path: Path, *, fix: str | None = None) -> pd.DataFrame:
    """Read a cached table back as AllenSDK does (``pd.read_csv(path, index_col="id")``), or
    refuse it in one line naming the file and the fix (by default: delete the cached tables)."""
    path = Path(path)
    fix = fix or f"delete it (or all cached tables: rm {path.parent}/*.csv) to fetch them again"
    return parse_table_csv(path, path.stem, where=str(path), fix=fix)
