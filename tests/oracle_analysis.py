"""Compare our analysis datasets with what AllenSDK's oracle (``analysis`` plan section of
tests/oracle/allensdk_oracle.py) computed on the same NWB files. Used by
tests/test_allensdk_oracle.py; every problem is one readable line."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd

REL = 1e-12  # means, standard deviations and SEMs: relative to the condition's scale


def read(root: Path, dataset: str, sid: int) -> pd.DataFrame:
    return pd.read_parquet(Path(root) / dataset / f"session_id={sid}")


def _close(a: float, b: float, scale: float) -> bool:
    a_missing = a is None or (isinstance(a, float) and math.isnan(a))
    b_missing = b is None or (isinstance(b, float) and math.isnan(b))
    if a_missing or b_missing:
        return a_missing and b_missing
    return abs(a - b) <= REL * max(abs(a), abs(b), scale)


def condition_problems(sid: int, root: Path, got: dict, arrays: dict) -> list[str]:
    """Condition ids map one to one, presentation by presentation (and are equal)."""
    ours = read(root, "presentation_running_speed", sid).set_index("stimulus_presentation_id")
    conds = read(root, "stimulus_conditions", sid)
    theirs = dict(zip(got["presentation_ids"], got["presentation_conditions"], strict=True))
    problems = []
    if len(conds) != len(got["conditions"]["index"]):
        problems.append(
            f"session {sid}: {len(conds)} conditions, AllenSDK {len(got['conditions']['index'])}"
        )
    fwd: dict[int, int] = {}
    back: dict[int, int] = {}
    for pid, c in ours["stimulus_condition_id"].items():
        t = theirs.get(int(pid))
        if t is None:
            problems.append(f"session {sid}: presentation {pid} not in AllenSDK's table")
            continue
        if fwd.setdefault(int(c), t) != t or back.setdefault(t, int(c)) != int(c):
            problems.append(
                f"session {sid}: presentation {pid}: our condition {c} <-> AllenSDK {t} "
                f"is not one to one (ours {c} -> {fwd[int(c)]}, AllenSDK {t} -> {back[t]})"
            )
    if set(ours.index) != set(theirs):
        problems.append(f"session {sid}: presentation ids differ from AllenSDK's")
    if not problems and any(k != v for k, v in fwd.items()):
        problems.append(f"session {sid}: condition ids map one to one but are renumbered")
    return problems


def stimulus_problems(sid: int, name: str, root: Path, got: dict, arrays: dict) -> list[str]:
    """Counts per bin and spike times exact; statistics within REL, for one stimulus."""
    problems: list[str] = []
    what = f"session {sid} {name}"
    units = np.array(got["unit_ids"], dtype=np.int64)
    pres = np.array(got["stimuli"][name]["presentation_ids"], dtype=np.int64)
    key = f"{sid}_{name}"

    # presentation_spike_counts: ours sparse -> dense (presentation, bin, unit) like AllenSDK's
    theirs = arrays[f"{key}_counts"].astype(np.int64)
    counts = read(root, "presentation_spike_counts", sid)
    counts = counts[(counts["stimulus_name"] == name) & counts["unit_id"].isin(units)]
    dense = np.zeros_like(theirs)
    p = np.searchsorted(pres, counts["stimulus_presentation_id"].to_numpy())
    u = np.searchsorted(units, counts["unit_id"].to_numpy())
    dense[p, counts["bin_index"].to_numpy(), u] = counts["spike_count"].to_numpy()
    if theirs.sum() == 0:
        problems.append(f"{what}: AllenSDK counted no spikes at all (nothing compared)")
    bad = np.argwhere(dense != theirs)
    for b in bad[:5]:
        problems.append(
            f"{what}: presentation {pres[b[0]]} bin {b[1]} unit {units[b[2]]}: "
            f"count ours={dense[tuple(b)]} AllenSDK={theirs[tuple(b)]}"
        )

    # presentation_spike_times: same rows (ours are sorted unit, presentation, time; AllenSDK's
    # by time): compared in (presentation, unit, time) order
    st = read(root, "presentation_spike_times", sid)
    st = st[(st["stimulus_name"] == name) & st["unit_id"].isin(units)]
    t_time = arrays[f"{key}_times"]
    t_pid = arrays[f"{key}_times_stimulus_presentation_id"]
    t_uid = arrays[f"{key}_times_unit_id"]
    t_since = arrays[f"{key}_times_since_onset"]
    order = np.lexsort((t_time, t_uid, t_pid))
    st = st.sort_values(["stimulus_presentation_id", "unit_id", "spike_time"], kind="stable")
    mine = [st[c].to_numpy() for c in ("stimulus_presentation_id", "unit_id", "spike_time")]
    mine.append(st["time_since_stimulus_presentation_onset"].to_numpy())
    for label, a, b in zip(
        ("presentation", "unit", "spike_time", "time_since_onset"),
        mine,
        (t_pid[order], t_uid[order], t_time[order], t_since[order]),
        strict=True,
    ):
        if a.shape != b.shape:
            problems.append(f"{what}: spike times: {a.size} rows, AllenSDK {b.size}")
            break
        diff = np.flatnonzero(a != b)
        if diff.size:
            i = diff[0]
            problems.append(f"{what}: spike times row {i}: {label} ours={a[i]!r} AllenSDK={b[i]!r}")

    # condition_spike_statistics: counts exact, floats within REL
    stats = read(root, "condition_spike_statistics", sid)
    stats = stats[(stats["stimulus_name"] == name) & stats["unit_id"].isin(units)]
    stats = stats.set_index(["unit_id", "stimulus_condition_id"])
    for section, cols in (
        ("statistics", {"spike_mean": "spike_mean", "spike_std": "spike_std",
                        "spike_sem": "spike_sem"}),
        ("rate_statistics", {"spike_mean": "spike_rate_mean", "spike_std": "spike_rate_std",
                             "spike_sem": "spike_rate_sem"}),
    ):  # fmt: skip
        frame = got["stimuli"][name][section]
        rows = [dict(zip(frame["columns"], r, strict=True)) for r in frame["rows"]]
        if len(rows) != len(stats):
            problems.append(f"{what}: {section}: {len(stats)} rows, AllenSDK {len(rows)}")
        for r in rows:
            k = (r["unit_id"], r["stimulus_condition_id"])
            if k not in stats.index:
                problems.append(f"{what}: {section}: no row for unit/condition {k}")
                continue
            o = stats.loc[k]
            exact = ["stimulus_presentation_count"]
            if section == "statistics":
                exact.append("spike_count")
            for c in exact:
                if int(o[c]) != int(r[c]):
                    problems.append(f"{what}: {section} {k} {c}: ours={o[c]} AllenSDK={r[c]}")
            scale = abs(r["spike_mean"])
            for tc, oc in cols.items():
                if not _close(float(o[oc]), r[tc], scale):
                    problems.append(
                        f"{what}: {section} {k} {tc}: ours={o[oc]!r} AllenSDK={r[tc]!r}"
                    )
    return problems[:50]
