"""Synthetic Allen Visual Coding - Neuropixels dataset (test and demo side).

Writes the directory described in docs/architecture.md §1::

    DATASET/dataset.json
    DATASET/warehouse/<Model>.json              raw RMA rows (NaN -> null)
    DATASET/files/session_<sid>/session_<sid>.nwb
    DATASET/files/session_<sid>/probe_<pid>_lfp.nwb   (probes with use_lfp_data only)
    DATASET/s3/{manifest.json,sessions.csv,probes.csv,channels.csv,units.csv}

NWB files are a pure function of the warehouse records, the seed and the size knobs; with
``files="lazy"`` they are generated on first use by :func:`ensure_session_nwb` /
:func:`ensure_lfp_nwb` (atomically: temp name + ``os.replace``).

Python API::

    make_dataset(out, seed=0, *, realistic=False, files="all", sessions=2, probes_per_session=3,
                 units_per_probe=24, duration_s=300.0, lfp_duration_s=4.0, index_dtype=None,
                 all_nan_metric_as_str=False) -> Path
    ensure_session_nwb(dataset_dir, session_id) -> Path
    ensure_lfp_nwb(dataset_dir, probe_id) -> Path
    write_gen1_session_nwb(path, seed=0, ...) -> Path          (Gen-1 variant, allen-nwb.md §4)
    make_full_size_session(path, seed=0, units=850, spikes=40e6, probes=6) -> Path

CLI (``synth/__main__.py``):
``python -m ecephys_pipeline.synth --out DIR --seed N [--sessions K] [--realistic] [--lazy]``
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from .. import atomic, metadata
from .records import Knobs, build_records

FORMAT = 1
MODELS = (
    "EcephysSession",
    "EcephysProbe",
    "EcephysChannel",
    "Structure",
    "EcephysUnit",
    "WellKnownFile",
)
INDEX_DTYPES = ("uint8", "uint16", "uint32", "uint64", "int64")

__all__ = [
    "make_dataset",
    "ensure_session_nwb",
    "ensure_lfp_nwb",
    "load_records",
    "session_nwb_path",
    "lfp_nwb_path",
    "write_gen1_session_nwb",
    "make_full_size_session",
    "main",
]


# ------------------------------------------------------------------------------------------------
# public API


def make_dataset(
    out: str | os.PathLike[str],
    seed: int = 0,
    *,
    realistic: bool = False,
    files: str = "all",
    sessions: int = 2,
    probes_per_session: int = 3,
    units_per_probe: int | None = None,
    duration_s: float = 300.0,
    lfp_duration_s: float = 4.0,
    index_dtype: str | None = None,
    all_nan_metric_as_str: bool = False,
) -> Path:
    """Write a synthetic dataset directory at ``out`` and return its path.

    ``files="all"`` writes every session and LFP NWB now; ``"lazy"`` writes none (the fake
    warehouse calls :func:`ensure_session_nwb` / :func:`ensure_lfp_nwb` on download).
    ``realistic=True`` writes the 58-session / 332-probe catalogue (see ``catalog_real``); its
    files are always lazy. Re-running with the same arguments gives byte-identical files.
    """
    if files not in ("all", "lazy"):
        raise ValueError(f"files must be 'all' or 'lazy', not {files!r}")
    if index_dtype is not None and index_dtype not in INDEX_DTYPES:
        raise ValueError(f"index_dtype must be one of {INDEX_DTYPES} or None, not {index_dtype!r}")
    if sessions < 1 or probes_per_session < 1 or probes_per_session > 6:
        raise ValueError("need sessions >= 1 and 1 <= probes_per_session <= 6")
    if units_per_probe is None:
        units_per_probe = 8 if realistic else 24
    if units_per_probe < 1:
        raise ValueError("units_per_probe must be >= 1")
    if duration_s < 30 or lfp_duration_s <= 0:
        raise ValueError("duration_s must be >= 30 and lfp_duration_s > 0")
    knobs = Knobs(
        sessions=58 if realistic else int(sessions),
        probes_per_session=6 if realistic else int(probes_per_session),
        units_per_probe=int(units_per_probe),
        duration_s=float(duration_s),
        lfp_duration_s=float(lfp_duration_s),
        index_dtype=index_dtype,
        all_nan_metric_as_str=bool(all_nan_metric_as_str),
    )
    out = Path(out)
    (out / "warehouse").mkdir(parents=True, exist_ok=True)
    (out / "files").mkdir(exist_ok=True)
    (out / "s3").mkdir(exist_ok=True)
    records = build_records(int(seed), knobs, realistic)
    for model in MODELS:
        _write_json(out / "warehouse" / f"{model}.json", records[model])
    meta = {
        "format": FORMAT,
        "seed": int(seed),
        "params": knobs.to_json(),
        "realistic": bool(realistic),
        "files": "lazy" if realistic else files,
    }
    _write_json(out / "dataset.json", meta, indent=2)
    _write_s3(out, records)
    _load_cached.cache_clear()
    if files == "all" and not realistic:
        for s in records["EcephysSession"]:
            ensure_session_nwb(out, s["id"])
        for p in records["EcephysProbe"]:
            if p["use_lfp_data"]:
                ensure_lfp_nwb(out, p["id"])
    return out


def load_records(dataset_dir: str | os.PathLike[str]) -> tuple[dict[str, Any], dict[str, list]]:
    """(dataset.json, {model: rows}) of a dataset directory."""
    d = Path(dataset_dir)
    meta_path = d / "dataset.json"
    if not meta_path.is_file():
        raise FileNotFoundError(f"{meta_path} not found: not a synthetic dataset directory")
    st = meta_path.stat()
    return _load_cached(str(d.resolve()), st.st_mtime_ns, st.st_size)


def _load_cached_impl(d: str, _mtime: int, _size: int) -> tuple[dict[str, Any], dict[str, list]]:
    meta = json.loads(Path(d, "dataset.json").read_text())
    if meta.get("format") != FORMAT:
        raise ValueError(f"{d}/dataset.json: unsupported format {meta.get('format')!r}")
    records = {m: json.loads(Path(d, "warehouse", f"{m}.json").read_text()) for m in MODELS}
    return meta, records


def _make_cache():
    from functools import lru_cache

    return lru_cache(maxsize=4)(_load_cached_impl)


_load_cached = _make_cache()


def session_nwb_path(dataset_dir: str | os.PathLike[str], session_id: int) -> Path:
    return Path(dataset_dir) / "files" / f"session_{session_id}" / f"session_{session_id}.nwb"


def lfp_nwb_path(dataset_dir: str | os.PathLike[str], session_id: int, probe_id: int) -> Path:
    return Path(dataset_dir) / "files" / f"session_{session_id}" / f"probe_{probe_id}_lfp.nwb"


def ensure_session_nwb(dataset_dir: str | os.PathLike[str], session_id: int) -> Path:
    """Path of the session NWB, generating it first if missing (atomic, race-safe)."""
    from .nwb_writer import session_context, write_session_nwb

    session_id = int(session_id)
    path = session_nwb_path(dataset_dir, session_id)
    if path.is_file():
        return path
    meta, records = load_records(dataset_dir)
    ctx = session_context(records, meta["seed"], Knobs(**meta["params"]), session_id)
    _atomic_generate(path, lambda tmp: write_session_nwb(tmp, ctx))
    return path


def ensure_lfp_nwb(dataset_dir: str | os.PathLike[str], probe_id: int) -> Path:
    """Path of a probe's LFP NWB, generating it first if missing (atomic, race-safe).

    Raises ``KeyError`` for an unknown probe and ``ValueError`` for a probe without LFP data.
    """
    from .nwb_writer import session_context, write_lfp_nwb

    probe_id = int(probe_id)
    meta, records = load_records(dataset_dir)
    probe = next((p for p in records["EcephysProbe"] if p["id"] == probe_id), None)
    if probe is None:
        raise KeyError(f"probe {probe_id} is not in this synthetic dataset")
    if not probe["use_lfp_data"]:
        raise ValueError(f"probe {probe_id} has no LFP file (use_lfp_data is false)")
    sid = int(probe["ecephys_session_id"])
    path = lfp_nwb_path(dataset_dir, sid, probe_id)
    if path.is_file():
        return path
    ctx = session_context(records, meta["seed"], Knobs(**meta["params"]), sid)
    _atomic_generate(path, lambda tmp: write_lfp_nwb(tmp, ctx, probe_id))
    return path


def _atomic_generate(path: Path, write) -> None:
    # concurrent writers produce identical bytes; the last rename wins
    with atomic.output_path(path, suffix=".tmp.nwb") as tmp:
        write(tmp)


# ------------------------------------------------------------------------------------------------
# JSON / S3 objects


def _write_json(path: Path, obj: Any, indent: int | None = None) -> None:
    text = json.dumps(obj, indent=indent, allow_nan=False, ensure_ascii=False)
    atomic.write_text(path, text + "\n")


def s3_tables(records: dict[str, list]) -> dict[str, Any]:
    """The four cache tables as AllenSDK's warehouse API post-processes them
    (allen-warehouse.md §2), index ``id``."""
    import pandas as pd

    def frame(rows: list[dict[str, Any]]) -> pd.DataFrame:
        df = pd.DataFrame(rows).infer_objects()  # get_rma_tabular + infer_column_types
        return df.set_index("id")

    wkf_types: dict[int, list[str]] = {}
    for w in records["WellKnownFile"]:
        if w["attachable_type"] == "EcephysSession":
            wkf_types.setdefault(w["attachable_id"], []).append(w["well_known_file_type"]["name"])
    sess = frame(records["EcephysSession"])
    donors = [r["specimen"]["donor"] for r in records["EcephysSession"]]
    sess["age_in_days"] = [d["age"]["days"] for d in donors]
    sess["sex"] = [d["sex"] for d in donors]
    # None -> "wt" (allen-warehouse.md §2.1)
    sess["genotype"] = [d["full_genotype"] or "wt" for d in donors]
    sess["has_nwb"] = ["EcephysNwb" in wkf_types.get(i, []) for i in sess.index]
    sess = sess.drop(columns=["specimen", "fail_eye_tracking"])
    sess = sess.rename(columns={"stimulus_name": "session_type"})
    probes = frame(records["EcephysProbe"]).rename(columns={"use_lfp_data": "has_lfp_data"})
    acr = {s["id"]: s["acronym"] for s in records["Structure"]}
    chan_rows = [
        {
            "id": c["id"],
            "ecephys_probe_id": c["ecephys_probe_id"],
            "local_index": c["local_index"],
            "probe_horizontal_position": c["probe_horizontal_position"],
            "probe_vertical_position": c["probe_vertical_position"],
            "anterior_posterior_ccf_coordinate": c["anterior_posterior_ccf_coordinate"],
            "dorsal_ventral_ccf_coordinate": c["dorsal_ventral_ccf_coordinate"],
            "left_right_ccf_coordinate": c["left_right_ccf_coordinate"],
            "ecephys_structure_id": c["structure_id"],
            "ecephys_structure_acronym": acr.get(c["structure_id"]),
        }
        for c in records["EcephysChannel"]
        if c["valid_data"]
    ]
    channels = frame(chan_rows)
    units = frame(records["EcephysUnit"])
    return {"sessions": sess, "probes": probes, "channels": channels, "units": units}


def _write_s3(out: Path, records: dict[str, list]) -> None:
    # the bucket mirrors an AllenSDK cache: its manifest.json is the one AllenSDK writes
    metadata.write_cache_manifest(out / "s3")
    for name, df in s3_tables(records).items():
        atomic.write_text(out / "s3" / f"{name}.csv", df.to_csv(lineterminator="\n"))


# ------------------------------------------------------------------------------------------------
# Gen-1 variant and full-size file (implemented in synth.gen1)


def write_gen1_session_nwb(path: str | os.PathLike[str], seed: int = 0, **kwargs: Any) -> Path:
    """Gen-1 (2019) session file written with h5py per allen-nwb.md §4; see ``synth.gen1``."""
    from .gen1 import write_gen1_session_nwb as _w

    return _w(path, seed, **kwargs)


def make_full_size_session(
    path: str | os.PathLike[str],
    seed: int = 0,
    *,
    units: int = 850,
    spikes: float = 40e6,
    probes: int = 6,
    **kwargs: Any,
) -> Path:
    """One realistic-size Gen-2 session file (benchmark input); see ``synth.gen1``."""
    from .gen1 import make_full_size_session as _m

    return _m(path, seed, units=units, spikes=spikes, probes=probes, **kwargs)
