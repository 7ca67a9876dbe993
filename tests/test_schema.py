"""The editor schema (`edgegw schema`, config/edgegw.schema.json) agrees with `edgegw check`.

A config the schema accepts, `check` accepts; a config `check` rejects, the schema rejects, except
for the rules JSON Schema cannot say (KNOWN_GAPS, documented in docs/configuration.md).
"""

from __future__ import annotations

import copy
import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.config import ConfigError, check_profile, parse_config
from gateway.schema import SHIPPED, SHIPPED_PROFILE, config_schema, doc_tables, dumps, profile_schema

REPO = Path(__file__).resolve().parent.parent
SAMPLES = sorted(REPO.glob("drivers/*/sample.yaml")) + sorted(REPO.glob("config/*.yaml"))
PROFILES = sorted(REPO.glob("drivers/*/profiles/*.yaml"))
SCHEMA = config_schema()
VALIDATOR = jsonschema.Draft7Validator(SCHEMA)
PROFILE_SCHEMA = profile_schema()
PROFILE_VALIDATOR = jsonschema.Draft7Validator(PROFILE_SCHEMA)
MODBUS = {"id": "m1", "driver": "modbus", "tcp": {"host": "127.0.0.1", "port": 502}}
POINT = {"id": "p.v", "address": 0, "quantity": "voltage", "unit": "V"}


def schema_ok(data: Any) -> bool:
    return bool(VALIDATOR.is_valid(data))


def _modeline(path: Path) -> Path:
    """The schema the file's first line names (yaml-language-server's modeline)."""
    first = path.read_text(encoding="utf-8").splitlines()[0]
    m = re.fullmatch(r"# yaml-language-server: \$schema=(\S+)", first)
    assert m, f"{path}: first line is not the yaml-language-server modeline"
    return (path.parent / m.group(1)).resolve()


def check_ok(data: Any, tmp: Path) -> bool:
    try:
        parse_config(copy.deepcopy(data), "<test>", tmp, environment="warn")
    except ConfigError:
        return False
    return True


def test_the_shipped_schema_is_the_generated_one() -> None:
    assert SHIPPED.read_text(encoding="utf-8") == dumps(SCHEMA), (
        "config/edgegw.schema.json is stale: run `edgegw schema > config/edgegw.schema.json`"
    )


def test_the_shipped_profile_schema_is_the_generated_one() -> None:
    assert SHIPPED_PROFILE.read_text(encoding="utf-8") == dumps(PROFILE_SCHEMA), (
        "config/edgegw-profile.schema.json is stale: run `edgegw schema --profile > config/edgegw-profile.schema.json`"
    )


def test_the_schemas_are_draft_07() -> None:
    for schema in (SCHEMA, PROFILE_SCHEMA):
        jsonschema.Draft7Validator.check_schema(schema)
        assert schema["$schema"] == "http://json-schema.org/draft-07/schema#"


def test_edgegw_schema_prints_it() -> None:
    for args, schema in (([], SCHEMA), (["--profile"], PROFILE_SCHEMA)):
        out = subprocess.run(
            [sys.executable, "-m", "gateway.cli", "schema", *args],
            capture_output=True,
            text=True,
            timeout=120,
            check=True,
        )
        assert json.loads(out.stdout) == schema


@pytest.mark.parametrize("path", SAMPLES, ids=lambda p: str(p.relative_to(REPO)))
def test_every_sample_validates_and_names_the_schema(path: Path) -> None:
    text = path.read_text(encoding="utf-8")
    assert _modeline(path) == SHIPPED
    errors = [f"{list(e.absolute_path)}: {e.message}" for e in VALIDATOR.iter_errors(yaml.safe_load(text))]
    assert errors == []


@pytest.mark.parametrize("path", PROFILES, ids=lambda p: str(p.relative_to(REPO)))
def test_every_shipped_profile_validates_and_names_the_profile_schema(path: Path) -> None:
    assert _modeline(path) == SHIPPED_PROFILE
    data = yaml.safe_load(path.read_text(encoding="utf-8"))
    assert [f"{list(e.absolute_path)}: {e.message}" for e in PROFILE_VALIDATOR.iter_errors(data)] == []


PROFILE = {"profile": "t", "driver": "modbus", "points": [POINT]}
BAD_PROFILES: dict[str, dict[str, Any]] = {
    "unknown top key": {**PROFILE, "point": []},
    "unknown driver": {**PROFILE, "driver": "zigbee"},
    "unknown point key": {**PROFILE, "points": [{**POINT, "adress": 3}]},
    "identity without product code": {**PROFILE, "identity": {"vendor_name": "V"}},
    "repeat block without points": {**PROFILE, "points": [{"repeat": {"n": 2}}]},
}


@pytest.mark.parametrize("name", list(BAD_PROFILES))
def test_bad_profiles_fail_the_schema_and_check(name: str, tmp_path: Path) -> None:
    data = BAD_PROFILES[name]
    path = tmp_path / "p.yaml"
    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    _, _, issues = check_profile(path)
    assert issues, f"{name}: check --profile accepts it"
    assert not PROFILE_VALIDATOR.is_valid(data), f"{name}: the profile schema accepts it"


def test_a_bad_device_default_fails_the_schema_and_the_config_that_uses_it(tmp_path: Path) -> None:
    # `check --profile` leaves the device defaults to the device: a config using the profile fails.
    data = {**PROFILE, "device": {"word_order": "middle"}}
    (tmp_path / "p.yaml").write_text(yaml.safe_dump(data), encoding="utf-8")
    assert not check_ok(device(profile="p.yaml", points=[]), tmp_path)
    assert not PROFILE_VALIDATOR.is_valid(data)


def test_a_good_profile_passes_both(tmp_path: Path) -> None:
    data = {
        **PROFILE,
        "vars": {"n": 2},
        "device": {"word_order": "little", "max_gap": 4},
        "identity": {"vendor_name": "V", "product_code": "P1", "match": ["P1*"]},
        "points": [POINT, {"repeat": {"i": [1, "n"]}, "points": [{**POINT, "id": "c{i}", "address": "{10 + i}"}]}],
    }
    path = tmp_path / "p.yaml"
    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    assert check_profile(path)[2] == []
    assert [e.message for e in PROFILE_VALIDATOR.iter_errors(data)] == []


def test_descriptions_come_from_the_docs() -> None:
    defs = SCHEMA["definitions"]
    meanings = doc_tables()
    modbus_points = meanings[("drivers/modbus/README.md", "Point keys")]
    assert defs["ModbusPoint"]["properties"]["address"]["description"] == modbus_points["address"]
    top = meanings[("docs/configuration.md", "Top level")]
    assert SCHEMA["properties"]["site"]["description"] == top["site"]
    # A model's own description stays where it has one.
    assert defs["MqttConfig"]["properties"]["url"]["description"].startswith("one broker URL")
    # Every key of the file and of the devices says what it is.
    for model in ("MqttConfig", "BufferConfig", "ModbusPoint"):
        missing = [k for k, v in defs[model]["properties"].items() if not v.get("description")]
        assert missing == [], f"{model}: {missing}"


# --- configs both accept ----------------------------------------------------------------------


def config(**over: Any) -> dict[str, Any]:
    base: dict[str, Any] = {"site": "s1", "state_dir": "memory", "devices": [{**MODBUS, "points": [POINT]}]}
    return {**base, **over}


def device(**over: Any) -> dict[str, Any]:
    return config(devices=[{**MODBUS, "points": [POINT], **over}])


VALID: dict[str, dict[str, Any]] = {
    "minimal": {"site": "s1"},
    "durations as text": device(interval="5min", timeout="500ms", max_backoff="1h", phase="2s"),
    "durations as numbers": device(interval=10, timeout=0.5),
    "sizes": config(buffer={"path": "buf", "max_size": "512MiB", "segment_size": 4194304}),
    "port as text": device(tcp={"host": "127.0.0.1", "port": "1502"}),
    "tcp as a list": device(tcp=[{"host": "10.0.0.1"}, {"host": "10.0.0.2", "port": 503}]),
    "mqtt url list": config(mqtt={"url": ["mqtt://a:1883", "mqtts://b"], "keepalive": "30s"}),
    "mqtt url string": config(mqtt={"url": "MQTT://[::1]:1883/"}),
    "secret as env": config(mqtt={"username": "u", "password_env": "EDGEGW_X"}),
    "profile vars": device(
        profile="schneider-bcpme", profile_vars={"panels": 1}, points=[{"id": "panel1.serial_number", "publish": False}]
    ),
    "repeat block": device(
        points=[{"repeat": {"n": [1, 3]}, "points": [{"id": "ch{n}.i", "address": "{100 + n}", "quantity": "current"}]}]
    ),
    "calc point": device(points=[POINT, {"id": "p.x", "quantity": "voltage", "calc": "p_v * 2".replace("p_v", "1")}]),
    "forms the point validators normalise": device(
        points=[
            {**POINT, "circuit": 12, "invalid": "NaN"},
            {"id": "e", "address": 2, "type": "uint32", "quantity": "active_power", "unit": "W", "rate": True},
        ]
    ),
    "bus": config(
        buses=[{"id": "rs485-1", "serial": {"port": "/dev/ttyUSB0", "framing": "ascii"}}],
        devices=[{"id": "m1", "driver": "modbus", "bus": "rs485-1", "unit": 3, "points": [POINT]}],
    ),
    "health and commands": config(health={"listen": "127.0.0.1:9108"}, commands={"enabled": True, "max_age": "1min"}),
    "snmp aliases": config(
        devices=[
            {
                "id": "u1",
                "driver": "snmp",
                "host": "127.0.0.1",
                "version": "v2c",
                "community_env": "C",
                "points": [{"id": "up", "oid": "1.3.6.1.2.1.1.3.0", "type": "TimeTicks", "quantity": "uptime"}],
            }
        ]
    ),
}


@pytest.mark.parametrize("name", list(VALID))
def test_valid_configs_pass_both(name: str, tmp_path: Path) -> None:
    data = VALID[name]
    assert check_ok(data, tmp_path), name
    assert [e.message for e in VALIDATOR.iter_errors(data)] == []


# --- configs both reject ----------------------------------------------------------------------

INVALID: dict[str, dict[str, Any]] = {
    "no site": {"devices": []},
    "unknown top key": config(sites="x"),
    "unknown device key": device(intervall="5s"),
    "unknown point key": device(points=[{**POINT, "adress": 1}]),
    "bad duration": device(interval="5 minutes"),
    "negative duration": device(timeout=-1),
    "duration is not a bool": device(timeout=True),
    "bad size": config(buffer={"max_size": "lots"}),
    "size below its bound": config(mqtt={"queue_bytes": 1000}),
    "unknown driver": config(devices=[{"id": "x", "driver": "canbus"}]),
    "device without id": config(devices=[{"driver": "modbus", "tcp": {"host": "h"}}]),
    "point without quantity": device(points=[{"id": "p", "address": 1}]),
    "point without address": device(points=[{"id": "p", "quantity": "voltage"}]),
    "port 0": device(tcp={"host": "h", "port": 0}),
    "port too big": device(tcp={"host": "h", "port": 70000}),
    "port text not a number": device(tcp={"host": "h", "port": "http"}),
    "bad site name": {"site": "my site"},
    "bad enum": device(function="holdings"),
    "wrong type": config(mqtt={"qos": "high"}),
    "mqtt url scheme": config(mqtt={"url": "http://broker"}),
    "mqtt url port": config(mqtt={"url": ["mqtt://b:0"]}),
    "empty url list": config(mqtt={"url": []}),
    "health listen without port": config(health={"listen": "localhost"}),
    "both secret forms": config(mqtt={"username": "u", "password_env": "A", "password_file": "f"}),
    "state_dir null": config(state_dir=None),
    "tcp empty list": device(tcp=[]),
    "calc point with an address": device(points=[POINT, {"id": "c", "quantity": "voltage", "calc": "1", "address": 3}]),
    "repeat block with extra key": device(points=[{"repeat": {"n": 2}, "points": [], "id": "x"}]),
    "quantity vocabulary": device(points=[{**POINT, "quantity": "voltag"}]),
    "unit vocabulary": device(points=[{**POINT, "unit": "volt"}]),
    "snmp version": config(devices=[{"id": "u", "driver": "snmp", "host": "h", "version": "4", "community_env": "C"}]),
}

# What `check` rejects and JSON Schema cannot say (docs/configuration.md, "Editor support").
KNOWN_GAPS: dict[str, dict[str, Any]] = {
    "a bus id that must exist": config(devices=[{"id": "m1", "driver": "modbus", "bus": "nope", "points": [POINT]}]),
    "device ids unique": config(devices=[{**MODBUS, "points": [POINT]}, {**MODBUS, "points": [POINT]}]),
    "point ids unique": device(points=[POINT, POINT]),
    "a calc expression": device(points=[POINT, {"id": "c", "quantity": "voltage", "calc": "1 +"}]),
    "a calc over an unknown point": device(points=[{"id": "c", "quantity": "voltage", "calc": "nope * 2"}]),
    "a profile that must exist": device(profile="no-such-profile"),
    "cross-key rules (tcp or bus)": config(devices=[{"id": "m1", "driver": "modbus", "points": [POINT]}]),
    "a minimum on a duration in text": device(interval="1ms"),
    "a bound a validator checks on a duration": device(interval=0.001),
    "a bound on a size in text": config(mqtt={"queue_bytes": "64KB"}),
    "same broker twice": config(mqtt={"url": ["mqtt://a", "mqtt://a:1883"]}),
}


@pytest.mark.parametrize("name", list(INVALID))
def test_invalid_configs_fail_both(name: str, tmp_path: Path) -> None:
    data = INVALID[name]
    assert not check_ok(data, tmp_path), f"{name}: check accepts it"
    assert not schema_ok(data), f"{name}: the schema accepts it"


@pytest.mark.parametrize("name", list(KNOWN_GAPS))
def test_known_gaps_pass_the_schema_and_fail_check(name: str, tmp_path: Path) -> None:
    data = KNOWN_GAPS[name]
    assert not check_ok(data, tmp_path), f"{name}: check accepts it"
    assert schema_ok(data), f"{name}: the schema now says it: move it to INVALID"


# --- generated configs --------------------------------------------------------------------------

durations = st.one_of(
    st.integers(1, 86400),
    st.floats(0.01, 1e5, allow_nan=False),
    # An interval is at least 10ms: in text, a rule the schema cannot say (KNOWN_GAPS).
    st.builds(lambda n, u: f"{n}{u}", st.integers(1, 999), st.sampled_from(["s", "sec", "min", "m", "h", "d"])),
)
sizes = st.one_of(
    st.integers(64 * 1024, 2**40),
    st.builds(lambda n, u: f"{n}{u}", st.integers(64, 999), st.sampled_from(["KiB", "MiB", "GB", "MB"])),
)
ports = st.one_of(st.integers(1, 65535), st.integers(1, 65535).map(str))
modbus_points = st.lists(
    st.fixed_dictionaries(
        {"address": st.integers(0, 65535), "quantity": st.sampled_from(["voltage", "current", "active_power"])},
        optional={
            "type": st.sampled_from(["uint16", "int16", "uint32", "int32", "float32"]),
            "scale": st.floats(-1e3, 1e3, allow_nan=False),
            "function": st.sampled_from(["holding", "input"]),
            "publish": st.booleans(),
        },
    ),
    max_size=4,
)
modbus_devices = st.builds(
    lambda points, extra: {
        "driver": "modbus",
        "points": [{"id": f"p{i}", **p} for i, p in enumerate(points)],
        **extra,
    },
    modbus_points,
    st.fixed_dictionaries(
        {"tcp": st.fixed_dictionaries({"host": st.just("127.0.0.1")}, optional={"port": ports})},
        optional={
            "interval": durations,
            "timeout": durations,
            "unit": st.integers(0, 255),
            "word_order": st.sampled_from(["big", "little"]),
            "enabled": st.booleans(),
        },
    ),
)
configs = st.builds(
    lambda devices, mqtt, buffer: {
        "site": "gen",
        "state_dir": "memory",
        "mqtt": mqtt,
        "buffer": buffer,
        # One endpoint per device: several devices on one endpoint share its bus (a cross check).
        "devices": [
            {**d, "id": f"d{i}", "tcp": {**d["tcp"], "host": f"127.0.0.{i + 1}"}} for i, d in enumerate(devices)
        ],
    },
    st.lists(modbus_devices, max_size=3),
    st.fixed_dictionaries(
        {},
        optional={
            "url": st.one_of(ports.map(lambda p: f"mqtt://127.0.0.1:{p}"), st.just(["mqtt://a", "mqtts://b:8883"])),
            "keepalive": durations,
            "queue_bytes": sizes,
            "qos": st.sampled_from([0, 1, 2]),
        },
    ),
    st.fixed_dictionaries({}, optional={"max_size": sizes, "sync_interval": durations}),
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(configs)
def test_generated_configs_the_schema_accepts_check_accepts(tmp_path: Path, data: dict[str, Any]) -> None:
    if schema_ok(data):
        assert check_ok(data, tmp_path), data


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    configs, st.sampled_from(["interval", "timeout", "unit", "tcp", "points"]), st.sampled_from([True, "x y", -5, {}])
)
def test_generated_broken_configs_check_rejects_the_schema_rejects(
    tmp_path: Path, data: dict[str, Any], key: str, bad: Any
) -> None:
    if not data["devices"]:
        return
    data["devices"][0][key] = bad
    if not check_ok(data, tmp_path):
        assert not schema_ok(data), data
