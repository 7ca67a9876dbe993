"""A float32 reading is its own shortest decimal, on MQTT and in `edgegw read`, scaled or not."""

from __future__ import annotations

import asyncio
import json
import random
import struct
import sys
from pathlib import Path
from typing import Any

import pytest

from drivers.bacnet.config import BacnetPoint
from drivers.modbus.config import ModbusPoint
from gateway.driver import Pushed, RawReadings
from gateway.normalize import Normalizer, float32_text

REPO = Path(__file__).resolve().parent.parent
F32 = struct.Struct("f")


def f32(x: float) -> float:
    return float(F32.unpack(F32.pack(x))[0])


def brute_shortest(x: float) -> str:
    for digits in range(1, 10):
        text = f"%.{digits}g" % x
        if f32(float(text)) == x:
            return text
    raise AssertionError(x)


def significant(text: str) -> int:
    return len(text.lower().partition("e")[0].replace("-", "").replace(".", "").strip("0")) or 1


def test_float32_text_is_the_shortest_decimal_that_reads_back() -> None:
    rng = random.Random(7)
    values = [f32(rng.uniform(-300, 300)) for _ in range(3000)]
    values += [f32(10 ** rng.uniform(-40, 38)) for _ in range(3000)]
    # Decimals of up to 7 digits, as a device makes them: each must come back as itself.
    decimals = [float(f"{rng.randint(1, 10**d - 1)}e{rng.randint(-30, 30)}") for d in range(1, 8) for _ in range(300)]
    values += [f32(x) for x in decimals]
    assert all(float(float32_text(f32(x))) == x for x in decimals)
    values += [f32(2.0**k) for k in range(-149, 128)] + [0.0, -0.0]
    for x in values:
        # As few significant digits as any decimal that reads back ("50000" and "5e+04" are one digit).
        text = float32_text(x)
        assert f32(float(text)) == x and significant(text) == significant(brute_shortest(x)), (x, text)
    assert float32_text(f32(50.046162)) == "50.04616"  # 50.04616165161133 as a double
    assert float32_text(f32(101.2)) == "101.2" and float32_text(f32(0.3)) == "0.3"


def encoded(normalizer: Normalizer, raw: RawReadings) -> list[Any]:
    batch = normalizer.normalize(raw, 1000)
    message = batch.encode(1).decode()
    return [json.loads(message)["readings"], message, batch.as_dicts()]


def test_mqtt_and_read_print_a_float32_as_its_own_decimal() -> None:
    points = [
        ModbusPoint(id="f", address=0, type="float32", quantity="frequency", unit="Hz"),
        ModbusPoint(id="d", address=2, type="float64", quantity="voltage", unit="V"),
    ]
    readings, message, dicts = encoded(Normalizer("m", points), RawReadings(values=[f32(50.046162), 230.1234567891]))
    assert '"value":50.04616,' in message and '"value":230.1234567891,' in message
    assert [r["value"] for r in dicts] == [50.04616, 230.1234567891]  # what `edgegw read` prints
    assert [r["value"] for r in readings] == [50.04616, 230.1234567891]


def test_a_scaled_float32_is_its_decimal_scaled_exactly() -> None:
    points = [
        BacnetPoint(id="p", object="analog-input,1", quantity="active_power", unit="W", scale=1000),
        BacnetPoint(id="t", object="analog-input,2", quantity="temperature", unit="degC", offset=-273.15),
        BacnetPoint(id="e", object="analog-value,3", quantity="active_energy_import", unit="Wh", scale=0.1),
        ModbusPoint(id="i", address=0, type="float32", quantity="current", unit="A", scale=0.001),
    ]
    normalizer = Normalizer("b", points)
    raw = RawReadings(values=[f32(101.2), f32(300.15), f32(1234567.0), f32(15300.7)])
    readings, message, dicts = encoded(normalizer, raw)
    assert [r["value"] for r in readings] == [101200.0, 27.0, 123456.7, 15.3007]
    assert '"value":101200.0,' in message  # not 101199.997 (9 digits of 101199.99694824219)
    assert [r["value"] for r in dicts] == [101200.0, 27.0, 123456.7, 15.3007]
    # A COV notification goes through the same rule.
    pushed = normalizer.normalize_pushed([Pushed(0, f32(101.2))], 2000, None)
    assert '"value":101200.0,' in pushed.encode(2).decode()


def test_a_float32_that_is_not_a_decimal_keeps_the_digits_that_identify_it() -> None:
    point = BacnetPoint(id="p", object="analog-input,1", quantity="active_power", unit="W", scale=1000)
    readings, _, _ = encoded(Normalizer("b", [point]), RawReadings(values=[f32(50.046162)]))
    assert readings[0]["value"] == 50046.16  # 50.04616 x 1000, exactly


async def test_edgegw_read_against_a_twin(tmp_path: Path) -> None:
    twin_module = pytest.importorskip("drivers.bacnet.twin")
    points = [
        {"id": "power", "object": "analog-input,1", "quantity": "active_power", "unit": "W", "scale": 1000,
         "sim": {"value": 101200}},
        {"id": "freq", "object": "analog-input,2", "quantity": "frequency", "unit": "Hz", "sim": {"value": 50.046162}},
    ]  # fmt: skip
    async with twin_module.BacnetTwin.create(points=points) as twin:
        cfg = {"site": "s", "bacnet": twin.section_config(), "devices": [{"id": "b1", **twin.device_config()}]}
        path = tmp_path / "gw.yaml"
        path.write_text(json.dumps(cfg), encoding="utf-8")
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "gateway.cli", "read", "--config", str(path), "b1",
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, cwd=REPO,
        )  # fmt: skip
        async with asyncio.timeout(60):
            out, err = await proc.communicate()
    assert proc.returncode == 0, err.decode()
    lines = {line.split()[0]: line.split()[1:] for line in out.decode().splitlines() if not line.startswith("--")}
    assert lines["power"][:2] == ["101200.0", "W"], out.decode()
    assert lines["freq"][:2] == ["50.04616", "Hz"], out.decode()
