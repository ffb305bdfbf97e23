"""Download throughput: ecephys_pipeline.download against curl and a plain requests stream.

Not run in CI. Serves one >=1 GiB valid HDF5 file with the fake warehouse over loopback and
measures

  (a) download_file (1 connection; sha256 + HDF5 open + fsync included) vs ``curl -o`` on the
      same URL, and
  (b) with a per-connection ``bandwidth`` fault (default 20 MB/s, like a server that caps each
      connection), download_file with ``connections`` = 4 and 8 vs one plain streamed
      ``requests`` GET.

    .venv/bin/python bench/bench_download.py [--size-mib 1024] [--cap-mbps 20] [--repeat 3]

Prints a table (median of ``--repeat`` runs for (a), one run each for (b)).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import h5py
import numpy as np
import requests

from ecephys_pipeline.download import Options, download_file

MiB = 1 << 20
KEY = "session_1/session_1.nwb"


def make_dataset(root: Path, size_mib: int) -> Path:
    """A dataset dir whose session_1.nwb is a valid HDF5 file of ~size_mib random bytes."""
    nwb = root / "files" / KEY
    if nwb.exists() and nwb.stat().st_size >= size_mib * MiB:
        return nwb
    nwb.parent.mkdir(parents=True, exist_ok=True)
    (root / "warehouse").mkdir(exist_ok=True)
    (root / "warehouse" / "WellKnownFile.json").write_text("[]")
    (root / "dataset.json").write_text(json.dumps({"format": 1, "seed": 0, "params": {}}))
    rng = np.random.default_rng(0)
    step = 64 * MiB
    tmp = nwb.with_suffix(".tmp")
    with h5py.File(tmp, "w") as f:
        ds = f.create_dataset("acquisition/raw", shape=(size_mib * MiB,), dtype=np.uint8)
        for start in range(0, size_mib * MiB, step):
            n = min(step, size_mib * MiB - start)
            ds[start : start + n] = np.frombuffer(rng.bytes(n), dtype=np.uint8)
    os.replace(tmp, nwb)
    return nwb


class ServerProcess:
    """The fake warehouse in its own process (its CLI), so the server does not share the client's
    GIL: the same conditions for curl and for us."""

    def __init__(self, data_dir: Path, workdir: Path):
        self.port_file = workdir / "port"
        self.port_file.unlink(missing_ok=True)
        cmd = [
            sys.executable,
            "-m",
            "ecephys_pipeline.fake",
            "--data",
            str(data_dir),
            "--port",
            "0",
            "--port-file",
            str(self.port_file),
        ]
        self.proc = subprocess.Popen(cmd)
        deadline = time.monotonic() + 30
        while not (self.port_file.exists() and self.port_file.read_text().strip()):
            if time.monotonic() > deadline or self.proc.poll() is not None:
                self.proc.kill()
                raise RuntimeError("the fake warehouse did not start")
            time.sleep(0.05)
        self.url = self.port_file.read_text().strip().rstrip("/")

    def set_faults(self, faults: list[dict]) -> None:
        requests.post(f"{self.url}/_fake/faults", json=faults, timeout=10).raise_for_status()

    def clear_faults(self) -> None:
        requests.delete(f"{self.url}/_fake/faults", timeout=10).raise_for_status()

    def __enter__(self) -> ServerProcess:
        return self

    def __exit__(self, *exc) -> None:
        self.proc.terminate()
        self.proc.wait(10)


def drop_cache_copy(dest: Path) -> None:
    """Remove the previous copy and flush dirty pages, so a run never pays for the last one."""
    for p in dest.parent.glob(dest.name + "*"):
        p.unlink()
    os.sync()


def timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def run_curl(url: str, dest: Path) -> None:
    subprocess.run(["curl", "-sS", "--fail", "-o", str(dest), url], check=True)


def run_curl_verified(url: str, dest: Path) -> None:
    """curl with the guarantees download_file gives: sha256 of the file, and on disk."""
    run_curl(url, dest)
    subprocess.run(["sha256sum", str(dest)], check=True, stdout=subprocess.DEVNULL)
    with open(dest, "rb") as f:
        os.fsync(f.fileno())


def run_requests_plain(url: str, dest: Path) -> None:
    with requests.get(url, stream=True, timeout=(10, 60)) as r:
        r.raise_for_status()
        with open(dest, "wb") as f:
            for chunk in r.iter_content(MiB):
                f.write(chunk)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size-mib", type=int, default=1024)
    ap.add_argument("--cap-mbps", type=float, default=20.0, help="per-connection cap, MB/s")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()) / "bench-download")
    args = ap.parse_args()

    if shutil.which("curl") is None:
        sys.exit("curl is not installed (apt-get install -y curl)")
    data_dir = args.workdir / "dataset"
    out = args.workdir / "out"
    out.mkdir(parents=True, exist_ok=True)
    t = timed(lambda: make_dataset(data_dir, args.size_mib))
    src = data_dir / "files" / KEY
    size = src.stat().st_size
    print(f"file: {size / 1e9:.2f} GB valid HDF5 ({t:.1f} s to make/reuse)", flush=True)
    rows: list[tuple[str, float, float]] = []  # (what, seconds, MB/s)

    def add(what: str, secs: float) -> float:
        mbps = size / secs / 1e6
        rows.append((what, secs, mbps))
        print(f"  {what:<55} {secs:7.2f} s {mbps:8.1f} MB/s", flush=True)
        return mbps

    with ServerProcess(data_dir, args.workdir) as fw:
        url = f"{fw.url}/visual-coding-neuropixels/ecephys-cache/{KEY}"
        dest = out / "session_1.nwb"
        # (a) unthrottled loopback, median of --repeat
        runs = {
            "curl": lambda: run_curl(url, dest),
            "curl_verified": lambda: run_curl_verified(url, dest),
            "plain": lambda: run_requests_plain(url, dest),
            "ours": lambda: download_file(url, dest),
        }
        times: dict[str, list[float]] = {k: [] for k in runs}
        for _ in range(args.repeat):  # interleaved, so load changes hit every variant alike
            for k, fn in runs.items():
                drop_cache_copy(dest)
                times[k].append(timed(fn))
                assert dest.stat().st_size == size
        drop_cache_copy(dest)
        med = {k: statistics.median(v) for k, v in times.items()}
        a_curl = add("(a) curl -o", med["curl"])
        a_curl_v = add("(a) curl -o, then sha256sum + fsync", med["curl_verified"])
        a_plain = add("(a) plain requests stream (no hash, no fsync)", med["plain"])
        a_ours = add("(a) download_file, 1 conn (sha256+HDF5 open+fsync)", med["ours"])

        # (b) per-connection cap
        cap = int(args.cap_mbps * 1e6)
        fw.set_faults([{"kind": "bandwidth", "match": "session_1.nwb", "bytes_per_second": cap}])
        drop_cache_copy(dest)
        b_plain = add(
            f"(b) plain requests stream, cap {args.cap_mbps:g} MB/s/conn",
            timed(lambda: run_requests_plain(url, dest)),
        )
        b = {}
        for n in (4, 8):
            drop_cache_copy(dest)
            b[n] = add(
                f"(b) download_file connections={n}, same cap",
                timed(
                    lambda n=n: download_file(url, dest, options=Options(connections_per_file=n))
                ),
            )
        fw.clear_faults()
        drop_cache_copy(dest)

    print()
    py = f"{platform.python_implementation()} {platform.python_version()}"
    print(
        f"date: {datetime.date.today()}  machine: {platform.machine()}, {os.cpu_count()} cores, "
        f"{py}, {platform.system()}"
    )
    print("| measurement | seconds | MB/s |")
    print("|---|---:|---:|")
    for what, secs, mbps in rows:
        print(f"| {what} | {secs:.2f} | {mbps:.1f} |")
    print()
    print(
        f"(a) download_file / curl = {a_ours / a_curl:.2f}; "
        f"download_file / (curl + sha256sum + fsync) = {a_ours / a_curl_v:.2f}; "
        f"plain requests / curl = {a_plain / a_curl:.2f}"
    )
    all_runs = {k: [round(x, 2) for x in v] for k, v in times.items()}
    print(f"(a) all runs, seconds: {json.dumps(all_runs)}")
    for n, v in b.items():
        print(f"(b) connections={n} / single capped stream = {v / b_plain:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
