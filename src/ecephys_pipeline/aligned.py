"""Stimulus-aligned tables from spike-time arrays: the computations of the analysis stage.

Given a session's spike times (``Spikes``, per unit, sorted) and one stimulus's presentations
(``Stimulus``), ``stimulus_chunks`` yields the binned counts, the spike times per presentation
and the per-condition statistics unit chunk by unit chunk, and ``running_table`` the running
speed per presentation. The one primitive is ``interval_pairs`` (sorted-array searches, no
per-unit or per-presentation loops). Intervals are half-open everywhere; docs/SCHEMA.md
"Analysis datasets" has the semantics and where AllenSDK differs. ``analysis`` reads the inputs
and writes the files.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

CHUNK_SPIKES = 1 << 19  # spikes per unit chunk: ~100 MB of tables and pairs at most

_I64, _I32, _F64, _STR = pa.int64(), pa.int32(), pa.float64(), pa.string()

COUNTS_SCHEMA = pa.schema(
    [
        pa.field("stimulus_name", _STR),
        pa.field("unit_id", _I64, nullable=False),
        pa.field("stimulus_presentation_id", _I64, nullable=False),
        pa.field("stimulus_condition_id", _I64, nullable=False),
        pa.field("bin_index", _I32, nullable=False),
        pa.field("bin_start", _F64, nullable=False),
        pa.field("bin_stop", _F64, nullable=False),
        pa.field("spike_count", _I32, nullable=False),
    ]
)
SPIKE_TIMES_SCHEMA = pa.schema(
    [
        pa.field("stimulus_name", _STR),
        pa.field("unit_id", _I64, nullable=False),
        pa.field("stimulus_presentation_id", _I64, nullable=False),
        pa.field("stimulus_condition_id", _I64, nullable=False),
        pa.field("spike_time", _F64, nullable=False),
        pa.field("time_since_stimulus_presentation_onset", _F64, nullable=False),
    ]
)
STATISTICS_SCHEMA = pa.schema(
    [
        pa.field("stimulus_name", _STR),
        pa.field("unit_id", _I64, nullable=False),
        pa.field("stimulus_condition_id", _I64, nullable=False),
        pa.field("spike_count", _I64, nullable=False),
        pa.field("stimulus_presentation_count", _I64, nullable=False),
        pa.field("spike_mean", _F64, nullable=False),
        pa.field("spike_std", _F64),
        pa.field("spike_sem", _F64),
        pa.field("spike_rate_mean", _F64),
        pa.field("spike_rate_std", _F64),
        pa.field("spike_rate_sem", _F64),
    ]
)
RUNNING_SCHEMA = pa.schema(
    [
        pa.field("stimulus_name", _STR),
        pa.field("stimulus_presentation_id", _I64, nullable=False),
        pa.field("stimulus_condition_id", _I64, nullable=False),
        pa.field("start_time", _F64, nullable=False),
        pa.field("stop_time", _F64, nullable=False),
        pa.field("duration", _F64, nullable=False),
        pa.field("running_speed_mean", _F64),
        pa.field("running_speed_sample_count", _I64, nullable=False),
    ]
)

# --------------------------------------------------------------------------------------------
# the core: which intervals hold which times


def interval_pairs(t: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Every (i, p) with ``lo[p] <= t[i] < hi[p]``; ``lo`` ascending, ``t`` in any order.

    Intervals may overlap (a time then pairs with each interval that holds it) and may have
    any lengths: the candidates of ``t`` are the intervals after the last one whose running
    maximum of ``hi`` is <= t and up to the last one with ``lo <= t``. Pairs come out as
    "streams": first every time's first candidate, then every second candidate, ...; within a
    stream in ``i`` order. So when ``t`` is sorted (or sorted within runs, e.g. per unit), each
    stream is sorted by (run, p, i) and a stable sort of the concatenation is a cheap merge.
    """
    if t.size == 0 or lo.size == 0:
        e = np.empty(0, dtype=np.int64)
        return e, e.copy()
    reach = np.maximum.accumulate(hi)
    a = np.searchsorted(reach, t, side="right")
    m = np.searchsorted(lo, t, side="right")
    m -= a
    ii, pp = [], []
    k = 0
    live = np.flatnonzero(m > 0)
    while live.size:
        p = a[live] + k
        ok = t[live] < hi[p]
        ii.append(live[ok])
        pp.append(p[ok])
        k += 1
        live = live[m[live] > k]
    if not ii:
        e = np.empty(0, dtype=np.int64)
        return e, e.copy()
    if len(ii) == 1:
        return ii[0].astype(np.int64, copy=False), pp[0].astype(np.int64, copy=False)
    return np.concatenate(ii).astype(np.int64), np.concatenate(pp).astype(np.int64)


def _bin_of(t: np.ndarray, onset: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """Bin j of each time with ``onset + edges[j] <= t < onset + edges[j+1]``, the absolute
    edges computed as ``onset + edge`` in float64 exactly as AllenSDK builds its time domain."""
    nb = edges.size - 1
    j = np.searchsorted(edges, t - onset, side="right") - 1
    np.clip(j, 0, nb - 1, out=j)
    for _ in range(8):  # t - onset rounds; settle on the exact absolute edges
        low = t < onset + edges[j]
        j[low] -= 1
        high = t >= onset + edges[j + 1]
        j[high] += 1
        np.clip(j, 0, nb - 1, out=j)
        if not (low.any() or high.any()):
            break
    return j.astype(np.int32)


# --------------------------------------------------------------------------------------------
# inputs


@dataclass
class Spikes:
    """A session's spike times as contiguous per-unit segments (no unit id per spike).

    ``times`` concatenates the probe files in probe order; unit ``unit_ids[k]`` has
    ``times[start[k]:stop[k]]`` (sorted; empty for a unit without spikes).
    """

    unit_ids: np.ndarray
    times: np.ndarray
    start: np.ndarray
    stop: np.ndarray

    @classmethod
    def read(cls, spikes_dir: Path, unit_ids: np.ndarray) -> Spikes:
        """Read the spike files batch by batch into one preallocated array (peak ~ the times
        plus one batch); spikes of units not in ``unit_ids`` are not kept."""
        files = sorted(spikes_dir.glob("probe_id=*/part-0.parquet"))
        total = sum(pq.read_metadata(f).num_rows for f in files)
        times = np.empty(total, dtype=np.float64)
        start = np.zeros(unit_ids.size, dtype=np.int64)
        stop = np.zeros(unit_ids.size, dtype=np.int64)
        n = 0
        for f in files:
            if unit_ids.size == 0:
                break
            for batch in pq.ParquetFile(f).iter_batches(columns=["unit_id", "spike_time"]):
                uid = batch.column(0).to_numpy()
                t = batch.column(1).to_numpy()
                pos = np.minimum(np.searchsorted(unit_ids, uid), unit_ids.size - 1)
                known = unit_ids[pos] == uid
                if not known.all():
                    pos, t = pos[known], t[known]
                if t.size == 0:
                    continue
                times[n : n + t.size] = t
                # file sorted by unit: a unit's spikes are one run, possibly across batches
                cut = np.flatnonzero(pos[1:] != pos[:-1]) + 1
                firsts = np.concatenate([[0], cut]).astype(np.int64)
                lasts = np.concatenate([cut, [pos.size]]).astype(np.int64)
                ks = pos[firsts]
                fresh = stop[ks] == 0
                start[ks[fresh]] = n + firsts[fresh]
                stop[ks] = n + lasts
                n += t.size
        return cls(unit_ids, times[:n], start, stop)

    def window(self, t0: float, t1: float) -> tuple[np.ndarray, np.ndarray]:
        """Per unit, the index range of its spikes with t0 <= t < t1: (first, last)."""
        first = self.start.copy()
        last = self.start.copy()
        for k in np.flatnonzero(self.stop > self.start):
            seg = self.times[self.start[k] : self.stop[k]]
            first[k] += np.searchsorted(seg, t0, side="left")
            last[k] += np.searchsorted(seg, t1, side="left")
        return first, last

    def gather(self, first: np.ndarray, last: np.ndarray, u0: int, u1: int):
        """(times, unit index) of units u0..u1-1 in the given ranges, in (unit, time) order."""
        n = last[u0:u1] - first[u0:u1]
        if n.sum() == 0:
            return np.empty(0, dtype=np.float64), np.empty(0, dtype=np.int64)
        t = np.concatenate(
            [self.times[a:b] for a, b in zip(first[u0:u1], last[u0:u1], strict=True)]
        )
        return t, np.repeat(np.arange(u0, u1, dtype=np.int64), n)


# --------------------------------------------------------------------------------------------
# per stimulus


def _group_stats(values: np.ndarray, group: np.ndarray, n_groups: int):
    """Per group (rows of ``values``, P x U): sum, mean, std (ddof=1) and sem; std/sem NaN
    for a single presentation (undefined)."""
    order = np.argsort(group, kind="stable")
    g = group[order]
    counts = np.bincount(g, minlength=n_groups)
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    v = values[order]
    sums = np.add.reduceat(v, starts, axis=0)
    mean = sums / counts[:, None]
    dev = v - mean[g]
    ss = np.add.reduceat(dev * dev, starts, axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        std = np.sqrt(ss / (counts[:, None] - 1))
        sem = std / np.sqrt(counts[:, None])
    std[counts == 1] = np.nan
    sem[counts == 1] = np.nan
    return sums, mean, std, sem, counts


def _null_nan(values: np.ndarray) -> pa.Array:
    mask = ~np.isfinite(values)
    return pa.array(values, type=_F64, mask=mask if mask.any() else None)


def _names(name: str, n: int) -> pa.Array:
    """A string column holding ``name`` n times."""
    return pa.repeat(pa.scalar(name, _STR), n)


@dataclass
class Stimulus:
    """One stimulus's presentations (in presentation order) and its bins."""

    name: str
    pid: np.ndarray
    start: np.ndarray
    stop: np.ndarray
    cond: np.ndarray
    edges: np.ndarray

    @classmethod
    def of(cls, name: str, rows: np.ndarray, stim: dict[str, np.ndarray], cond, edges):
        return cls(
            name, stim["id"][rows], stim["start"][rows], stim["stop"][rows], cond[rows], edges
        )


def _chunk_tables(s: Stimulus, spikes: Spikes, t: np.ndarray, u: np.ndarray, u0: int, u1: int):
    """Counts, spike times and statistics of units u0..u1-1 (their spikes: t, u) for stimulus s."""
    units = spikes.unit_ids
    edges = s.edges
    n_p, n_b, n_u = s.pid.size, edges.size - 1, u1 - u0
    start, stop = s.start, s.stop
    u = u - u0

    # presentation_spike_counts: [onset + edge_j, onset + edge_j+1), sparse (count > 0 rows),
    # sorted (unit, presentation, bin): t is (unit, time) ordered, so each stream of pairs is
    # already sorted by this key and the stable sort only merges the streams
    i, p = interval_pairs(t, start + edges[0], start + edges[-1])
    j = _bin_of(t[i], start[p], edges)
    key = (u[i] * n_p + p) * n_b + j
    del i, p, j
    key.sort(kind="stable")
    if key.size:
        cut = np.flatnonzero(key[1:] != key[:-1]) + 1
        first = np.concatenate([[0], cut])
        cnt = np.diff(np.concatenate([first, [key.size]]))
        key = key[first]
    else:
        cnt = key.copy()
    kb = key % n_b
    kup = key // n_b
    ku, kp = kup // n_p + u0, kup % n_p
    del key, kup
    counts = pa.Table.from_arrays(
        [
            _names(s.name, kb.size),
            pa.array(units[ku], _I64),
            pa.array(s.pid[kp], _I64),
            pa.array(s.cond[kp], _I64),
            pa.array(kb.astype(np.int32), _I32),
            pa.array(edges[:-1][kb], _F64),
            pa.array(edges[1:][kb], _F64),
            pa.array(cnt.astype(np.int32), _I32),
        ],
        schema=COUNTS_SCHEMA,
    )
    del cnt, kb, kp, ku

    # presentation_spike_times: [start, stop), sorted (unit, presentation, time)
    i, p = interval_pairs(t, start, stop)
    up = u[i] * n_p + p
    order = np.argsort(up * t.size + i, kind="stable")  # merges the streams
    i, p, up = i[order], p[order], up[order]
    ts = t[i]
    times = pa.Table.from_arrays(
        [
            _names(s.name, i.size),
            pa.array(units[u[i] + u0], _I64),
            pa.array(s.pid[p], _I64),
            pa.array(s.cond[p], _I64),
            pa.array(ts, _F64),
            pa.array(ts - start[p], _F64),
        ],
        schema=SPIKE_TIMES_SCHEMA,
    )
    del i, ts, order

    # condition_spike_statistics: every (unit, condition) of the stimulus, zeros included
    per = np.bincount(up, minlength=n_u * n_p).reshape(n_u, n_p).T
    del up, p
    ucond, local = np.unique(s.cond, return_inverse=True)
    local = local.reshape(-1)
    sums, mean, std, sem, n_pres = _group_stats(per.astype(np.float64), local, ucond.size)
    duration = stop - start
    ok = duration > 0
    with np.errstate(invalid="ignore", divide="ignore"):
        rates = per / np.where(ok, duration, np.nan)[:, None]
    _, r_mean, r_std, r_sem, _ = _group_stats(rates, local, ucond.size)
    bad = np.bincount(local, weights=~ok, minlength=ucond.size) > 0
    for arr in (r_mean, r_std, r_sem):
        arr[bad] = np.nan
    n_c = ucond.size
    cu = np.repeat(np.arange(n_u), n_c)  # unit-major, then condition
    cc = np.tile(np.arange(n_c), n_u)
    stats = pa.Table.from_arrays(
        [
            _names(s.name, n_u * n_c),
            pa.array(units[cu + u0], _I64),
            pa.array(ucond[cc], _I64),
            pa.array(np.rint(sums[cc, cu]).astype(np.int64), _I64),
            pa.array(n_pres[cc].astype(np.int64), _I64),
            pa.array(mean[cc, cu], _F64),
            _null_nan(std[cc, cu]),
            _null_nan(sem[cc, cu]),
            _null_nan(r_mean[cc, cu]),
            _null_nan(r_std[cc, cu]),
            _null_nan(r_sem[cc, cu]),
        ],
        schema=STATISTICS_SCHEMA,
    )
    return {
        "presentation_spike_counts": counts,
        "presentation_spike_times": times,
        "condition_spike_statistics": stats,
    }


def stimulus_chunks(s: Stimulus, spikes: Spikes, chunk_spikes: int = CHUNK_SPIKES):
    """Yield the counts / spike-times / statistics tables of stimulus ``s`` unit chunk by unit
    chunk (in unit order, each chunk about ``chunk_spikes`` spikes of the stimulus's span), so
    memory stays at one chunk's pairs however long the stimulus."""
    lo_w, hi_w = s.start + s.edges[0], s.start + s.edges[-1]
    t0 = float(min(lo_w.min(), s.start.min()))
    t1 = float(max(hi_w.max(), np.maximum.accumulate(s.stop)[-1]))
    first, last = spikes.window(t0, math.nextafter(t1, math.inf))
    n_units = spikes.unit_ids.size
    cum = np.cumsum(last - first)
    u0 = 0
    while u0 < n_units:
        base = cum[u0 - 1] if u0 else 0
        u1 = int(np.searchsorted(cum, base + chunk_spikes, side="right"))
        u1 = min(max(u1, u0 + 1), n_units)
        t, u = spikes.gather(first, last, u0, u1)
        yield _chunk_tables(s, spikes, t, u, u0, u1)
        u0 = u1


def running_table(s: Stimulus, running: tuple[np.ndarray, np.ndarray]) -> pa.Table:
    """presentation_running_speed of stimulus ``s``: samples whose start_time is in
    [start, stop) of each presentation."""
    r_start, r_vel = running
    n_p = s.pid.size
    ri, rp = interval_pairs(r_start, s.start, s.stop)
    n_s = np.bincount(rp, minlength=n_p)
    tot = np.bincount(rp, weights=r_vel[ri], minlength=n_p)
    with np.errstate(invalid="ignore", divide="ignore"):
        speed = tot / n_s
    return pa.Table.from_arrays(
        [
            _names(s.name, n_p),
            pa.array(s.pid, _I64),
            pa.array(s.cond, _I64),
            pa.array(s.start, _F64),
            pa.array(s.stop, _F64),
            pa.array(s.stop - s.start, _F64),
            _null_nan(np.where(n_s > 0, speed, np.nan)),
            pa.array(n_s.astype(np.int64), _I64),
        ],
        schema=RUNNING_SCHEMA,
    )
