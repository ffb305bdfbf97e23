"""Stand-ins for the real Allen services, for tests and the offline demo (never product code).

- :class:`FakeWarehouse` (``server.py``): a real HTTP server on loopback speaking the warehouse's
  RMA API and the public bucket's S3 layout, with fault injection; its own RMA parser
  (``rma.py``) and file table (``files.py``). CLI: ``python -m ecephys_pipeline.fake``.
- The same server also stands in for the DANDI Archive API (dandisets 000021/000022, the same
  synthetic files, their sha256 and dandi-etag): ``dandi.py`` (views) and ``dandi_catalog.py``;
  facts and sources in ``docs/dandi.md``.
- ``demo.py``: the offline demo's lifecycle (generate the synthetic dataset, run the server for
  the duration of a workflow run or a CLI command).

The synthetic files it serves come from :mod:`ecephys_pipeline.synth`.
"""

from .faults import FAULT_KINDS, validate_faults
from .server import FakeWarehouse

__all__ = ["FAULT_KINDS", "FakeWarehouse", "validate_faults"]
