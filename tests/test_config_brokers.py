"""`mqtt.url` as a list of brokers: one string stays valid, every entry is checked, errors name file:line and index."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from gateway.config import BrokerEndpoint, ConfigError, MqttConfig, load_config_text
from gateway.publish import tls_context

REPO = Path(__file__).resolve().parent.parent


def mqtt(text: str) -> MqttConfig:
    return load_config_text(f"site: s\nmqtt:\n{text}", "site.yaml").mqtt


def issues(text: str) -> list[str]:
    with pytest.raises(ConfigError) as exc:
        mqtt(text)
    return [str(i) for i in exc.value.issues]


def test_a_single_url_is_a_list_of_one() -> None:
    cfg = mqtt("  url: mqtt://broker.dc1:1884\n")
    assert cfg.url == ["mqtt://broker.dc1:1884"]
    assert cfg.endpoints == [BrokerEndpoint(0, "mqtt://broker.dc1:1884", "broker.dc1", 1884, False)]
    assert MqttConfig().endpoints[0].address == "127.0.0.1:1883"


def test_a_list_keeps_its_order_and_each_url_its_own_scheme() -> None:
    cfg = mqtt("  url:\n    - mqtt://node-1\n    - mqtts://node-2\n    - tcp://[fd00::3]:1885\n")
    assert [(e.index, e.url, e.port, e.tls) for e in cfg.endpoints] == [
        (0, "mqtt://node-1:1883", 1883, False),
        (1, "mqtts://node-2:8883", 8883, True),
        (2, "mqtt://[fd00::3]:1885", 1885, False),
    ]
    assert cfg.endpoints[2].address == "[fd00::3]:1885"
    assert tls_context(cfg, cfg.endpoints[0]) is None
    assert tls_context(cfg, cfg.endpoints[1]) is not None


def test_a_tls_section_applies_to_every_broker() -> None:
    cfg = mqtt("  url: [mqtt://node-1, 'mqtt://node-2:1999']\n  tls: {}\n")
    assert [(e.url, e.tls) for e in cfg.endpoints] == [("mqtts://node-1:8883", True), ("mqtts://node-2:1999", True)]


def test_a_bad_entry_is_named_by_file_line_and_index() -> None:
    found = issues("  url:\n    - mqtt://node-1\n    - mqtt://node-2:99999\n    - http://node-3\n")
    assert found == [
        "site.yaml:5 mqtt.url[1]: bad port in url (a port is 1-65535)",
        "site.yaml:6 mqtt.url[2]: use mqtt://host[:port] or mqtts://host[:port]",
    ]


def test_a_bad_single_url_names_the_key() -> None:
    assert issues("  url: mqtt://node-1:0\n") == ["site.yaml:3 mqtt.url: bad port in url (a port is 1-65535)"]


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("[]", "name at least one broker URL"),
        ("[mqtt://node-1, 'mqtt://NODE-1:1883']", "url[1] names the same broker as url[0] (node-1:1883)"),
        ("{host: node-1}", "a broker URL, or a list of them"),
    ],
)
def test_a_list_must_name_distinct_brokers(value: str, message: str) -> None:
    assert issues(f"  url: {value}\n") == [f"site.yaml:3 mqtt.url: {message}"]


def test_connect_timeout_and_failback_after() -> None:
    cfg = mqtt("  url: [mqtt://a, mqtt://b]\n  connect_timeout: 2s\n  failback_after: 5min\n")
    assert (cfg.connect_timeout, cfg.failback_after) == (2.0, 300.0)
    assert (MqttConfig().connect_timeout, MqttConfig().failback_after) == (5.0, None)
    assert issues("  connect_timeout: 0s\n") == ["site.yaml:3 mqtt.connect_timeout: must be more than 0"]


def test_edgegw_check_exits_2_on_a_bad_entry(tmp_path: Path) -> None:
    path = tmp_path / "site.yaml"
    path.write_text("site: s\nmqtt:\n  url:\n    - mqtt://node-1\n    - ftp://node-2\n", encoding="utf-8")
    res = subprocess.run(
        [sys.executable, "-m", "gateway.cli", "check", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO,
        check=False,
    )
    assert res.returncode == 2, res.stdout + res.stderr
    assert f"{path}:5 mqtt.url[1]: use mqtt://host[:port] or mqtts://host[:port]" in res.stderr
