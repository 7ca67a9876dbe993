"""Devices with the same points share their compiled tables; each keeps its own state (issue 13.1)."""

from __future__ import annotations

import gc
import json
from collections.abc import Sequence
from typing import Any, cast

from drivers.modbus.config import ModbusDevice, ModbusPoint
from drivers.modbus.driver import compile_plan
from gateway.config import load_config_text
from gateway.driver import RawReadings
from gateway.normalize import Normalizer, PointTable

PROFILE_DEVICES = """
site: s
mqtt: {url: 'mqtt://127.0.0.1:1'}
devices:
""" + "".join(
    f"  - {{id: m{u}, driver: modbus, tcp: {{host: 127.0.0.1, port: 1502}}, unit: {u}, profile: bench_meter}}\n"
    for u in (1, 2, 3)
)


def inline_devices(n: int, deadband: float | None = None) -> str:
    points = [
        {"id": f"p{i}", "address": 2 * i, "type": "float32", "quantity": "current", "unit": "A"}
        | ({"deadband": deadband} if deadband is not None else {})
        for i in range(20)
    ]
    out = "site: s\nmqtt: {url: 'mqtt://127.0.0.1:1'}\ndevices:\n"
    for d in range(n):
        entry = {"id": f"d{d}", "driver": "modbus", "tcp": {"host": "127.0.0.1", "port": 1502 + d}, "points": points}
        out += f"  - {json.dumps(entry)}\n"
    return out


def devices(text: str, tmp: Any) -> list[ModbusDevice]:
    (tmp / "bench_meter.yaml").write_text(
        "profile: bench_meter\ndriver: modbus\npoints:\n"
        "  - repeat: {i: [0, 19]}\n    points:\n"
        "      - {id: 'p{i}', address: '{2*i}', type: float32, quantity: current, unit: A}\n"
    )
    cfg = load_config_text(text.replace("profile: bench_meter", f"profile: {tmp / 'bench_meter.yaml'}"), "t.yaml", tmp)
    return [d for d in cfg.devices if isinstance(d, ModbusDevice)]


def test_devices_written_alike_share_their_points_and_tables(tmp_path: Any) -> None:
    for text in (PROFILE_DEVICES, inline_devices(3)):
        devs = devices(text, tmp_path)
        assert len({id(d.resolved_points) for d in devs}) == 1, "one tuple of points for the three devices"
        norms = [Normalizer(d.id, d.resolved_points, d.calculated_points) for d in devs]
        assert len({id(n.table) for n in norms}) == 1
        assert len({id(n.encoder._frag) for n in norms}) == 1
        plans = [compile_plan(cast(Sequence[ModbusPoint], d.resolved_points), d) for d in devs]
        # The units differ (profile case): the requests do, the decoders of the blocks do not.
        decoders = {id(r.decoder) for p in plans for r in p.reads}
        assert len(decoders) == len(plans[0].reads)


def test_a_shared_table_keeps_each_devices_state_apart(tmp_path: Any) -> None:
    devs = devices(inline_devices(2, deadband=1.0), tmp_path)
    a, b = (Normalizer(d.id, d.resolved_points) for d in devs)
    assert a.table is b.table
    values: list[Any] = [float(i) for i in range(20)]
    first_a = a.normalize(RawReadings(values), 1000)
    assert len(first_a) == 20 and b'"device":"d0"' in first_a.encode(1)
    # b's first poll is its own first: report by exception holds nothing of a's.
    first_b = b.normalize(RawReadings([v + 0.5 for v in values]), 1000)
    assert len(first_b) == 20
    msg_b = json.loads(first_b.encode(7))
    assert msg_b["device"] == "d1" and msg_b["seq"] == 7 and msg_b["readings"][0]["value"] == 0.5
    # Within the deadband of a's own last values: nothing from a; b moved by 2 from its own.
    assert len(a.normalize(RawReadings([v + 0.5 for v in values]), 2000)) == 0
    assert len(b.normalize(RawReadings([v + 2.5 for v in values]), 2000)) == 20
    # The shared all-good template names each device, whichever device built it first.
    assert json.loads(a.normalize(RawReadings([v + 9 for v in values]), 3000).encode(2))["device"] == "d0"


def test_a_table_goes_with_the_last_device_that_uses_it(tmp_path: Any) -> None:
    devs = devices(inline_devices(1), tmp_path)
    n = Normalizer("x", devs[0].resolved_points)
    key = id(n.table)
    del n
    gc.collect()
    assert key not in {id(t) for t in _tables()}


def _tables() -> list[PointTable]:
    from gateway.normalize import _TABLES

    return list(_TABLES.values())


def test_no_yaml_line_map_or_profile_expansion_outlives_the_load(tmp_path: Any) -> None:
    from gateway.models import PointConfig
    from gateway.yamlload import LineDict, LineList

    def count(kind: type | tuple[type, ...]) -> int:
        gc.collect()
        return sum(1 for o in gc.get_objects() if isinstance(o, kind))

    before_lines, before_points = count((LineDict, LineList)), count(PointConfig)
    devs = devices(PROFILE_DEVICES, tmp_path) + devices(inline_devices(3), tmp_path)
    assert count((LineDict, LineList)) == before_lines
    # Three devices on the profile and three written inline, 20 points each: 20 + 20 point models.
    assert count(PointConfig) - before_points == 40
    assert all(len(d.resolved_points) == 20 for d in devs)
