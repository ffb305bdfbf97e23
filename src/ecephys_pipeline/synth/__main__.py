"""``python -m ecephys_pipeline.synth``: write a synthetic dataset directory (or one file)."""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence

from . import INDEX_DTYPES, make_dataset, make_full_size_session, write_gen1_session_nwb


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m ecephys_pipeline.synth",
        description="Write a synthetic Allen Visual Coding - Neuropixels dataset directory.",
    )
    ap.add_argument("--out", required=True, help="dataset directory to write")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--sessions", type=int, default=2)
    ap.add_argument("--probes-per-session", type=int, default=3)
    ap.add_argument("--units-per-probe", type=int, default=None)
    ap.add_argument("--duration", type=float, default=300.0, help="recording length (s)")
    ap.add_argument("--lfp-duration", type=float, default=4.0, help="LFP length (s)")
    ap.add_argument("--realistic", action="store_true", help="58-session real catalogue (lazy)")
    ap.add_argument("--lazy", action="store_true", help="generate NWB files on first download")
    ap.add_argument("--index-dtype", choices=INDEX_DTYPES, default=None)
    ap.add_argument("--all-nan-metric-as-str", action="store_true")
    ap.add_argument(
        "--full-size", metavar="PATH", help="instead: write one full-size session NWB at PATH"
    )
    ap.add_argument("--gen1", metavar="PATH", help="also write a Gen-1 session NWB at PATH")
    a = ap.parse_args(argv)
    t0 = time.perf_counter()
    if a.full_size:
        p = make_full_size_session(a.full_size, a.seed)
        print(f"wrote {p} ({p.stat().st_size / 1e9:.2f} GB) in {time.perf_counter() - t0:.1f} s")
        return 0
    try:
        out = make_dataset(
            a.out,
            a.seed,
            realistic=a.realistic,
            files="lazy" if a.lazy else "all",
            sessions=a.sessions,
            probes_per_session=a.probes_per_session,
            units_per_probe=a.units_per_probe,
            duration_s=a.duration,
            lfp_duration_s=a.lfp_duration,
            index_dtype=a.index_dtype,
            all_nan_metric_as_str=a.all_nan_metric_as_str,
        )
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if a.gen1:
        write_gen1_session_nwb(a.gen1, a.seed)
    print(f"wrote {out} in {time.perf_counter() - t0:.1f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
