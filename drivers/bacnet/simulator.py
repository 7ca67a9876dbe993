"""The BACnet twin's old home: it lives in :mod:`drivers.bacnet.twin` now.

Kept only for callers that still import this module (gateway/demo.py, tests/test_contract.py)
until they take twins from the registry (``DRIVERS["bacnet"].twin_class``); delete it then.
"""

from __future__ import annotations

from drivers.bacnet.twin import BacnetTwin, free_udp_port
from gateway.twin import simulate

__all__ = ["BacnetTwin", "free_udp_port", "main"]


def main(profile_ref: str, argv: list[str]) -> int:
    """``edgegw simulate <bacnet profile> [options]``: the shared twin command line."""
    return simulate(BacnetTwin, profile_ref, argv)
