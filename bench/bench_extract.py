"""Extraction benchmark (not run in CI): extract_session vs the floor vs pynwb.

On one full-size synthetic session (synth.make_full_size_session: >= 800 units, >= 40M spikes,
6 probes x 384 channels, 82-sample waveforms) it measures, each in a fresh child process
(wall time inside the child, peak RSS from ``resource.getrusage(RUSAGE_SELF).ru_maxrss``):

* ``extract``  ``extract_session(nwb, out, source_sha256=...)`` (the workflow passes the sha256
  recorded at download, so hashing is not part of the run);
* ``floor``    raw h5py reads of the same datasets (``ds[()]`` of every dataset extract reads)
  plus ``pyarrow.parquet.write_table`` of the very tables extract wrote (loaded beforehand,
  not timed), with the same writer options: the cost of I/O + encoding with no logic at all;
* ``pynwb``    ``NWBHDF5IO(path, load_namespaces=True).read().units["spike_times"][i]`` for
  every unit (read only; no amplitudes, no writing);
* ``baseline`` the same imports and nothing else (interpreter + libraries RSS).

Usage::

    .venv/bin/python bench/bench_extract.py --workdir /tmp/bench [--nwb FILE] [--repeat 3]

Runs are interleaved (extract, floor, extract, floor, ...) after one untimed warm-up extract, so
all of them read the NWB from the page cache; the median is reported.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve()


# ------------------------------------------------------------------------------ child modes


def _cpu() -> float:
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


def child_extract(nwb: Path, out: Path, sha: str) -> dict:
    from ecephys_pipeline.extract import extract_session

    c0, t0 = _cpu(), time.perf_counter()
    res = extract_session(nwb, out, source_sha256=sha)
    return {"wall_s": time.perf_counter() - t0, "cpu_s": _cpu() - c0, "counts": res["counts"]}


def _h5_read_all(nwb: Path) -> int:
    """``ds[()]`` of every dataset extract_session reads; returns bytes read."""
    import h5py

    skip = ("tags", "tags_index", "timeseries", "timeseries_index", "group")
    total = 0
    with h5py.File(nwb, "r") as f:
        names: list[str] = []

        def visit(name: str, obj: object) -> None:
            if isinstance(obj, h5py.Dataset) and name.rsplit("/", 1)[-1] not in skip:
                names.append(obj.name)

        for grp in ("units", "general/extracellular_ephys/electrodes", "intervals"):
            f[grp].visititems(visit)
        names += [
            "/processing/running/running_speed/data",
            "/processing/running/running_speed/timestamps",
            "/processing/running/running_speed_end_times/timestamps",
        ]
        for n in names:
            ds = f[n]
            a = ds.asstr()[()] if h5py.check_string_dtype(ds.dtype) else ds[()]
            total += getattr(a, "nbytes", 0)
            del a
    return total


def child_floor(nwb: Path, out: Path, scratch: Path) -> dict:
    import pyarrow.parquet as pq

    from ecephys_pipeline.extract import SPIKE_ROW_GROUP, _write_parquet

    files = sorted(out.rglob("part-0.parquet"))
    tables = [(p, pq.read_table(p)) for p in files]  # not timed
    c0, t0 = _cpu(), time.perf_counter()
    nbytes = _h5_read_all(nwb)
    t1 = time.perf_counter()
    for p, t in tables:
        meta = {k.decode(): v.decode() for k, v in (t.schema.metadata or {}).items()}
        meta.pop("ARROW:schema", None)
        rel = p.relative_to(out)
        _write_parquet(
            t.replace_schema_metadata(None),
            scratch / rel,
            meta,
            row_group_size=SPIKE_ROW_GROUP if rel.parts[0] != "waveforms" else 64 * 1024,
        )
    t2 = time.perf_counter()
    return {
        "wall_s": t2 - t0,
        "cpu_s": _cpu() - c0,
        "h5_read_s": t1 - t0,
        "write_s": t2 - t1,
        "h5_bytes": nbytes,
    }


def child_pynwb(nwb: Path) -> dict:
    import warnings

    warnings.filterwarnings("ignore")
    from pynwb import NWBHDF5IO

    c0, t0 = _cpu(), time.perf_counter()
    n = 0
    with NWBHDF5IO(str(nwb), "r", load_namespaces=True) as io:
        units = io.read().units
        col = units["spike_times"]
        for i in range(len(units)):
            n += len(col[i])
    return {"wall_s": time.perf_counter() - t0, "cpu_s": _cpu() - c0, "spikes": n}


def child_baseline() -> dict:
    import h5py  # noqa: F401
    import pyarrow.parquet  # noqa: F401

    import ecephys_pipeline.extract  # noqa: F401

    return {"wall_s": 0.0, "cpu_s": 0.0}


def child_main(argv: list[str]) -> None:
    mode, args = argv[0], argv[1:]
    if mode == "extract":
        r = child_extract(Path(args[0]), Path(args[1]), args[2])
    elif mode == "floor":
        r = child_floor(Path(args[0]), Path(args[1]), Path(args[2]))
    elif mode == "pynwb":
        r = child_pynwb(Path(args[0]))
    else:
        r = child_baseline()
    ru = resource.getrusage(resource.RUSAGE_SELF)
    r["maxrss_mib"] = ru.ru_maxrss / 1024.0
    r["cpu_s_total"] = ru.ru_utime + ru.ru_stime  # whole child, imports included
    print(json.dumps(r))


# ------------------------------------------------------------------------------------ parent


def run_child(*args: str) -> dict:
    env = {**os.environ, "PYTHONPATH": str(HERE.parents[1] / "src")}
    p = subprocess.run(
        [sys.executable, str(HERE), "--child", *args],
        capture_output=True,
        text=True,
        env=env,
        check=False,
    )
    if p.returncode != 0:
        raise SystemExit(f"child {args[0]} failed:\n{p.stderr}")
    return json.loads(p.stdout.strip().splitlines()[-1])


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(16 << 20):
            h.update(chunk)
    return h.hexdigest()


def du(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        child_main(sys.argv[2:])
        return
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/bench_extract"))
    ap.add_argument("--nwb", type=Path, default=None, help="existing full-size NWB to use")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--skip-pynwb", action="store_true")
    ap.add_argument(
        "--out-root",
        type=Path,
        default=None,
        help="where the Parquet outputs go (default: --workdir; /dev/shm takes the disk out)",
    )
    a = ap.parse_args()
    a.workdir.mkdir(parents=True, exist_ok=True)
    nwb = a.nwb
    if nwb is None:
        nwb = a.workdir / "full" / "session_full.nwb"
        if not nwb.exists():
            from ecephys_pipeline.synth import make_full_size_session

            t0 = time.perf_counter()
            make_full_size_session(nwb, seed=0)
            print(f"generated {nwb} in {time.perf_counter() - t0:.0f} s", file=sys.stderr)

    import h5py

    with h5py.File(nwb, "r") as f:
        u = f["units"]
        n_units = u["id"].shape[0]
        n_spikes = u["spike_times"].shape[0]
        spike_bytes = (
            u["spike_times"].id.get_storage_size() + u["spike_amplitudes"].id.get_storage_size()
        )
        wf_shape = u["waveform_mean"].shape
        n_probes = len([k for k in f["general/extracellular_ephys"] if k != "electrodes"])
        n_channels = f["general/extracellular_ephys/electrodes/id"].shape[0]
    sha = sha256(nwb)
    out_root = a.out_root or a.workdir
    out_root.mkdir(parents=True, exist_ok=True)
    out = out_root / "out"
    scratch = out_root / "floor"

    def fresh(p: Path) -> None:
        shutil.rmtree(p, ignore_errors=True)

    fresh(out)
    run_child("extract", str(nwb), str(out), sha)  # warm-up: page cache + output to copy
    out_bytes = du(out)
    floor_src = out_root / "floor_src"
    fresh(floor_src)
    shutil.copytree(out, floor_src)
    ext, flo = [], []
    for _ in range(a.repeat):
        fresh(out)
        os.sync()  # flush the previous run's dirty pages (not timed)
        ext.append(run_child("extract", str(nwb), str(out), sha))
        fresh(scratch)
        os.sync()
        flo.append(run_child("floor", str(nwb), str(floor_src), str(scratch)))
    base = run_child("baseline")
    pyn = None if a.skip_pynwb else run_child("pynwb", str(nwb))

    def med(rs: list[dict], k: str) -> float:
        return statistics.median(r[k] for r in rs)

    e_wall, f_wall = med(ext, "wall_s"), med(flo, "wall_s")
    e_rss = max(r["maxrss_mib"] for r in ext)
    spike_mib = spike_bytes / 2**20
    report = {
        "date": time.strftime("%Y-%m-%d"),
        "machine": f"{platform.machine()} {os.cpu_count()} cores, "
        f"{os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES') / 2**30:.0f} GiB",
        "python": platform.python_version(),
        "input": {
            "file": str(nwb),
            "bytes": nwb.stat().st_size,
            "units": n_units,
            "spikes": n_spikes,
            "probes": n_probes,
            "channels": n_channels,
            "waveform_mean": list(wf_shape),
        },
        "spike_array_mib": round(spike_mib, 1),
        "output_root": str(out_root),
        "output_bytes": out_bytes,
        "extract_wall_s": [round(r["wall_s"], 2) for r in ext],
        "floor_wall_s": [round(r["wall_s"], 2) for r in flo],
        "floor_h5_read_s": round(med(flo, "h5_read_s"), 2),
        "floor_write_s": round(med(flo, "write_s"), 2),
        "extract_over_floor": round(e_wall / f_wall, 2),
        "extract_cpu_s": round(med(ext, "cpu_s"), 2),
        "floor_cpu_s": round(med(flo, "cpu_s"), 2),
        "extract_over_floor_cpu": round(med(ext, "cpu_s") / med(flo, "cpu_s"), 2),
        "load_average_1m": round(os.getloadavg()[0], 2),
        "extract_peak_rss_mib": round(e_rss, 1),
        "baseline_rss_mib": round(base["maxrss_mib"], 1),
        "extract_rss_over_spike_bytes": round(e_rss / spike_mib, 2),
        "extract_rss_minus_baseline_over_spike_bytes": round(
            (e_rss - base["maxrss_mib"]) / spike_mib, 2
        ),
        "floor_peak_rss_mib": round(max(r["maxrss_mib"] for r in flo), 1),
        "pynwb_spike_times_wall_s": None if pyn is None else round(pyn["wall_s"], 2),
        "pynwb_spike_times_cpu_s": None if pyn is None else round(pyn["cpu_s"], 2),
        "pynwb_peak_rss_mib": None if pyn is None else round(pyn["maxrss_mib"], 1),
        "extract_mb_per_s_of_input": round(nwb.stat().st_size / 1e6 / e_wall, 1),
    }
    print(json.dumps(report, indent=2))
    ok_t = report["extract_over_floor"] <= 1.5
    ok_m = report["extract_rss_over_spike_bytes"] <= 2.0
    print(
        f"\ntargets: wall <= 1.5x floor: {'OK' if ok_t else 'MISS'} "
        f"({report['extract_over_floor']}x); peak RSS <= 2x spike arrays: "
        f"{'OK' if ok_m else 'MISS'} ({report['extract_rss_over_spike_bytes']}x)"
    )


if __name__ == "__main__":
    main()
