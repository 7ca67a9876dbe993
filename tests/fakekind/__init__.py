"""A fifth driver kind that lives outside drivers/: the proof that a new protocol needs only its folder.

It speaks a line protocol over TCP (see :mod:`tests.fakekind.twin`) and is registered by adding
:data:`SPEC` to ``gateway.registry.DRIVERS`` for the duration of a test; nothing else in gateway/
knows it.
"""

from __future__ import annotations

from gateway.registry import DriverSpec

KIND = "fake"

SPEC = DriverSpec(
    kind=KIND,
    summary="test-only line protocol over TCP",
    config_module="tests.fakekind.config",
    driver="tests.fakekind.driver:FakeDriver",
    twin="tests.fakekind.twin:FakeTwin",
)
