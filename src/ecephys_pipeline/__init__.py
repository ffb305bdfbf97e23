"""ecephys-pipeline: Allen Visual Coding - Neuropixels NWB files to verified downloads and Parquet."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("ecephys-pipeline")
except PackageNotFoundError:  # running from a source tree without install
    __version__ = "0.0.0+unknown"
