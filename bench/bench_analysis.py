"""Analysis benchmark (not run in CI): our analysis tables vs AllenSDK's EcephysSession methods.

On one full-size synthetic session (synth.make_full_size_session: ~850 units, >= 40M spikes),
extracted to Parquet with every unit, it measures for ALL presentations of ONE stimulus, each side
in a fresh child process (wall time inside the child; peak RSS = the child's ``ru_maxrss``):

* ``ours``      load = reading the session's units/spikes/stimulus/running Parquet
  (``aligned.Spikes.read`` etc.); compute = condition ids + the four per-stimulus tables in memory
  (``aligned.stimulus_chunks``: binned counts, spike times, condition statistics for counts
  AND rates; ``aligned.running_table``), chunk by chunk as ``analyze_session`` makes them;
  and ``analyze_session`` end to end (load + compute + the five Parquet files written).
* ``allensdk``  (AllenSDK 2.16.2 in its own venv) load = ``EcephysSession.from_nwb_path`` (unit
  filters off) + first access of ``spike_times``, ``units``, ``stimulus_presentations``;
  compute = ``presentationwise_spike_counts(edges, ids, units)``,
  ``presentationwise_spike_times(ids, units)``, ``conditionwise_spike_statistics(ids, units)``
  and the same with ``use_rates=True``.
* ``baseline``  the imports of our child and nothing else.

Usage::

    .venv/bin/python bench/bench_analysis.py --workdir /tmp/bench_analysis \
        [--nwb FILE] [--stimulus natural_scenes] [--repeat 3]

The NWB is generated (and extracted) into --workdir when missing. Ours runs --repeat times before
AllenSDK and --repeat times after it (medians of all; the 1-minute load average is recorded
around each phase, the machine being shared), AllenSDK once (it takes minutes). Prints JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve()
ALLENSDK_PYTHON = os.environ.get(
    "ALLENSDK_PYTHON", str(HERE.parents[1] / ".venv-allensdk" / "bin" / "python")
)
EDGES = {"start": -0.1, "stop": 0.35, "width": 0.01}


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# ------------------------------------------------------------------------------ child modes


def child_baseline() -> dict:
    import numpy  # noqa: F401
    import pyarrow.parquet  # noqa: F401

    from ecephys_pipeline import analysis  # noqa: F401

    return {"peak_rss_mb": _rss_mb()}


def child_ours(parquet: Path, sid: int, stimulus: str, out: Path) -> dict:
    import numpy as np
    import pyarrow.parquet as pq

    from ecephys_pipeline import aligned, analysis

    t0 = time.perf_counter()
    root = parquet
    unit_ids = analysis._read_units(root, sid, None)
    spikes = aligned.Spikes.read(root / "spikes" / f"session_id={sid}", unit_ids)
    stim_tab = pq.read_table(root / "stimulus_presentations" / f"session_id={sid}")
    rs = pq.read_table(
        root / "running_speed" / f"session_id={sid}", columns=["start_time", "velocity"]
    )
    running = (rs.column("start_time").to_numpy(), rs.column("velocity").to_numpy())
    t1 = time.perf_counter()
    cond, _ = analysis.condition_ids(stim_tab)
    stim = {
        "id": stim_tab.column("stimulus_presentation_id").to_numpy(),
        "start": stim_tab.column("start_time").to_numpy(),
        "stop": stim_tab.column("stop_time").to_numpy(),
    }
    names = np.array(stim_tab.column("stimulus_name").to_pylist(), dtype=object)
    rows = np.flatnonzero(names == stimulus)
    s = aligned.Stimulus.of(stimulus, rows, stim, cond, analysis.bin_edges(EDGES))
    n_rows = 0
    for tables in aligned.stimulus_chunks(s, spikes):  # the tables, not written
        n_rows += sum(t.num_rows for t in tables.values())
        del tables
    n_rows += aligned.running_table(s, running).num_rows
    t2 = time.perf_counter()
    return {
        "load_s": t1 - t0,
        "compute_s": t2 - t1,
        "peak_rss_mb": _rss_mb(),
        "presentations": int(rows.size),
        "units": int(unit_ids.size),
        "spikes": int(spikes.times.size),
        "rows_in_memory": n_rows,
    }


def child_e2e(parquet: Path, sid: int, stimulus: str, out: Path) -> dict:
    from ecephys_pipeline import analysis

    t0 = time.perf_counter()
    summary = analysis.analyze_session(
        parquet, sid, out, bins={"default": EDGES}, stimuli=[stimulus]
    )
    return {"end_to_end_s": time.perf_counter() - t0, "peak_rss_mb": _rss_mb(), **summary}


ALLENSDK_CHILD = r"""
import json, resource, sys, time, warnings
warnings.simplefilter("ignore")
import numpy as np
from allensdk.brain_observatory.ecephys.ecephys_session import EcephysSession
nwb, stimulus, edges = sys.argv[1], sys.argv[2], np.array(json.loads(sys.argv[3]))
off = {"amplitude_cutoff_maximum": None, "presence_ratio_minimum": None,
       "isi_violations_maximum": None, "filter_by_validity": False,
       "filter_out_of_brain_units": False}
t0 = time.perf_counter()
s = EcephysSession.from_nwb_path(nwb, api_kwargs=off)
units = np.sort(s.units.index.values)
_ = s.spike_times
stim = s.stimulus_presentations
ids = stim.index[stim["stimulus_name"] == stimulus].values
t1 = time.perf_counter()
out = {"load_s": t1 - t0}
c = s.presentationwise_spike_counts(edges, ids, units)
t2 = time.perf_counter(); out["presentationwise_spike_counts_s"] = t2 - t1
st = s.presentationwise_spike_times(ids, units)
t3 = time.perf_counter(); out["presentationwise_spike_times_s"] = t3 - t2
a = s.conditionwise_spike_statistics(ids, units)
t4 = time.perf_counter(); out["conditionwise_spike_statistics_s"] = t4 - t3
b = s.conditionwise_spike_statistics(ids, units, use_rates=True)
t5 = time.perf_counter(); out["conditionwise_rates_s"] = t5 - t4
out["compute_s"] = t5 - t1
out["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
out["rows"] = {"counts_cells": int(c.size), "spike_times": len(st), "statistics": len(a)}
print(json.dumps(out))
"""


# ------------------------------------------------------------------------------ driver


def _child(*args: str) -> dict:
    proc = subprocess.run(
        [sys.executable, str(HERE), "--child", *args], capture_output=True, text=True, check=True
    )
    return json.loads(proc.stdout.strip().splitlines()[-1])


def medians(ours: list[dict], e2e: list[dict]) -> dict:
    return {
        **{k: statistics.median(r[k] for r in ours) for k in ("load_s", "compute_s")},
        "peak_rss_mb": max(r["peak_rss_mb"] for r in ours),
        "end_to_end_s": statistics.median(r["end_to_end_s"] for r in e2e),
        "end_to_end_peak_rss_mb": max(r["peak_rss_mb"] for r in e2e),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workdir", type=Path, required=False)
    ap.add_argument("--nwb", type=Path)
    ap.add_argument("--stimulus", default="natural_scenes")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--skip-allensdk", action="store_true")
    ap.add_argument("--child", nargs="+")
    a = ap.parse_args()
    if a.child:
        mode, *rest = a.child
        if mode == "baseline":
            res = child_baseline()
        elif mode == "e2e":
            res = child_e2e(Path(rest[0]), int(rest[1]), rest[2], Path(rest[3]))
        else:
            res = child_ours(Path(rest[0]), int(rest[1]), rest[2], Path(rest[3]))
        print(json.dumps(res))
        return

    work = a.workdir
    work.mkdir(parents=True, exist_ok=True)
    nwb = a.nwb or work / "full" / "session_full.nwb"
    if not nwb.exists():
        from ecephys_pipeline.synth import make_full_size_session

        make_full_size_session(nwb, seed=0)
    parquet = work / "parquet"
    if not (parquet / "units").exists():
        from ecephys_pipeline.extract import extract_session

        extract_session(nwb, parquet, unit_filters=None)
    sid = int(next((parquet / "units").iterdir()).name.split("=")[1])
    spike_bytes = sum(
        f.stat().st_size for f in (parquet / "spikes" / f"session_id={sid}").rglob("*.parquet")
    )

    base = _child("baseline")
    args = (str(parquet), str(sid), a.stimulus, str(work / "out"))
    load = [os.getloadavg()[0]]

    def run_ours() -> tuple[list[dict], list[dict]]:
        ours = [_child("ours", *args) for _ in range(a.repeat)]
        e2e = [_child("e2e", *args) for _ in range(a.repeat)]
        load.append(os.getloadavg()[0])
        return ours, e2e

    ours, e2e = run_ours()  # ours before AllenSDK and again after it (shared machines drift)
    result = {
        "machine": f"{platform.machine()} {os.cpu_count()} cores, "
        f"Python {platform.python_version()}",
        "stimulus": a.stimulus,
        "spike_parquet_bytes": spike_bytes,
        "spike_arrays_mb": ours[0]["spikes"] * 16 / 2**20,  # unit_id int64 + spike_time float64
        "baseline_rss_mb": base["peak_rss_mb"],
        "ours_runs": ours,
        "e2e_runs": e2e,
        "ours_median": medians(ours, e2e),
    }
    if not a.skip_allensdk:
        proc = subprocess.run(
            [ALLENSDK_PYTHON, "-c", ALLENSDK_CHILD, str(nwb), a.stimulus,
             json.dumps(__import__("ecephys_pipeline.analysis").analysis.bin_edges(EDGES).tolist())],
            capture_output=True, text=True, check=True,
        )  # fmt: skip
        theirs = json.loads(proc.stdout.strip().splitlines()[-1])
        load.append(os.getloadavg()[0])
        more, more_e2e = run_ours()
        ours += more
        e2e += more_e2e
        result["ours_runs"], result["e2e_runs"] = ours, e2e
        result["ours_median"] = medians(ours, e2e)
        result["allensdk"] = theirs
        result["speedup_compute"] = theirs["compute_s"] / result["ours_median"]["compute_s"]
        result["speedup_end_to_end_vs_allensdk_compute"] = (
            theirs["compute_s"] / result["ours_median"]["end_to_end_s"]
        )
    result["load_average_1min"] = load
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
