"""The run manifest: what produced the outputs, from which inputs, with which software.

``results/manifest.json`` records the pipeline version, the sha256 of the config and of the
selection spec (canonical JSON, so comments and key order do not matter), every input file's
sha256 (from the lock file), every output file's sha256, and the versions of the packages that
did the work. It has no timestamps or host names: two runs that produce the same bytes write the
same manifest, so comparing two manifests is comparing two runs.
"""

from __future__ import annotations

import hashlib
import json
import platform
from importlib import metadata as importlib_metadata
from pathlib import Path

from . import __version__, atomic
from .download import sha256_file
from .selection import canonical_json

PACKAGES = (
    "ecephys-pipeline",
    "snakemake",
    "h5py",
    "hdmf",
    "pynwb",
    "numpy",
    "pandas",
    "pyarrow",
    "requests",
    "pyyaml",
    "jsonschema",
    "matplotlib",
)


def canonical_sha256(obj) -> str:
    """sha256 of the canonical JSON of ``obj``: the form selection.json's spec_sha256 uses."""
    return hashlib.sha256(canonical_json(obj).encode("utf-8")).hexdigest()


def package_versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            versions[name] = importlib_metadata.version(name)
        except importlib_metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


def run_manifest(
    *,
    config: dict,
    spec: dict,
    lock_path: Path,
    selection_path: Path,
    outputs: list[Path],
    root: Path,
) -> dict:
    lock = json.loads(Path(lock_path).read_text())
    return {
        "pipeline_version": __version__,
        "config_sha256": canonical_sha256(config),
        "spec_sha256": canonical_sha256(spec),
        "selection_sha256": sha256_file(Path(selection_path))[1],
        "inputs": {
            path: {"size": entry["size"], "sha256": entry["sha256"]}
            for path, entry in sorted(lock["files"].items())
        },
        "outputs": {
            Path(path).relative_to(root).as_posix(): sha256_file(Path(path))[1]
            for path in sorted(outputs)
        },
        "software": package_versions(),
    }


def write_run_manifest(path: str | Path, manifest: dict) -> None:
    atomic.write_json(path, manifest)
