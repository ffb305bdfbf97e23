"""A validated selection spec + the metadata tables -> the sessions and probes to download.

The spec language is documented in ``config/README.md`` ("Selection spec"); reading and
validating a spec is :func:`ecephys_pipeline.config.load_spec` (re-exported here, with
:class:`SpecError`). This module resolves a spec against the tables, with the checks that need
them (unknown session ids, session types, brain areas, probe names). The session and probe tables
the filters run on reproduce AllenSDK 2.16 ``EcephysProjectCache.get_session_table()`` /
``get_probes()`` (``allensdk/brain_observatory/ecephys/ecephys_project_cache.py``) from the four
cache CSVs:

* every table is inner-joined up the chain units -> channels -> probes -> sessions, so a row
  whose parent is missing is not counted;
* ``unit_count`` counts units that pass the unit filters (:mod:`ecephys_pipeline.unit_filters`,
  AllenSDK's semantics and defaults);
* ``ecephys_structure_acronyms`` lists the structures of a session's channels in order of first
  appearance, NaN (out of brain) included.

Public API: :func:`load_tables`, :func:`session_table`, :func:`probe_table`, :func:`resolve` ->
:class:`Selection` (``.to_json(path)`` writes the contract artifact, see ``docs/architecture.md``
section 3), :func:`spec_sha256`, :class:`SelectionError`; :func:`load_spec`, :class:`SpecError`.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import logging
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from . import atomic, config, layout, metadata
from .config import SpecError, load_spec, timestamp_utc
from .layout import TABLES
from .unit_filters import DEFAULT_UNIT_FILTERS, unit_mask

log = logging.getLogger(__name__)

__all__ = [
    "DEFAULT_UNIT_FILTERS",
    "Selection",
    "SelectionError",
    "SpecError",
    "check_tables",
    "filter_units",
    "load_schema",
    "load_spec",
    "load_tables",
    "probe_table",
    "resolve",
    "session_table",
    "spec_sha256",
]


def load_schema() -> dict:
    """The selection spec's JSON Schema (:func:`ecephys_pipeline.config.load_schema`)."""
    return config.load_schema("selection")


_resolve_ref = config.resolve_ref

# Columns AllenSDK drops from its tables (EcephysProjectCache.SUPPRESS_FROM_*).
SUPPRESS_FROM_SESSION_TABLE = ("has_nwb", "isi_experiment_id", "date_of_acquisition")
SUPPRESS_FROM_PROBES = (
    "air_channel_index",
    "surface_channel_index",
    "date_of_acquisition",
    "published_at",
    "specimen_id",
    "session_type",
    "isi_experiment_id",
    "age_in_days",
    "sex",
    "genotype",
    "has_nwb",
    "lfp_temporal_subsampling_factor",
)

_REQUIRED_COLUMNS = metadata.REQUIRED_COLUMNS


class SelectionError(RuntimeError):
    """The spec is valid but selects no session. ``counts`` holds the per-filter counts."""

    def __init__(self, message: str, counts: list[dict[str, Any]]):
        self.counts = counts
        super().__init__(message)


# --------------------------------------------------------------------------- tables


def load_tables(cache_dir: str | Path) -> dict[str, pd.DataFrame]:
    """Read ``sessions.csv``, ``probes.csv``, ``channels.csv``, ``units.csv`` from ``cache_dir``.

    Read exactly as AllenSDK reads its cache (``pd.read_csv(path, index_col="id")``).
    """
    cache_dir = Path(cache_dir)
    missing = [
        layout.table_path(t) for t in TABLES if not (cache_dir / layout.table_path(t)).is_file()
    ]
    if missing:
        raise FileNotFoundError(
            f"metadata table(s) {', '.join(missing)} not found in {cache_dir}; "
            "run the fetch_metadata step (or point cache_dir at an AllenSDK cache directory)"
        )
    tables = {t: metadata.read_table(cache_dir / layout.table_path(t)) for t in TABLES}
    check_tables(tables)
    return tables


def check_tables(tables: Mapping[str, pd.DataFrame]) -> None:
    """Raise ValueError naming the table and column if a table cannot be used."""
    problems = []
    for name in TABLES:
        if name not in tables:
            problems.append(f"table '{name}' is missing")
            continue
        df = tables[name]
        for col in _REQUIRED_COLUMNS[name]:
            if col not in df.columns:
                problems.append(f"{name}.csv has no column '{col}'")
        if df.index.has_duplicates:
            dup = df.index[df.index.duplicated()][:5].tolist()
            problems.append(f"{name}.csv has duplicate ids, e.g. {dup}")
    if problems:
        raise ValueError("unusable metadata tables: " + "; ".join(problems))


def filter_units(
    units: pd.DataFrame, unit_filters: Mapping[str, Any] | None = None
) -> pd.DataFrame:
    """AllenSDK ``EcephysProjectCache._get_units`` filtering with the spec's unit_filters.

    ``units.csv`` lists the units of valid channels only, so the validity filter does not apply;
    the out-of-brain filter applies only if the table has ``ecephys_structure_id`` (units.csv
    has not), as in AllenSDK.
    """
    structure = units.get("ecephys_structure_id")
    keep = unit_mask(
        quality=units.get("quality"),
        amplitude_cutoff=units["amplitude_cutoff"],
        presence_ratio=units["presence_ratio"],
        isi_violations=units["isi_violations"],
        in_brain=None if structure is None else structure.notna(),
        filters=unit_filters,
    )
    return units[keep]


@dataclass(frozen=True)
class _Annotated:
    probes: pd.DataFrame  # probes whose session exists; column ecephys_session_id
    channels: pd.DataFrame  # channels whose probe is annotated; + ecephys_session_id
    units: pd.DataFrame  # filtered units whose channel is annotated; + probe and session ids


def _annotate(tables: Mapping[str, pd.DataFrame], unit_filters) -> _Annotated:
    sessions, probes = tables["sessions"], tables["probes"]
    channels, units = tables["channels"], tables["units"]
    probes_a = probes[probes["ecephys_session_id"].isin(sessions.index)]
    ch = channels[channels["ecephys_probe_id"].isin(probes_a.index)]
    ch = ch.assign(ecephys_session_id=ch["ecephys_probe_id"].map(probes_a["ecephys_session_id"]))
    u = filter_units(units, unit_filters)
    u = u[u["ecephys_channel_id"].isin(ch.index)]
    u = u.assign(
        ecephys_probe_id=u["ecephys_channel_id"].map(ch["ecephys_probe_id"]),
        ecephys_session_id=u["ecephys_channel_id"].map(ch["ecephys_session_id"]),
    )
    return _Annotated(probes_a, ch, u)


def _count(index: pd.Index, keys: pd.Series) -> pd.Series:
    counts = keys.value_counts()
    return counts.reindex(index, fill_value=0).astype("int64")


def _grouped_uniques(index: pd.Index, channels: pd.DataFrame, key: str) -> pd.Series:
    firsts = channels[[key, "ecephys_structure_acronym"]].drop_duplicates()
    lists = firsts.groupby(key, sort=False)["ecephys_structure_acronym"].agg(list)
    out = pd.Series([[] for _ in range(len(index))], index=index, dtype=object)
    common = lists.index.intersection(index)
    out.loc[common] = lists.loc[common]
    return out


def session_table(
    tables: Mapping[str, pd.DataFrame], unit_filters: Mapping[str, Any] | None = None
) -> pd.DataFrame:
    """``EcephysProjectCache.get_session_table()`` from the four tables.

    Columns: the sessions.csv columns minus has_nwb / isi_experiment_id / date_of_acquisition,
    ``genotype`` renamed ``full_genotype``, then unit_count, channel_count, probe_count and
    ecephys_structure_acronyms (a list per session; NaN marks out-of-brain channels). A session
    without channels gets ``[]`` where AllenSDK would put ``0``.
    """
    ann = _annotate(tables, unit_filters)
    sessions = tables["sessions"].copy()
    idx = sessions.index
    sessions["unit_count"] = _count(idx, ann.units["ecephys_session_id"])
    sessions["channel_count"] = _count(idx, ann.channels["ecephys_session_id"])
    sessions["probe_count"] = _count(idx, ann.probes["ecephys_session_id"])
    sessions["ecephys_structure_acronyms"] = _grouped_uniques(
        idx, ann.channels, "ecephys_session_id"
    )
    sessions = sessions.drop(columns=list(SUPPRESS_FROM_SESSION_TABLE), errors="ignore")
    return sessions.rename(columns={"genotype": "full_genotype"})


def probe_table(
    tables: Mapping[str, pd.DataFrame], unit_filters: Mapping[str, Any] | None = None
) -> pd.DataFrame:
    """``EcephysProjectCache.get_probes()`` from the four tables.

    Columns: the probes.csv columns (lfp_sampling_rate divided by
    lfp_temporal_subsampling_factor if present), then unit_count, channel_count and
    ecephys_structure_acronyms. Probes whose session is not in sessions.csv are left out.
    """
    ann = _annotate(tables, unit_filters)
    sessions = tables["sessions"]
    probes = ann.probes.copy()
    if {"lfp_sampling_rate", "lfp_temporal_subsampling_factor"} <= set(probes.columns):
        probes["lfp_sampling_rate"] = (
            probes["lfp_sampling_rate"] / probes["lfp_temporal_subsampling_factor"]
        )
    extra = [c for c in sessions.columns if c not in probes.columns]
    probes = probes.join(sessions[extra], on="ecephys_session_id")
    idx = probes.index
    probes["unit_count"] = _count(idx, ann.units["ecephys_probe_id"])
    probes["channel_count"] = _count(idx, ann.channels["ecephys_probe_id"])
    probes["ecephys_structure_acronyms"] = _grouped_uniques(idx, ann.channels, "ecephys_probe_id")
    return probes.drop(columns=list(SUPPRESS_FROM_PROBES), errors="ignore")


# --------------------------------------------------------------------------- the spec's hash


def canonical_json(spec: Mapping[str, Any]) -> str:
    return json.dumps(spec, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def spec_sha256(spec: Mapping[str, Any]) -> str:
    """sha256 of the canonical JSON of a defaults-filled spec."""
    return hashlib.sha256(canonical_json(spec).encode("utf-8")).hexdigest()


# --------------------------------------------------------------------------- resolution


def _as_list(value) -> list:
    return value if isinstance(value, list) else [value]


def _range_mask(series: pd.Series, r) -> pd.Series:
    values = pd.to_numeric(series, errors="coerce")
    if not isinstance(r, dict):
        return values == r
    mask = pd.Series(True, index=series.index)
    if r.get("min") is not None:
        mask &= values >= r["min"]
    if r.get("max") is not None:
        mask &= values <= r["max"]
    if r.get("gt") is not None:
        mask &= values > r["gt"]
    if r.get("lt") is not None:
        mask &= values < r["lt"]
    return mask.fillna(False).astype(bool)


def _text_mask(series: pd.Series, f) -> pd.Series:
    values = series.astype("object").where(series.notna(), None)

    def norm(s):
        return s.casefold() if (ignore and isinstance(s, str)) else s

    if not isinstance(f, dict):
        f = {"equals": f}
    ignore = bool(f.get("ignore_case"))
    mask = pd.Series(True, index=series.index)
    if f.get("equals") is not None:
        wanted = {norm(v) for v in _as_list(f["equals"])}
        mask &= values.map(lambda v: isinstance(v, str) and norm(v) in wanted).astype(bool)
    if f.get("contains") is not None:
        needle = norm(f["contains"])
        mask &= values.map(lambda v: isinstance(v, str) and needle in norm(v)).astype(bool)
    if f.get("matches") is not None:
        rx = re.compile(f["matches"], re.IGNORECASE if ignore else 0)
        mask &= values.map(lambda v: isinstance(v, str) and rx.search(v) is not None).astype(bool)
    return mask


def _acronym_sets(table: pd.DataFrame) -> pd.Series:
    return table["ecephys_structure_acronyms"].map(lambda xs: {x for x in xs if isinstance(x, str)})


def _unknown(kind: str, where: str, given, known, *, hint_source: str) -> list[str]:
    known_list = sorted({str(k) for k in known})
    out = []
    for value in given:
        if str(value) in known_list:
            continue
        close = difflib.get_close_matches(str(value), known_list, n=3, cutoff=0.6)
        folded = [k for k in known_list if k.casefold() == str(value).casefold()]
        close = folded + [c for c in close if c not in folded]
        hint = f"; did you mean {', '.join(repr(c) for c in close)}?" if close else ""
        if len(known_list) <= 40:
            allowed = f" (allowed: {', '.join(known_list)})"
        else:
            allowed = f" ({len(known_list)} values in {hint_source})"
        out.append(f"unknown {kind} {value!r} in '{where}': not in {hint_source}{hint}{allowed}")
    return out


def _check_against_tables(
    spec: dict, st: pd.DataFrame, probes: pd.DataFrame, units: pd.DataFrame
) -> list[str]:
    problems = []
    ids = spec["session_ids"]
    for key in ("include", "exclude"):
        for sid in ids[key]:
            if sid not in st.index:
                close = difflib.get_close_matches(str(sid), [str(i) for i in st.index], 2, 0.8)
                hint = f"; did you mean {', '.join(close)}?" if close else ""
                problems.append(
                    f"session id {sid} in 'session_ids.{key}' is not in the sessions table "
                    f"({len(st)} sessions, ids {st.index.min()}..{st.index.max()}){hint}"
                )
    if spec["specimen_ids"]:
        known = set(st["specimen_id"].tolist()) if "specimen_id" in st else set()
        for spid in spec["specimen_ids"]:
            if spid not in known:
                problems.append(
                    f"specimen id {spid} in 'specimen_ids' is not in the sessions table "
                    f"(column specimen_id)"
                )
    if spec["session_types"] is not None:
        problems += _unknown(
            "session type",
            "session_types",
            _as_list(spec["session_types"]),
            st["session_type"].dropna().unique(),
            hint_source="the sessions table",
        )
    known_acronyms = {
        a for xs in st["ecephys_structure_acronyms"] for a in xs if isinstance(a, str)
    }
    for key in ("any", "all", "none"):
        problems += _unknown(
            "brain area",
            f"areas.{key}",
            spec["areas"][key],
            known_acronyms,
            hint_source="the channels table (ecephys_structure_acronym)",
        )
    if spec["probes"]["names"] is not None:
        problems += _unknown(
            "probe name",
            "probes.names",
            spec["probes"]["names"],
            probes["name"].dropna().unique(),
            hint_source="the probes table",
        )
    quality = spec["unit_filters"].get("quality")
    if quality is not None and "quality" in units:
        problems += _unknown(
            "unit quality label",
            "unit_filters.quality",
            _as_list(quality),
            units["quality"].dropna().unique(),
            hint_source="the units table (column quality)",
        )
    return problems


@dataclass
class Selection:
    """The resolved selection: sessions (session-table rows), their probes, per-filter counts."""

    spec: dict
    sessions: pd.DataFrame
    probes: pd.DataFrame
    counts: list[dict[str, Any]] = field(default_factory=list)

    @property
    def spec_sha256(self) -> str:
        return spec_sha256(self.spec)

    @property
    def session_ids(self) -> list[int]:
        return [int(i) for i in self.sessions.index]

    @property
    def probe_ids(self) -> list[int]:
        return [int(i) for i in self.probes.index]

    @property
    def fetch_lfp(self) -> bool:
        return bool(self.spec["fetch_lfp"])

    @property
    def unit_filters(self) -> dict[str, Any]:
        return dict(self.spec["unit_filters"])

    def to_dict(self) -> dict[str, Any]:
        fetch_lfp = self.fetch_lfp
        sessions = []
        for sid, row in self.sessions.sort_index().iterrows():
            probes = self.probes[self.probes["ecephys_session_id"] == sid]
            probes = probes.assign(_name=probes["name"].astype(str)).sort_values(
                ["_name"], kind="stable"
            )
            plist = []
            for pid, p in probes.iterrows():
                has_lfp = _truthy(p.get("has_lfp_data"))
                plist.append(
                    {
                        "probe_id": int(pid),
                        "name": str(p["name"]),
                        "has_lfp_data": has_lfp,
                        "download_lfp": bool(fetch_lfp and has_lfp),
                    }
                )
            sessions.append(
                {"session_id": int(sid), "session_type": str(row["session_type"]), "probes": plist}
            )
        return {
            "spec_sha256": self.spec_sha256,
            "fetch_lfp": fetch_lfp,
            "unit_filters": self.unit_filters,
            "sessions": sessions,
            "counts": [
                {"filter": c["filter"], "sessions_left": int(c["sessions_left"])}
                for c in self.counts
            ],
        }

    def to_json(self, path: str | Path) -> Path:
        """Write the contract artifact (sorted keys, 2-space indent, trailing newline)."""
        text = (
            json.dumps(
                self.to_dict(), sort_keys=True, indent=2, ensure_ascii=False, allow_nan=False
            )
            + "\n"
        )
        return atomic.write_text(path, text)


def _truthy(value) -> bool:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return False
    if isinstance(value, str):
        return value.strip().lower() in ("true", "1", "yes")
    return bool(value)


def _order(table: pd.DataFrame, column: str, descending: bool) -> pd.DataFrame:
    df = table.assign(_sid=table.index.to_numpy())
    if column == "session_id":
        return df.sort_values("_sid", ascending=not descending, kind="stable").drop(columns="_sid")
    key = df[column]
    if column == "published_at":
        key = pd.to_datetime(key, utc=True, errors="coerce")
    df = df.assign(_key=key)
    df = df.sort_values(
        ["_key", "_sid"], ascending=[not descending, True], kind="stable", na_position="last"
    )
    return df.drop(columns=["_key", "_sid"])


def resolve(spec: Mapping[str, Any] | str | Path, tables: Mapping[str, pd.DataFrame]) -> Selection:
    """Apply the spec to the four tables; raise SpecError / SelectionError with clear messages."""
    spec = load_spec(spec)  # idempotent on an already loaded spec
    check_tables(tables)
    st = session_table(tables, spec["unit_filters"])
    pt = probe_table(tables, spec["unit_filters"])
    problems = _check_against_tables(spec, st, pt, tables["units"])
    if problems:
        raise SpecError(problems)

    counts: list[dict[str, Any]] = [{"filter": "all_sessions", "sessions_left": len(st)}]
    cur = st

    def step(name: str, mask) -> None:
        nonlocal cur
        cur = cur[np.asarray(mask, dtype=bool)]
        counts.append({"filter": name, "sessions_left": len(cur)})

    ids = spec["session_ids"]
    if ids["include"]:
        step("session_ids.include", cur.index.isin(ids["include"]))
    if ids["exclude"]:
        step("session_ids.exclude", ~cur.index.isin(ids["exclude"]))
    if spec["specimen_ids"]:
        step("specimen_ids", cur["specimen_id"].isin(spec["specimen_ids"]))
    if spec["session_types"] is not None:
        step("session_types", cur["session_type"].isin(_as_list(spec["session_types"])))
    if spec["sex"] is not None:
        step("sex", _text_mask(cur["sex"], spec["sex"]))
    if spec["genotype"] is not None:
        step("genotype", _text_mask(cur["full_genotype"], spec["genotype"]))
    if spec["age_in_days"] is not None:
        step("age_in_days", _range_mask(cur["age_in_days"], spec["age_in_days"]))
    if spec["published_at"] is not None:
        pub = pd.to_datetime(cur["published_at"], utc=True, errors="coerce")
        p = spec["published_at"]
        if isinstance(p, str):
            mask = pub == timestamp_utc(p)
        else:
            mask = pd.Series(True, index=cur.index)
            if p.get("min") is not None:
                mask &= pub >= timestamp_utc(p["min"])
            if p.get("max") is not None:
                mask &= pub <= timestamp_utc(p["max"])
        step("published_at", mask.fillna(False))
    for key in ("unit_count", "channel_count", "probe_count"):
        if spec[key] is not None:
            step(key, _range_mask(cur[key], spec[key]))
    areas = spec["areas"]
    if areas["any"] or areas["all"] or areas["none"]:
        sets = _acronym_sets(cur)
        if areas["any"]:
            want = set(areas["any"])
            step("areas.any", sets.map(lambda s: bool(s & want)))
            sets = sets.loc[cur.index]
        if areas["all"]:
            want = set(areas["all"])
            step("areas.all", sets.map(lambda s: want <= s))
            sets = sets.loc[cur.index]
        if areas["none"]:
            want = set(areas["none"])
            step("areas.none", sets.map(lambda s: not (s & want)))

    probes = pt[pt["ecephys_session_id"].isin(cur.index)]
    pf = spec["probes"]
    if pf["names"] is not None or pf["has_lfp"] is not None:
        if pf["names"] is not None:
            probes = probes[probes["name"].isin(pf["names"])]
        if pf["has_lfp"] is not None:
            has = probes["has_lfp_data"].map(_truthy).astype(bool)
            probes = probes[has == pf["has_lfp"]]
        step("probes", cur.index.isin(probes["ecephys_session_id"]))

    if spec["limit"] is not None and len(cur) > spec["limit"]:
        order = spec["order_by"]
        ordered = _order(cur, order["column"], order["descending"])
        keep = set(ordered.index[: spec["limit"]])
        step("limit", cur.index.isin(keep))
    elif spec["limit"] is not None:
        counts.append({"filter": "limit", "sessions_left": len(cur)})

    if len(cur) == 0:
        raise SelectionError(_nothing_message(counts), counts)
    probes = probes[probes["ecephys_session_id"].isin(cur.index)]
    empty = cur.index[cur["unit_count"] == 0].tolist() if "unit_count" in cur else []
    if empty:
        log.warning(
            "the unit filters leave no unit in %d of the %d selected session(s) (%s): their "
            "files are downloaded but their units table will be empty; loosen unit_filters if "
            "that is not intended",
            len(empty),
            len(cur),
            ", ".join(map(str, empty)),
        )
    return Selection(
        spec=spec, sessions=cur.sort_index(), probes=probes.sort_index(), counts=counts
    )


def _nothing_message(counts: list[dict[str, Any]]) -> str:
    culprit = next((c for c in counts if c["sessions_left"] == 0), counts[-1])
    idx = counts.index(culprit)
    before = counts[idx - 1]["sessions_left"] if idx > 0 else 0
    lines = [
        f"the selection spec matches no session: filter '{culprit['filter']}' removed the last "
        f"{before} session{'s' if before != 1 else ''}.",
        "Sessions left after each filter, in the order applied:",
    ]
    width = max(len(c["filter"]) for c in counts)
    for c in counts:
        mark = "   <- removed the last sessions" if c is culprit else ""
        lines.append(f"  {c['filter']:<{width}}  {c['sessions_left']:>5}{mark}")
    lines.append(
        f"Relax '{culprit['filter']}' (or an earlier filter); the values present are in the "
        "session table (ecephys_pipeline.selection.session_table)."
    )
    return "\n".join(lines)
