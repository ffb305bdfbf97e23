"""LFP store benchmark (not run in CI): conversion vs the floor, and window reads vs AllenSDK.

Builds one synthetic probe LFP NWB of realistic size: the synthetic dataset's LFP file (Allen
layout, opens in AllenSDK) with its data and timestamps replaced, block by block, by
``--samples`` x its channels of realistic float32 LFP (bench_lfp_codec.realistic_lfp), gzip 9
with h5py's default chunking as in the released files. Then, each in a fresh child process
(wall time inside the child, peak RSS from ``getrusage(RUSAGE_SELF).ru_maxrss``):

* ``convert``  ``lfp.convert_lfp(lfp_nwb, session_nwb, store)`` (full rate, overview, CSD);
* ``floor``    the same NWB read with h5py in the same blocks and written with the same codec and
  chunk shape to a bare Zarr array: the cost of I/O + encoding with no logic at all;
* ``read-store`` / ``read-h5py`` / ``read-allensdk``: 10 s x 24 channels at a random offset
  (imports done before the clock starts)
  from the store (``xr.open_zarr(store).lfp.isel(...)``, opening included), from the NWB with
  h5py (``data[a:b, c:d]``), and with AllenSDK 2.16.2 (``session.get_lfp(pid)`` then the same
  ``isel``; the session object is built before the clock starts).

Usage::

    .venv/bin/python bench/bench_lfp.py --workdir /tmp/bench_lfp [--samples 12000000]
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


def build_nwb(workdir: Path, n_samples: int) -> tuple[Path, Path, int]:
    """(lfp_nwb, session_nwb, probe_id): the synthetic file with n_samples of LFP."""
    sys.path.insert(0, str(HERE.parent))
    from bench_lfp_codec import realistic_lfp

    from ecephys_pipeline import synth

    root = synth.make_dataset(workdir / "dataset", seed=0, sessions=1, probes_per_session=1)
    lfp_nwb = next(root.glob("files/session_*/probe_*_lfp.nwb"))
    session_nwb = next(root.glob("files/session_*/session_*.nwb"))
    pid = int(lfp_nwb.name.split("_")[1])
    big = workdir / f"probe_{pid}_lfp.nwb"
    if big.exists() and json.loads((workdir / "built.json").read_text()) == {"n": n_samples}:
        return big, session_nwb, pid
    shutil.copy(lfp_nwb, big)
    with h5py.File(big, "r+") as f:
        series = f[f"acquisition/probe_{pid}_lfp/probe_{pid}_lfp_data"]
        n_ch = series["data"].shape[1]
        assert n_ch <= 95, "realistic_lfp makes 95 channels"
        attrs = {k: series["data"].attrs[k] for k in series["data"].attrs}
        t_attrs = {k: series["timestamps"].attrs[k] for k in series["timestamps"].attrs}
        t0 = float(series["timestamps"][0])
        del series["data"], series["timestamps"]
        data = series.create_dataset(
            "data", shape=(n_samples, n_ch), dtype="f4", chunks=True, compression="gzip",
            compression_opts=9,
        )  # fmt: skip
        ts = series.create_dataset(
            "timestamps", shape=(n_samples,), dtype="f8", chunks=True, compression="gzip",
            compression_opts=9,
        )  # fmt: skip
        data.attrs.update(attrs)
        ts.attrs.update(t_attrs)
        block = 1 << 18
        for i, a in enumerate(range(0, n_samples, block)):
            b = min(a + block, n_samples)
            data[a:b] = realistic_lfp((block + 1) / 1250.0, seed=i)[: b - a, :n_ch]
            ts[a:b] = t0 + np.arange(a, b) / 1250.0
    (workdir / "built.json").write_text(json.dumps({"n": n_samples}))
    return big, session_nwb, pid


# ------------------------------------------------------------------------------ children


def child_convert(lfp_nwb: str, session_nwb: str, out: str) -> dict:
    from ecephys_pipeline import lfp

    t = time.perf_counter()
    lfp.convert_lfp(lfp_nwb, session_nwb, out)
    return {"seconds": time.perf_counter() - t}


def child_floor(lfp_nwb: str, pid: str, out: str) -> dict:
    import zarr

    from ecephys_pipeline import lfp

    t = time.perf_counter()
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
    return {"seconds": time.perf_counter() - t}


def _window(n: int, n_ch: int) -> tuple[int, int]:
    rng = np.random.default_rng(7)
    a = int(rng.integers(0, n - int(WINDOW_S * 1250)))
    c = int(rng.integers(0, n_ch - WINDOW_CHANNELS))
    return a, c


def child_read_store(store: str) -> dict:
    import xarray as xr
    import zarr  # noqa: F401 - imported before the clock starts, as in a session that uses it

    t = time.perf_counter()
    lfp = xr.open_zarr(store).lfp  # reads the metadata and the time + channel coordinates
    opened = time.perf_counter()
    a, c = _window(*lfp.shape)
    x = lfp.isel(time=slice(a, a + int(WINDOW_S * 1250)), channel=slice(c, c + WINDOW_CHANNELS))
    values = x.values
    done = time.perf_counter()
    return {
        "seconds": done - t,
        "open_seconds": opened - t,
        "window_seconds": done - opened,
        "sum": float(np.float64(values).sum()),
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


def run_child(*args: str) -> dict:
    env = dict(os.environ, PYTHONPATH=str(HERE.parents[1] / "src"))
    out = subprocess.run(
        [sys.executable, str(HERE), "--child", *args], capture_output=True, text=True, env=env
    )
    if out.returncode:
        raise RuntimeError(out.stderr[-3000:])
    return json.loads(out.stdout.strip().splitlines()[-1])


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
    ap.add_argument("--allensdk", default=os.environ.get("ALLENSDK_PYTHON"))
    args = ap.parse_args()
    args.workdir.mkdir(parents=True, exist_ok=True)
    t = time.perf_counter()
    lfp_nwb, session_nwb, pid = build_nwb(args.workdir, args.samples)
    with h5py.File(lfp_nwb, "r") as f:
        data = f[f"acquisition/probe_{pid}_lfp/probe_{pid}_lfp_data/data"]
        shape, chunks = data.shape, data.chunks
    raw = shape[0] * shape[1] * 4
    size = du(lfp_nwb) / 1e9
    print(f"NWB {lfp_nwb}: {shape} float32 = {raw / 1e9:.2f} GB raw, {size:.2f} GB on disk "
          f"(gzip 9, HDF5 chunks {chunks}); built in {time.perf_counter() - t:.0f} s")  # fmt: skip
    print(f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
          f"load {os.getloadavg()}")  # fmt: skip
    store, floor = args.workdir / "store.zarr", args.workdir / "floor.zarr"
    for p in (store, floor):
        shutil.rmtree(p, ignore_errors=True)
    run_child("read-h5py", str(lfp_nwb), str(pid))  # warm the page cache (not reported)
    rows = {
        "convert": run_child("convert", str(lfp_nwb), str(session_nwb), str(store)),
        "floor": run_child("floor", str(lfp_nwb), str(pid), str(floor)),
        "read-store": run_child("read-store", str(store)),
        "read-h5py": run_child("read-h5py", str(lfp_nwb), str(pid)),
    }
    if args.allensdk:
        a, c = _window(*shape)
        out = subprocess.run(
            [args.allensdk, "-c", ALLENSDK_CHILD, str(session_nwb), str(lfp_nwb), str(pid),
             str(a), str(c), str(int(WINDOW_S * 1250)), str(WINDOW_CHANNELS)],
            capture_output=True, text=True,
        )  # fmt: skip
        if out.returncode:
            raise RuntimeError(out.stderr[-3000:])
        rows["read-allensdk"] = json.loads(out.stdout.strip().splitlines()[-1])
    print("| measurement | seconds | peak RSS (MiB) |")
    print("|---|---:|---:|")
    for name, r in rows.items():
        print(f"| {name} | {r['seconds']:.3f} | {r['maxrss_mib']:.0f} |")
    r = rows["read-store"]
    print(f"read-store = open {r['open_seconds']:.3f} s + window {r['window_seconds']:.3f} s")
    sums = {r["sum"] for k, r in rows.items() if k.startswith("read")}
    print(f"window sums agree: {len(sums) == 1} ({sums})")
    print(
        f"store {du(store) / 1e9:.2f} GB (overview + CSD included), floor {du(floor) / 1e9:.2f} GB"
    )
    print(f"convert / floor = {rows['convert']['seconds'] / rows['floor']['seconds']:.2f}")
    if "read-allensdk" in rows:
        ratio = rows["read-allensdk"]["seconds"] / rows["read-store"]["seconds"]
        print(f"get_lfp window / store window = {ratio:.0f}x")


if __name__ == "__main__":
    main()
