"""`seq` survives a restart out of the box: a config without state_dir gets a real state folder."""

from __future__ import annotations

from functools import partial
from pathlib import Path

import pytest

from gateway.config import ConfigError, default_state_dir, load_config, load_config_text
from tests.harness import Collector, Daemon, Mosquitto, free_port


def test_the_default_folder_in_order_of_preference() -> None:
    every = {"STATE_DIRECTORY": "/var/lib/edgegw:/var/lib/other", "XDG_STATE_HOME": "/x", "HOME": "/home/u"}
    assert default_state_dir("s1", every) == Path("/var/lib/edgegw")
    assert default_state_dir("s1", {"XDG_STATE_HOME": "/x", "HOME": "/home/u"}) == Path("/x/edgegw/s1")
    # A relative XDG_STATE_HOME is invalid by the spec and ignored.
    assert default_state_dir("s1", {"XDG_STATE_HOME": "x", "HOME": "/home/u"}) == Path("/home/u/.local/state/edgegw/s1")
    for no_home in ({}, {"HOME": "/"}):
        # No config folder known here (a config from text): relative paths, and this, follow the working one.
        assert default_state_dir("s1", no_home) == Path.cwd() / "edgegw-state" / "s1"
    assert not (Path.cwd() / "edgegw-state").exists()  # nothing is created by looking


def test_a_config_without_state_dir_gets_the_default(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("STATE_DIRECTORY", raising=False)
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "xdg"))
    path = tmp_path / "gw.yaml"
    path.write_text("site: s1\n", encoding="utf-8")
    assert load_config(path).state_dir == tmp_path / "xdg" / "edgegw" / "s1"
    monkeypatch.setenv("STATE_DIRECTORY", str(tmp_path / "unit"))
    assert load_config(path).state_dir == tmp_path / "unit"
    monkeypatch.delenv("STATE_DIRECTORY")
    monkeypatch.delenv("XDG_STATE_HOME")
    monkeypatch.delenv("HOME")
    assert load_config(path).state_dir == tmp_path / "edgegw-state" / "s1"  # beside the config file
    assert not (tmp_path / "edgegw-state").exists()


def test_memory_only_when_asked_for_in_words(tmp_path: Path) -> None:
    assert load_config_text("site: s\nstate_dir: memory\n", "t.yaml", tmp_path).state_dir is None
    assert load_config_text("site: s\nstate_dir: st\n", "t.yaml", tmp_path).state_dir == tmp_path / "st"
    with pytest.raises(ConfigError) as exc:
        load_config_text("site: s\nstate_dir:\n", "t.yaml", tmp_path)
    [issue] = exc.value.issues
    assert (issue.line, issue.path) == (2, "state_dir") and "state_dir: memory" in issue.message


def seqs(collector: Collector, device: str) -> list[int]:
    return [m.json()["seq"] for m in collector.on(f"/{device}/data")]


def three(collector: Collector) -> bool:
    return len(seqs(collector, "dead")) >= 3


async def run_twice(tmp_path: Path, broker: Mosquitto, extra: str) -> tuple[list[int], list[int]]:
    """The daemon twice on one config; the data seqs of a device nobody answers for, per run."""
    dead = free_port()
    cfg = tmp_path / "gw.yaml"
    cfg.write_text(
        f"site: lab\nmqtt: {{url: '{broker.url}'}}\n{extra}devices:\n"
        f"  - {{id: dead, driver: modbus, tcp: {{host: 127.0.0.1, port: {dead}}}, interval: 100ms, timeout: 100ms,\n"
        f"     offline_after: 100, points: [{{id: v, address: 0, quantity: voltage, unit: V}}]}}\n",
        encoding="utf-8",
    )
    env = {"XDG_STATE_HOME": str(tmp_path / "xdg")}
    runs: list[list[int]] = []
    for _ in range(2):
        collector = Collector(broker.port, "edgegw/lab/dead/data")
        await collector.start()
        daemon = Daemon(cfg, tmp_path, env=env)
        await daemon.start()
        try:
            await collector.wait_for(partial(three, collector), what="three data messages")
        finally:
            assert await daemon.stop() == 0, daemon.output()[-2000:]
            await collector.stop()
        runs.append(seqs(collector, "dead"))
    return runs[0], runs[1]


async def test_seq_goes_on_after_a_restart_without_state_dir(tmp_path: Path, broker: Mosquitto) -> None:
    first, second = await run_twice(tmp_path, broker, "")
    assert first[0] == 1
    assert second[0] > max(first), (first, second)
    assert (tmp_path / "xdg" / "edgegw" / "lab" / "seq.json").is_file()


async def test_seq_restarts_only_with_state_dir_memory(tmp_path: Path, broker: Mosquitto) -> None:
    first, second = await run_twice(tmp_path, broker, "state_dir: memory\n")
    assert first[0] == 1 and second[0] == 1
    assert not (tmp_path / "xdg").exists()
