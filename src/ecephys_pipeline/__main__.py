"""Entry point: ``python -m ecephys_pipeline`` / ``ecephys-pipeline``.

The product's commands live in :mod:`ecephys_pipeline.cli`; this composition root wraps the
offline demo around them: with ``demo.enabled`` in the config, the fake warehouse runs for the
duration of a command that reaches the source (the product modules never import the stand-ins).
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from contextlib import AbstractContextManager, nullcontext

from . import cli


def demo_services(config: dict) -> AbstractContextManager:
    if (config.get("demo") or {}).get("enabled"):
        from .fake import demo

        return demo.serving(config)
    return nullcontext()


def main(argv: Sequence[str] | None = None) -> int:
    return cli.main(argv, services=demo_services)


if __name__ == "__main__":
    sys.exit(main())
