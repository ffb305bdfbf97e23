"""The product's commands: ``python -m ecephys_pipeline <subcommand> ...``.

Subcommands register themselves in :data:`SUBCOMMANDS` as ``name -> (add_arguments, run)``;
``run(args) -> int`` is the exit status.  Add a new one with :func:`register` without touching
the others. A command that reaches the source runs inside ``services(config)``, a context
manager the entry point (``__main__.py``) supplies: that is how the offline demo's server is
wrapped around a command without this module knowing about it.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path
from typing import Any

AddArguments = Callable[[argparse.ArgumentParser], None]
Run = Callable[[argparse.Namespace], int]
SUBCOMMANDS: dict[str, tuple[str, AddArguments, Run]] = {}


def register(name: str, help: str) -> Callable[[AddArguments], AddArguments]:
    """Decorator for ``add_arguments(parser)``; the parser's ``run`` default is the runner."""

    def deco(add_arguments: AddArguments) -> AddArguments:
        def run(args: argparse.Namespace) -> int:
            return args.run(args)

        SUBCOMMANDS[name] = (help, add_arguments, run)
        return add_arguments

    return deco


# -------------------------------------------------------------------------------- extract


def _load_unit_filters(value: str | None) -> dict[str, Any] | None:
    """``--unit-filters``: inline JSON, or a path to a JSON file (a filters object, or a
    selection.json whose ``unit_filters`` key is used). ``null`` means "write every unit"."""
    if value is None:
        return None
    text = value.strip()
    if not text.startswith(("{", "null")):
        path = Path(value)
        if not path.is_file():
            raise SystemExit(f"--unit-filters: {value!r} is neither JSON nor an existing file")
        text = path.read_text()
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as e:
        raise SystemExit(f"--unit-filters: invalid JSON ({e})") from e
    if isinstance(obj, dict) and "unit_filters" in obj and "sessions" in obj:
        obj = obj["unit_filters"]
    if obj is not None and not isinstance(obj, dict):
        raise SystemExit("--unit-filters: expected a JSON object or null")
    return obj


@register("extract", help="extract one session NWB file to the Parquet datasets")
def _extract_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--nwb", required=True, type=Path, help="session NWB file")
    p.add_argument("--out", required=True, type=Path, help="root of the Parquet datasets")
    p.add_argument(
        "--unit-filters",
        default=None,
        help="JSON object (or a file holding one, or selection.json) of unit filters; "
        "omitted = write every unit",
    )
    p.add_argument("--probe-id", type=int, action="append", dest="probe_ids", default=None)
    p.add_argument("--source-sha256", default=None, help="sha256 of the NWB (else computed)")
    p.set_defaults(run=_extract_run)


def _extract_run(args: argparse.Namespace) -> int:
    from .extract import extract_session
    from .nwb import NwbError

    try:
        result = extract_session(
            args.nwb,
            args.out,
            unit_filters=_load_unit_filters(args.unit_filters),
            probe_ids=args.probe_ids,
            source_sha256=args.source_sha256,
        )
    except (NwbError, FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    json.dump(result, sys.stdout, indent=2)
    sys.stdout.write("\n")
    return 0


# -------------------------------------------------------------------------------- analyze


@register("analyze", help="write one session's stimulus-aligned analysis tables from its Parquet")
def _analyze_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--parquet", required=True, type=Path, help="root of the Parquet datasets")
    p.add_argument("--session-id", required=True, type=int)
    p.add_argument("--out", type=Path, default=None, help="output root (default: --parquet)")
    p.add_argument(
        "--bins",
        default=None,
        help='JSON {stimulus_name | "default": {start, stop, width}} (seconds from onset); '
        "omitted = 10 ms bins from -0.1 to 0.35 s",
    )
    p.add_argument("--stimulus", action="append", dest="stimuli", default=None)
    p.add_argument(
        "--unit-filters",
        default=None,
        help="as for extract; omitted = every unit of the units table",
    )
    p.set_defaults(run=_analyze_run)


def _analyze_run(args: argparse.Namespace) -> int:
    from .analysis import AnalysisError, analyze_session

    try:
        bins = json.loads(args.bins) if args.bins else None
    except json.JSONDecodeError as e:
        raise SystemExit(f"--bins: invalid JSON ({e})") from e
    try:
        result = analyze_session(
            args.parquet,
            args.session_id,
            args.out,
            bins=bins,
            stimuli=args.stimuli,
            unit_filters=_load_unit_filters(args.unit_filters),
        )
    except (AnalysisError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    json.dump(result, sys.stdout, indent=2)
    sys.stdout.write("\n")
    return 0


# ----------------------------------------------------------------------------------- plan


@register(
    "plan",
    help="print what a run would fetch (sessions, probes, files, bytes already present, bytes to "
    "download, free space) before any byte moves",
)
def _plan_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--configfile",
        default="config/config.yaml",
        type=Path,
        help="the config snakemake would run with (default: config/config.yaml); run from the "
        "workflow directory",
    )
    p.add_argument("--json", type=Path, default=None, help="also write the plan as JSON here")
    p.set_defaults(run=_plan_run)


def _plan_run(args: argparse.Namespace) -> int:
    import requests

    from .config import load_spec, load_workflow_config
    from .dandi import DandiError
    from .download import DownloadError
    from .plan import InsufficientSpaceError, check_space, explain, plan_from_config
    from .rma import RmaError
    from .selection import SelectionError
    from .sources import SourceError

    config: dict = {}
    try:
        config = load_workflow_config(args.configfile)
        load_spec(config["selection"])  # a bad spec fails before any service starts
        with args.services(config):
            chosen, the_plan = plan_from_config(config)
    except (SelectionError, ValueError, FileNotFoundError) as e:  # ConfigError, SpecError too
        print(explain(e, config), file=sys.stderr)
        return 2
    except (RmaError, SourceError, DandiError, DownloadError, requests.RequestException) as e:
        print(explain(e, config), file=sys.stderr)  # the source is unreachable or misbehaves
        return 2
    for session in chosen["sessions"]:
        names = ", ".join(
            p["name"] + ("" if p["download_lfp"] else " (no LFP)") for p in session["probes"]
        )
        print(f"session {session['session_id']} {session['session_type']}: {names}")
    print(the_plan.summary(chosen))
    if args.json:
        the_plan.to_json(args.json)
    try:
        check_space(the_plan, reserve_bytes=int(config["download"]["reserve_free_gb"] * 1e9))
    except InsufficientSpaceError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


# --------------------------------------------------------------------------------- main


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m ecephys_pipeline")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (help_text, add_arguments, _run) in SUBCOMMANDS.items():
        add_arguments(sub.add_parser(name, help=help_text, description=help_text))
    return parser


Services = Callable[[dict], AbstractContextManager]


def main(argv: Sequence[str] | None = None, *, services: Services | None = None) -> int:
    """Run one command. ``services(config)``: what must run around a command that reaches the
    source (default: nothing)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    args.services = services or (lambda config: nullcontext())
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(levelname)s %(name)s: %(message)s",
    )
    _help, _add, run = SUBCOMMANDS[args.command]
    return run(args)
