"""Download throughput from a real static server: download_file against curl, both from nginx.

Not run in CI. Needs nginx (Debian: ``apt-get install -y nginx-light``) and curl. Starts its own
nginx master as a child process (generated config in a temp dir, ``daemon off``, 127.0.0.1 on a
free port, ``sendfile on``; no system service), serving one >=1 GiB valid HDF5 file (written
with bench_download.py's ``make_dataset``) at two locations: as is, and under ``/capped/`` with
nginx's per-connection ``limit_rate`` (default 20 MB/s). It measures, in one run:

  (a) ``curl -o`` vs ``download_file`` with one connection (its record holds the sha256; the
      engine's Digester computes the dandi-etag in the same pass), interleaved, median of
      ``--repeat``; the previous copy is deleted and ``os.sync()`` run before each run (not
      timed);
  (b) under the cap: download_file with 1 connection vs ``connections_per_file`` 4 and 8,
      interleaved, median of ``--repeat``; ideal = n x the single-connection speed.

    .venv/bin/python bench/bench_nginx.py [--size-mib 1024] [--cap-mbps 20] [--repeat 3]

Prints a table, the ratios, every run and the load average before and after.
"""

from __future__ import annotations

import argparse
import datetime
import hashlib
import json
import os
import platform
import resource
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import requests

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_download import KEY, drop_cache_copy, make_dataset, timed  # noqa: E402

from ecephys_pipeline.download import Options, download_file  # noqa: E402
from ecephys_pipeline.download.digests import Digester  # noqa: E402

NGINX_CONF = """\
worker_processes 1;
error_log {prefix}/error.log warn;
pid {prefix}/nginx.pid;
events {{ worker_connections 64; }}
http {{
    access_log off;
    default_type application/octet-stream;
    sendfile on;
    tcp_nopush on;
    client_body_temp_path {prefix}/client_body;
    proxy_temp_path {prefix}/proxy;
    fastcgi_temp_path {prefix}/fastcgi;
    uwsgi_temp_path {prefix}/uwsgi;
    scgi_temp_path {prefix}/scgi;
    server {{
        listen 127.0.0.1:{port};
        root {root};
        location /capped/ {{
            alias {root}/;
            limit_rate {cap};
        }}
    }}
}}
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Nginx:
    """An nginx master of our own (not the system service), serving ``root`` on 127.0.0.1."""

    def __init__(self, root: Path, cap_bps: int):
        nginx = shutil.which("nginx") or "/usr/sbin/nginx"
        if not os.path.exists(nginx):
            sys.exit("nginx is not installed (apt-get install -y nginx-light)")
        self.prefix = Path(tempfile.mkdtemp(prefix="bench-nginx-"))
        port = free_port()
        conf = self.prefix / "nginx.conf"
        conf.write_text(NGINX_CONF.format(prefix=self.prefix, port=port, root=root, cap=cap_bps))
        self.proc = subprocess.Popen(
            [nginx, "-p", str(self.prefix), "-c", str(conf), "-g", "daemon off;"]
        )
        self.url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 10
        while True:
            try:
                requests.head(self.url + "/", timeout=1)
                break
            except requests.ConnectionError:
                if time.monotonic() > deadline or self.proc.poll() is not None:
                    self.stop()
                    log = (self.prefix / "error.log").read_text(errors="replace")
                    sys.exit(f"nginx did not start: {log.strip()[-300:]}")
                time.sleep(0.05)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()  # SIGTERM: nginx's fast shutdown
            self.proc.wait(10)
        shutil.rmtree(self.prefix, ignore_errors=True)

    def __enter__(self) -> Nginx:
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


def check_served(url: str, size: int) -> None:
    """nginx serves the file whole and answers a Range with 206, or the bench stops saying why."""
    r = requests.head(url, timeout=10)
    if r.status_code != 200 or int(r.headers.get("Content-Length", -1)) != size:
        sys.exit(f"nginx answers {url} with HTTP {r.status_code} (a 403: make the file readable)")
    r = requests.get(url, headers={"Range": "bytes=1-4"}, timeout=10)
    if r.status_code != 206 or len(r.content) != 4:
        sys.exit(f"nginx does not serve ranges of {url} (HTTP {r.status_code})")


def run_curl(url: str, dest: Path) -> None:
    subprocess.run(["curl", "-sS", "--fail", "-o", str(dest), url], check=True)


def run_ours(url: str, dest: Path, expect: Digester, connections: int = 1) -> None:
    rec = download_file(url, dest, options=Options(connections_per_file=connections))
    if (rec.size, rec.sha256) != (expect.size, expect.sha256):
        sys.exit(f"download_file recorded {rec.size} bytes, sha256 {rec.sha256}: wrong")
    etag = getattr(rec, "dandi_etag", None)
    if etag is not None and etag != expect.dandi_etag:
        sys.exit(f"download_file recorded dandi-etag {etag}, expected {expect.dandi_etag}")


def cpu_seconds() -> float:
    """User + system CPU of this process and its waited-for children (curl) so far."""
    me, kids = (resource.getrusage(w) for w in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN))
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


def loadavg() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size-mib", type=int, default=1024)
    ap.add_argument("--cap-mbps", type=float, default=20.0, help="per-connection cap, MB/s")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--connections", type=int, nargs="+", default=[4, 8])
    ap.add_argument("--skip-capped", action="store_true", help="only (a)")
    ap.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()) / "bench-download")
    args = ap.parse_args()

    if shutil.which("curl") is None:
        sys.exit("curl is not installed (apt-get install -y curl)")
    data_dir = args.workdir / "dataset"
    out = args.workdir / "out-nginx"
    out.mkdir(parents=True, exist_ok=True)
    t = timed(lambda: make_dataset(data_dir, args.size_mib))
    src = data_dir / "files" / KEY
    size = src.stat().st_size
    expect = Digester.of_file(src)  # the reference digests, untimed
    with open(src, "rb") as f:  # an independent check of the reference
        assert expect.sha256 == hashlib.file_digest(f, "sha256").hexdigest()
    print(f"file: {size / 1e9:.2f} GB valid HDF5 ({t:.1f} s to make/reuse)", flush=True)
    print(f"sha256 {expect.sha256}  dandi-etag {expect.dandi_etag}", flush=True)
    load_before = loadavg()
    print(f"load average before: {load_before}", flush=True)
    rows: list[tuple[str, float, float]] = []  # (what, seconds, MB/s)

    def add(what: str, secs: float) -> float:
        mbps = size / secs / 1e6
        rows.append((what, secs, mbps))
        print(f"  {what:<58} {secs:7.2f} s {mbps:8.1f} MB/s", flush=True)
        return mbps

    cpus: dict = {}  # CPU seconds of every run (this process + curl; not nginx's)

    def interleaved(runs: dict) -> dict[str, list[float]]:
        times: dict[str, list[float]] = {k: [] for k in runs}
        for i in range(args.repeat):  # interleaved, so load changes hit every variant alike
            for k, fn in runs.items():
                drop_cache_copy(dest)
                cpu0 = cpu_seconds()
                times[k].append(timed(fn))
                cpu = cpu_seconds() - cpu0
                cpus.setdefault(k, []).append(cpu)
                assert dest.stat().st_size == size
                print(
                    f"    run {i + 1} {k}: {times[k][-1]:.2f} s, CPU {cpu:.2f} s "
                    f"(load {loadavg()})",
                    flush=True,
                )
        drop_cache_copy(dest)
        return times

    cap = int(args.cap_mbps * 1e6)
    dest = out / "session_1.nwb"
    with Nginx(data_dir / "files", cap) as server:
        url = f"{server.url}/{KEY}"
        capped = f"{server.url}/capped/{KEY}"
        check_served(url, size)
        check_served(capped, size)
        a = interleaved(
            {
                "curl": lambda: run_curl(url, dest),
                "ours": lambda: run_ours(url, dest, expect),
            }
        )
        a_curl = add("(a) curl -o", statistics.median(a["curl"]))
        a_ours = add(
            "(a) download_file, 1 conn (sha256+etag, HDF5 open, fsync)",
            statistics.median(a["ours"]),
        )
        b: dict[int, float] = {}
        times = dict(a)
        if not args.skip_capped:
            runs = {1: lambda: run_ours(capped, dest, expect)}
            for n in args.connections:
                runs[n] = lambda n=n: run_ours(capped, dest, expect, n)
            bt = interleaved(runs)
            for n, v in bt.items():
                b[n] = add(
                    f"(b) download_file, {n} conn, cap {args.cap_mbps:g} MB/s per conn",
                    statistics.median(v),
                )
                times[f"capped_{n}"] = v
    load_after = loadavg()

    print()
    py = f"{platform.python_implementation()} {platform.python_version()}"
    print(
        f"date: {datetime.date.today()}  machine: {platform.machine()}, {os.cpu_count()} cores, "
        f"{py}, {platform.system()}; load average before {load_before}, after {load_after}"
    )
    print("| measurement | seconds | MB/s |")
    print("|---|---:|---:|")
    for what, secs, mbps in rows:
        print(f"| {what} | {secs:.2f} | {mbps:.1f} |")
    print()
    print(f"(a) download_file / curl = {a_ours / a_curl:.2f} (target >= 0.9)")
    for n, v in b.items():
        if n != 1:
            print(
                f"(b) {n} connections / 1 connection = {v / b[1]:.2f} (ideal {n}; "
                f"{v / b[1] / n:.2f} of ideal, target >= 0.9); "
                f"{v / (n * args.cap_mbps):.2f} of n x the cap"
            )
    print(
        f"all runs, seconds: {json.dumps({k: [round(x, 2) for x in v] for k, v in times.items()})}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
