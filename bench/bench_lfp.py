"""LFP store benchmark (not run in CI): conversion vs the floor, and window reads vs AllenSDK.

Builds one synthetic probe LFP NWB of realistic size (:func:`build_nwb`, cached in --workdir):
the synthetic dataset's LFP file (Allen layout, opens in AllenSDK) of a probe with
``--channels`` LFP channels, its data and timestamps replaced, block by block, by ``--samples``
rows of realistic float32 LFP (bench_lfp_codec.realistic_lfp), gzip 9 with h5py's default
chunking for the full shape as in the released files. Then, each in a fresh child process
(wall and CPU time inside the child, peak RSS = the child's ``VmHWM``, the 1-minute load
average before and after it):

* ``convert``  ``lfp.convert_lfp(lfp_nwb, session_nwb, store)`` (full rate, overview, CSD);
  ``--baseline-src`` adds the same with another checkout's package, before each ``convert``
  (its store is kept beside, ``store-baseline.zarr``, and read like ours);
* ``floor``    the same NWB read with h5py in the same blocks and written with the same codec and
  chunk shape to a bare Zarr array: the cost of I/O + encoding with no logic at all;
* ``read-store`` / ``read-h5py`` / ``read-allensdk``: 10 s x 24 channels at a random offset
  (imports done before the clock starts)
  from the store (``xr.open_zarr(store).lfp.isel(...)``, opening included; ``(no index)``:
  opened with ``create_default_indexes=False``, so the 12 M-sample time coordinate is not
  loaded whole), from the NWB with h5py (``data[a:b, c:d]``), and with AllenSDK 2.16.2
  (``session.get_lfp(pid)`` then the same ``isel``; the session object is built before the
  clock starts). The store reads are repeated in ``--reads`` fresh children (median reported,
  with min and max): the open of a full-size store takes tenths of a second, where one
  scheduler hiccup on a shared machine shows.

Usage::

    .venv/bin/python bench/bench_lfp.py --workdir /tmp/bench_lfp [--samples 12000000]
        [--channels 95] [--repeat N] [--reads N] [--baseline-src DIR]
        [--allensdk .venv-allensdk/bin/python]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np

HERE = Path(__file__).resolve()
WINDOW_S = 10.0
WINDOW_CHANNELS = 24


BUILD_VERSION = 2
"""Bump when the built file's content changes: it is part of the cached file's name."""
GEN_BLOCK_ROWS = 4
"""HDF5 chunk rows of LFP generated and written per step (4 x 46,875 samples at full size)."""


def _fast_length(n: int) -> int:
    """The smallest 2^a 3^b 5^c >= n: an FFT length numpy's pocketfft handles fast."""
    best = 1 << max(n - 1, 0).bit_length()
    p5 = 1
    while p5 < best:
        p35 = p5
        while p35 < best:
            m = p35
            while m < n:
                m *= 2
            best = min(best, m)
            p35 *= 3
        p5 *= 5
    return best


def _lfp_block(seed: int, rows: int, n_ch: int) -> np.ndarray:
    """rows x n_ch of realistic_lfp (one independent stretch per block), in a worker process."""
    sys.path.insert(0, str(HERE.parent))
    from bench_lfp_codec import FS, realistic_lfp

    n = _fast_length(rows)
    return np.ascontiguousarray(realistic_lfp((n + 0.5) / FS, seed=seed)[:rows, :n_ch])


def build_nwb(workdir: Path, n_samples: int, n_channels: int = 95) -> tuple[Path, Path, int]:
    """(lfp_nwb, session_nwb, probe_id): a synthetic probe LFP file with n_samples x n_channels.

    The probe is the first of the synthetic session (seed 0, 6 probes) with ``n_channels`` LFP
    channels; its file is copied and its data and timestamps replaced by ``n_samples`` rows of
    realistic LFP, gzip 9 with h5py's default chunks for the full shape (as the released files,
    written by hdmf's H5DataIO). The LFP is generated in a worker process one block of
    :data:`GEN_BLOCK_ROWS` HDF5 chunk rows ahead of the writes (so generation overlaps the gzip
    9 compression, which is the floor), and each block fills whole chunks (none is written
    twice). The result is cached in ``workdir`` under a name holding every parameter and
    :data:`BUILD_VERSION`; it is built at a temporary name and renamed when complete.
    """
    from concurrent.futures import ProcessPoolExecutor

    from ecephys_pipeline import atomic, synth

    root = synth.make_dataset(workdir / "dataset", seed=0, sessions=1, probes_per_session=6)
    session_nwb = next(root.glob("files/session_*/session_*.nwb"))
    found = []
    for lfp_nwb in sorted(root.glob("files/session_*/probe_*_lfp.nwb")):
        pid = int(lfp_nwb.name.split("_")[1])
        with h5py.File(lfp_nwb, "r") as f:
            found.append(f[f"{_series(pid)}/data"].shape[1])
        if found[-1] == n_channels:
            break
    else:
        raise SystemExit(f"no synthetic probe has {n_channels} LFP channels; pick one of {found}")
    big = workdir / f"lfp_{n_samples}x{n_channels}_v{BUILD_VERSION}" / lfp_nwb.name
    if big.exists():
        return big, session_nwb, pid
    with atomic.output_path(big) as tmp:
        shutil.copy(lfp_nwb, tmp)
        with h5py.File(tmp, "r+") as f:
            series = f[_series(pid)]
            attrs = dict(series["data"].attrs)
            t_attrs = dict(series["timestamps"].attrs)
            t = series["timestamps"][()]
            t0, fs = float(t[0]), (len(t) - 1) / float(t[-1] - t[0])
            del series["data"], series["timestamps"]
            data = series.create_dataset(
                "data", shape=(n_samples, n_channels), dtype="f4", chunks=True,
                compression="gzip", compression_opts=9,
            )  # fmt: skip
            ts = series.create_dataset(
                "timestamps", shape=(n_samples,), dtype="f8", chunks=True, compression="gzip",
                compression_opts=9,
            )  # fmt: skip
            data.attrs.update(attrs)
            ts.attrs.update(t_attrs)
            block = data.chunks[0] * GEN_BLOCK_ROWS
            starts = range(0, n_samples, block)
            with ProcessPoolExecutor(max_workers=1) as pool:
                ahead = [
                    pool.submit(_lfp_block, i, min(block, n_samples - a), n_channels)
                    for i, a in enumerate(starts[:2])
                ]
                for i, a in enumerate(starts):
                    x = ahead.pop(0).result()
                    if i + 2 < len(starts):
                        b = starts[i + 2]
                        ahead.append(
                            pool.submit(_lfp_block, i + 2, min(block, n_samples - b), n_channels)
                        )
                    data[a : a + len(x)] = x
                    ts[a : a + len(x)] = t0 + np.arange(a, a + len(x)) / fs
    return big, session_nwb, pid


def _series(pid: int) -> str:
    return f"acquisition/probe_{pid}_lfp/probe_{pid}_lfp_data"


# ------------------------------------------------------------------------------ children


def child_convert(lfp_nwb: str, session_nwb: str, out: str) -> dict:
    from ecephys_pipeline import lfp

    t, cpu = time.perf_counter(), time.process_time()
    lfp.convert_lfp(lfp_nwb, session_nwb, out)
    return {"seconds": time.perf_counter() - t, "cpu_seconds": time.process_time() - cpu}


def child_floor(lfp_nwb: str, pid: str, out: str) -> dict:
    import zarr

    from ecephys_pipeline import lfp

    t, cpu = time.perf_counter(), time.process_time()
    with h5py.File(lfp_nwb, "r", rdcc_nbytes=64 << 20, rdcc_nslots=100_003) as f:
        data = f[f"acquisition/probe_{pid}_lfp/probe_{pid}_lfp_data/data"]
        n, n_ch = data.shape
        arr = zarr.create_array(
            store=out, shape=(n, n_ch), chunks=(lfp.TIME_CHUNK, lfp.CHANNEL_CHUNK),
            dtype=data.dtype, zarr_format=2, compressors=lfp.compressor(), fill_value=None,
        )  # fmt: skip
        block = lfp.TIME_CHUNK * lfp.BLOCK_CHUNKS
        for a in range(0, n, block):
            arr[a : a + block] = data[a : a + block]
    return {"seconds": time.perf_counter() - t, "cpu_seconds": time.process_time() - cpu}


def _window(n: int, n_ch: int) -> tuple[int, int]:
    rng = np.random.default_rng(7)
    a = int(rng.integers(0, n - int(WINDOW_S * 1250)))
    c = int(rng.integers(0, n_ch - WINDOW_CHANNELS))
    return a, c


def child_read_store(store: str, indexes: str = "default") -> dict:
    """The window from the store; ``indexes="none"`` opens it without xarray's default indexes
    (the time coordinate is then read for the window only, not loaded whole into an index)."""
    import xarray as xr
    import zarr  # noqa: F401 - imported before the clock starts, as in a session that uses it

    t = time.perf_counter()
    # reads the metadata and the channel coordinates, and by default the whole time coordinate
    lfp = xr.open_zarr(store, create_default_indexes=indexes == "default").lfp
    opened = time.perf_counter()
    a, c = _window(*lfp.shape)
    x = lfp.isel(time=slice(a, a + int(WINDOW_S * 1250)), channel=slice(c, c + WINDOW_CHANNELS))
    values = x.values
    times = x.time.values  # the window's times (already in memory with the default index)
    done = time.perf_counter()
    return {
        "seconds": done - t,
        "open_seconds": opened - t,
        "window_seconds": done - opened,
        "sum": float(np.float64(values).sum()),
        "first_time": float(times[0]),
    }


def child_read_h5py(lfp_nwb: str, pid: str) -> dict:
    t = time.perf_counter()
    with h5py.File(lfp_nwb, "r") as f:
        data = f[f"acquisition/probe_{pid}_lfp/probe_{pid}_lfp_data/data"]
        a, c = _window(*data.shape)
        values = data[a : a + int(WINDOW_S * 1250), c : c + WINDOW_CHANNELS]
    return {"seconds": time.perf_counter() - t, "sum": float(np.float64(values).sum())}


ALLENSDK_CHILD = """
import json, resource, sys, time, warnings
warnings.simplefilter("ignore")
from functools import partial
import numpy as np
from allensdk.brain_observatory.ecephys.ecephys_project_cache import read_nwb
from allensdk.brain_observatory.ecephys.ecephys_session import EcephysSession
session_nwb, lfp_nwb, pid, a, c, n, k = sys.argv[1:8]
pid, a, c, n, k = int(pid), int(a), int(c), int(n), int(k)
session = EcephysSession.from_nwb_path(
    session_nwb, api_kwargs={"probe_lfp_paths": {pid: partial(read_nwb, lfp_nwb)}}
)
t = time.perf_counter()
lfp = session.get_lfp(pid, mask_invalid_intervals=False)
values = lfp.isel(time=slice(a, a + n), channel=slice(c, c + k)).values
seconds = time.perf_counter() - t
rss = [int(x.split()[1]) / 1024 for x in open("/proc/self/status") if x.startswith("VmHWM:")][0]
print(json.dumps({"seconds": seconds, "sum": float(np.float64(values).sum()), "maxrss_mib": rss}))
"""


def peak_rss_mib() -> float:
    """VmHWM of this process (MiB). Not ru_maxrss: Linux keeps the forking parent's ru_maxrss
    across execve, so a child started by a big parent would report the parent's peak."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024.0
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def child_main(argv: list[str]) -> None:
    kind, *args = argv
    r = {
        "convert": child_convert,
        "floor": child_floor,
        "read-store": child_read_store,
        "read-h5py": child_read_h5py,
    }[kind](*args)
    r["maxrss_mib"] = peak_rss_mib()
    print(json.dumps(r))


def run_child(*args: str, python: str | None = None, src: Path | None = None) -> dict:
    """Run one measurement in a fresh process (this file's ``--child`` with ``src`` (default:
    this checkout's src/) as the package, or ``python -c CODE`` when ``python`` is given); its
    JSON result plus the 1-minute load average before and after."""
    env = dict(os.environ, PYTHONPATH=str(src or HERE.parents[1] / "src"))
    cmd = [python, "-c", *args] if python else [sys.executable, str(HERE), "--child", *args]
    load = os.getloadavg()[0]
    out = subprocess.run(cmd, capture_output=True, text=True, env=None if python else env)
    if out.returncode:
        raise RuntimeError(out.stderr[-3000:])
    r = json.loads(out.stdout.strip().splitlines()[-1])
    r["load"] = (load, os.getloadavg()[0])
    return r


def median_child(n: int, *args: str) -> dict:
    """:func:`run_child` ``n`` times: the run of median wall time, with ``n``, ``min``, ``max``."""
    runs = sorted((run_child(*args) for _ in range(max(n, 1))), key=lambda r: r["seconds"])
    mid = dict(runs[len(runs) // 2])
    mid.update(n=len(runs), min=runs[0]["seconds"], max=runs[-1]["seconds"])
    return mid


def mem_available_gb() -> float:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) / 1024**2
    return float("nan")


def du(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        child_main(sys.argv[2:])
        return
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/bench_lfp"))
    ap.add_argument("--samples", type=int, default=12_000_000)
    ap.add_argument("--channels", type=int, default=95, help="91, 94 or 95 (synthetic probes)")
    ap.add_argument("--allensdk", default=os.environ.get("ALLENSDK_PYTHON"))
    ap.add_argument(
        "--repeat", type=int, default=1,
        help="convert + floor pairs (alternated); 0: only the reads, of the store in --workdir",
    )  # fmt: skip
    ap.add_argument("--reads", type=int, default=5, help="fresh children per store read (median)")
    ap.add_argument(
        "--baseline-src", type=Path,
        help="also convert with the package in this src/ (e.g. `git archive` of an older commit)",
    )  # fmt: skip
    args = ap.parse_args()
    args.workdir.mkdir(parents=True, exist_ok=True)
    t = time.perf_counter()
    lfp_nwb, session_nwb, pid = build_nwb(args.workdir, args.samples, args.channels)
    with h5py.File(lfp_nwb, "r") as f:
        data = f[f"acquisition/probe_{pid}_lfp/probe_{pid}_lfp_data/data"]
        shape, chunks = data.shape, data.chunks
    raw = shape[0] * shape[1] * 4
    size = du(lfp_nwb) / 1e9
    print(f"NWB {lfp_nwb}: {shape} float32 = {raw / 1e9:.2f} GB raw, {size:.2f} GB on disk "
          f"(gzip 9, HDF5 chunks {chunks}); ready in {time.perf_counter() - t:.0f} s")  # fmt: skip
    print(f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
          f"load {os.getloadavg()}")  # fmt: skip
    store, floor = args.workdir / "store.zarr", args.workdir / "floor.zarr"
    base_store = args.workdir / "store-baseline.zarr"
    if args.repeat < 1 and not (store / ".zgroup").is_file():
        raise SystemExit(f"--repeat 0 reads the store of an earlier run, and {store} is not one")
    run_child("read-h5py", str(lfp_nwb), str(pid))  # warm the page cache (not reported)
    rows: list[tuple[str, dict]] = []
    ratios, base_ratios = [], []
    for _ in range(args.repeat):  # alternated, so a change of load hits both sides
        for p in (store, floor, base_store):
            shutil.rmtree(p, ignore_errors=True)
        if args.baseline_src:
            rows.append(("convert (baseline)", run_child(
                "convert", str(lfp_nwb), str(session_nwb), str(base_store), src=args.baseline_src
            )))  # fmt: skip
        rows.append(("convert", run_child("convert", str(lfp_nwb), str(session_nwb), str(store))))
        rows.append(("floor", run_child("floor", str(lfp_nwb), str(pid), str(floor))))
        ratios.append(rows[-2][1]["seconds"] / rows[-1][1]["seconds"])
        if args.baseline_src:
            base_ratios.append(rows[-3][1]["seconds"] / rows[-1][1]["seconds"])
    reads = [("read-store", (str(store),)), ("read-store (no index)", (str(store), "none"))]
    if (base_store / ".zgroup").is_file():
        reads.insert(1, ("read-store (baseline)", (str(base_store),)))
    for name, child_args in reads:
        rows.append((name, median_child(args.reads, "read-store", *child_args)))
    rows.append(("read-h5py", run_child("read-h5py", str(lfp_nwb), str(pid))))
    if args.allensdk:
        need = 1.3 * raw / 1e9 + 1.0  # measured: 4.9 GB peak for 4.56 GB of samples
        if mem_available_gb() < need:
            print(f"read-allensdk skipped: get_lfp loads the whole array; {need:.1f} GB needed, "
                  f"{mem_available_gb():.1f} GB available")  # fmt: skip
        else:
            a, c = _window(*shape)
            rows.append(("read-allensdk", run_child(
                ALLENSDK_CHILD, str(session_nwb), str(lfp_nwb), str(pid), str(a), str(c),
                str(int(WINDOW_S * 1250)), str(WINDOW_CHANNELS), python=args.allensdk,
            )))  # fmt: skip
    print("| measurement | seconds | CPU s | peak RSS (MiB) | load (1 min) before → after |")
    print("|---|---:|---:|---:|---|")
    for name, r in rows:
        cpu = f"{r['cpu_seconds']:.1f}" if "cpu_seconds" in r else ""
        load = f"{r['load'][0]:.2f} → {r['load'][1]:.2f}"
        print(f"| {name} | {r['seconds']:.3f} | {cpu} | {r['maxrss_mib']:.0f} | {load} |")
    for name, _ in reads:
        r = dict(rows)[name]
        print(f"{name} = open {r['open_seconds']:.3f} s + window {r['window_seconds']:.3f} s "
              f"(median of {r['n']}; total min {r['min']:.3f}, max {r['max']:.3f})")  # fmt: skip
    sums = {r["sum"] for k, r in rows if k.startswith("read")}
    print(f"window sums agree: {len(sums) == 1} ({sums})")
    if ratios:
        print(f"store {du(store) / 1e9:.2f} GB (overview + CSD included), "
              f"floor {du(floor) / 1e9:.2f} GB")  # fmt: skip
        print("convert / floor = " + ", ".join(f"{x:.2f}" for x in ratios))
    if base_ratios:
        print("convert (baseline) / floor = " + ", ".join(f"{x:.2f}" for x in base_ratios))
    if "read-allensdk" in dict(rows):
        for name, _ in reads:
            ratio = dict(rows)["read-allensdk"]["seconds"] / dict(rows)[name]["seconds"]
            print(f"get_lfp window / {name} = {ratio:.0f}x")


if __name__ == "__main__":
    main()
