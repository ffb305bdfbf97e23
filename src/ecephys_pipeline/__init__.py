"""ecephys-pipeline: Allen Visual Coding - Neuropixels NWB to verified downloads and Parquet."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("ecephys-pipeline")
except PackageNotFoundError:  # running from a source tree without install
    __version__ = "0.0.0+unknown"
