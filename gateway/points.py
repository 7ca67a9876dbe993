"""The point model: what a point is (PointDef) and the vocabulary its fields draw from."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any


class Quality(StrEnum):
    GOOD = "good"
    UNCERTAIN = "uncertain"
    BAD = "bad"


class Kind(StrEnum):
    GAUGE = "gauge"
    COUNTER = "counter"
    STATE = "state"


# A fixed vocabulary so that consumers can rely on names across devices and protocols.
QUANTITIES: frozenset[str] = frozenset(
    {
        "voltage",
        "current",
        "active_power",
        "reactive_power",
        "active_power_export",
        "reactive_power_export",
        "apparent_power",
        "power_factor",
        "frequency",
        "active_energy_import",
        "active_energy_export",
        "active_energy_absolute",
        "reactive_energy_import",
        "reactive_energy_export",
        "apparent_energy_import",
        "apparent_energy_export",
        "active_power_demand",
        "active_power_demand_max",
        "current_demand",
        "current_demand_max",
        "current_max",
        "active_power_max",
        "thd_voltage",
        "thd_current",
        "tdd",
        "unbalance_voltage",
        "unbalance_current",
        "leakage_current",
        "temperature",
        "humidity",
        "breaker_state",
        "breaker_trip",
        "state_of_charge",
        "state_of_health",
        "internal_resistance",
        "balancing",
        "cell_count",
        "status",
        "alarm",
        "scale",
        "ct_ratio",
        "rating",
        "clock",
        "clock_drift",
        "uptime",
        "counter",
        "identity",
        "firmware",
        "serial_number",
        "model",
        "traffic",
        "other",
    }
)

# Quantities that only grow (meters' registers): twins ramp them, consumers take differences.
ENERGY_QUANTITIES: frozenset[str] = frozenset(q for q in QUANTITIES if "_energy_" in q)

PHASES: frozenset[str] = frozenset(
    {"L1", "L2", "L3", "N", "L1-L2", "L2-L3", "L3-L1", "L1-N", "L2-N", "L3-N", "total", "none"}
)

# SI symbols (and the few non-SI ones the devices really report). "" means dimensionless.
UNITS: frozenset[str] = frozenset(
    {
        "",
        "V",
        "A",
        "W",
        "var",
        "VA",
        "Wh",
        "varh",
        "VAh",
        "Hz",
        "%",
        "degC",
        "ohm",
        "s",
        "ms",
        "B",
        "bit/s",
        "%RH",
        "Ah",
    }
)


@dataclass(frozen=True, slots=True)
class PointDef:
    """Metadata of one point, published once (retained) in the device's meta topic."""

    id: str
    quantity: str
    unit: str
    phase: str = "none"
    circuit: str | None = None
    kind: Kind = Kind.GAUGE
    description: str = ""
    address: dict[str, Any] = field(default_factory=dict)
    rate: str | None = None  # "per_second" ...: a counter published as its rate

    def meta(self) -> dict[str, Any]:
        """The JSON-ready form used in the meta topic."""
        out: dict[str, Any] = {
            "id": self.id,
            "quantity": self.quantity,
            "unit": self.unit,
            "phase": self.phase,
            "kind": str(self.kind),
        }
        if self.circuit is not None:
            out["circuit"] = self.circuit
        if self.description:
            out["description"] = self.description
        if self.address:
            out["address"] = self.address
        if self.rate is not None:
            out["rate"] = self.rate
        return out
