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

from . import __version__
from .metadata import atomic_write_text

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
)


def canonical_sha256(obj) -> str:
    text = json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def package_versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            versions[name] = importlib_metadata.version(name)
        except importlib_metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


def output_files(results_dir: Path, datasets: list[str]) -> list[Path]:
    files: list[Path] = []
    for dataset in datasets:
        files += sorted((results_dir / dataset).rglob("*.parquet"))
    return files


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
        "selection_sha256": file_sha256(Path(selection_path)),
        "inputs": {
            path: {"size": entry["size"], "sha256": entry["sha256"]}
            for path, entry in sorted(lock["files"].items())
        },
        "outputs": {
            Path(path).relative_to(root).as_posix(): file_sha256(Path(path))
            for path in sorted(outputs)
        },
        "software": package_versions(),
    }


def write_run_manifest(path: str | Path, manifest: dict) -> None:
    atomic_write_text(Path(path), json.dumps(manifest, indent=2, sort_keys=True) + "\n")
