"""Running the real workflow in a scratch directory, for the end-to-end tests."""

from __future__ import annotations

import hashlib
import re
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
WORKFLOW_FILES = ("Snakefile", "workflow", "config", "profiles")
SNAKEMAKE = [sys.executable, "-m", "snakemake"]
ALL_UNITS_SPEC = (
    "all: true\n"
    "unit_filters:\n  quality: null\n  amplitude_cutoff_maximum: null\n"
    "  presence_ratio_minimum: null\n  isi_violations_maximum: null\n"
    "  filter_by_validity: false\n  filter_out_of_brain_units: false\n"
)
_JOB = re.compile(r"^(?:local)?(?:rule|checkpoint) (\w+):\n((?:    .*\n)*)", re.MULTILINE)


def copy_workflow(dest: Path) -> Path:
    """A fresh checkout of the workflow files (no resources/, results/ or .snakemake/)."""
    dest.mkdir(parents=True, exist_ok=True)
    for name in WORKFLOW_FILES:
        src = REPO / name
        if src.is_dir():
            shutil.copytree(src, dest / name)
        elif src.exists():
            shutil.copy2(src, dest / name)
    return dest


def write_config(workdir: Path, **changes) -> list[str]:
    """The demo's config with ``changes`` (``section=value`` replaces a section,
    ``section__key=value`` one key of it) as config/test.yaml; the snakemake arguments for it."""
    import yaml

    config = yaml.safe_load((workdir / "config/demo.yaml").read_text())
    for key, value in changes.items():
        section, _, name = key.partition("__")
        if name:
            config[section][name] = value
        else:
            config[section] = value
    (workdir / "config/test.yaml").write_text(yaml.safe_dump(config))
    return ["--configfile", "config/test.yaml"]


def snakemake_command(*args: str, configfile: str = "config/demo.yaml") -> list[str]:
    return [*SNAKEMAKE, "--cores", "2", "--configfile", configfile, *args]


def run_snakemake(
    workdir: Path, *args: str, timeout: int = 600, check: bool = True
) -> subprocess.CompletedProcess:
    proc = subprocess.run(
        snakemake_command(*args), cwd=workdir, capture_output=True, text=True, timeout=timeout
    )
    if check and proc.returncode != 0:
        logs = "\n".join(
            f"--- {p}\n{p.read_text()[-3000:]}" for p in sorted((workdir / "logs").rglob("*.log"))
        )
        raise AssertionError(
            f"snakemake failed ({proc.returncode}):\n{proc.stderr[-6000:]}\n{logs}"
        )
    return proc


def jobs_run(proc: subprocess.CompletedProcess) -> list[tuple[str, str]]:
    """(rule, wildcards) of every job a snakemake run started, from its log output."""
    out = []
    for match in _JOB.finditer(proc.stderr + proc.stdout):
        wildcards = re.search(r"^    wildcards: (.*)$", match.group(2), re.MULTILINE)
        out.append((match.group(1), wildcards.group(1) if wildcards else ""))
    return out


def checksums(root: Path, pattern: str = "**/*.parquet") -> dict[str, str]:
    return {
        p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.glob(pattern))
        if p.is_file()
    }
