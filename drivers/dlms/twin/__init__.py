"""The DLMS/COSEM meter twin (``edgegw simulate <dlms profile>``, the tests, the demo, the benchmarks).

Its own COSEM server, so that the daemon's client (gurux-encoded) meets an implementation it does
not share: ``server`` (the APDUs only a meter parses and builds), ``association`` (ACSE, security,
xDLMS services), ``meter`` (the objects' attributes, SET and ACTION), ``objects`` (what a profile's
points become, engineering values to raw), ``line`` (HDLC, the wrapper, the mode E opening, faults),
``device`` (:class:`DlmsTwin`, the :class:`gateway.twin.Twin` of the registry).
"""

from drivers.dlms.twin.association import Association
from drivers.dlms.twin.device import PASSWORD_ENV, DlmsTwin
from drivers.dlms.twin.meter import (
    CONNECTED,
    DEFAULT_SERVER_TITLE,
    DISCONNECTED,
    READY_FOR_RECONNECTION,
    SUPPORTED_CONFORMANCE,
    Meter,
)
from drivers.dlms.twin.objects import (
    ASSOCIATION_OBIS,
    BILLING_SCRIPT_OBIS,
    DISCONNECT_OBIS,
    EPOCH_2024,
    SIGNAL_EPOCH,
    TwinObject,
    objects_from_points,
)

__all__ = [
    "ASSOCIATION_OBIS",
    "BILLING_SCRIPT_OBIS",
    "CONNECTED",
    "DEFAULT_SERVER_TITLE",
    "DISCONNECTED",
    "DISCONNECT_OBIS",
    "EPOCH_2024",
    "PASSWORD_ENV",
    "READY_FOR_RECONNECTION",
    "SIGNAL_EPOCH",
    "SUPPORTED_CONFORMANCE",
    "Association",
    "DlmsTwin",
    "Meter",
    "TwinObject",
    "objects_from_points",
]
