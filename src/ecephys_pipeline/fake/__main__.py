"""``python -m ecephys_pipeline.fake --data DIR``: serve a synthetic dataset on loopback."""

from __future__ import annotations

import argparse
import json
import signal
import sys
import threading
from pathlib import Path

from .. import atomic
from .server import FakeWarehouse


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m ecephys_pipeline.fake",
        description="Serve a synthetic Allen ecephys dataset over the warehouse and S3 protocols.",
    )
    ap.add_argument(
        "--data", required=True, type=Path, help="dataset directory (docs/architecture.md §1)"
    )
    ap.add_argument("--host", default="127.0.0.1", help="loopback address to bind")
    ap.add_argument("--port", type=int, default=0, help="port (0 = any free port)")
    ap.add_argument("--port-file", type=Path, help="write the base URL here once listening")
    ap.add_argument(
        "--fault",
        action="append",
        default=[],
        metavar="JSON",
        help="a fault object (or list) to install; repeatable",
    )
    ap.add_argument("--verbose", action="store_true", help="log every request to stderr")
    args = ap.parse_args(argv)
    faults: list = []
    for text in args.fault:
        try:
            value = json.loads(text)
        except ValueError as exc:
            ap.error(f"--fault {text!r}: {exc}")
        faults += value if isinstance(value, list) else [value]
    try:
        fake = FakeWarehouse(args.data, host=args.host, port=args.port, verbose=args.verbose)
        fake.set_faults(faults)
    except (ValueError, FileNotFoundError) as exc:
        ap.error(str(exc))
    done = threading.Event()

    def on_signal(signum, frame):
        done.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    if args.port_file:
        args.port_file.unlink(missing_ok=True)  # a stale file must not look like "listening"
    fake.start()
    if args.port_file:
        atomic.write_text(args.port_file, fake.url + "\n")
    print(f"fake warehouse serving {args.data} at {fake.url}", flush=True)
    try:
        while not done.wait(0.5):
            pass
    finally:
        fake.stop()
        if args.port_file:
            args.port_file.unlink(missing_ok=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
