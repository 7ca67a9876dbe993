"""The shipped schema in a real editor backend: yaml-language-server, spoken to over LSP (stdio).

Skipped where no yaml-language-server is installed (`npm i -g yaml-language-server`, or its path in
$EDGEGW_YAML_LANGUAGE_SERVER): CI has none; run it after changing the schema's shape.
"""

from __future__ import annotations

import json
import os
import select
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parent.parent
SERVER = os.environ.get("EDGEGW_YAML_LANGUAGE_SERVER") or shutil.which("yaml-language-server")
pytestmark = pytest.mark.skipif(SERVER is None, reason="no yaml-language-server installed")


class Lsp:
    """Just enough of a language client: open documents, collect diagnostics, ask for completion."""

    def __init__(self, command: str) -> None:
        self.proc = subprocess.Popen(
            [command, "--stdio"], stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL
        )
        self.buf = b""
        self.ids = iter(range(1, 1_000_000))
        self.diagnostics: dict[str, list[dict[str, Any]]] = {}
        self.request("initialize", {"processId": None, "rootUri": None, "capabilities": {}})
        self.notify("initialized", {})
        settings = {"yaml": {"validate": True, "completion": True, "schemaStore": {"enable": False}}}
        self.notify("workspace/didChangeConfiguration", {"settings": settings})

    def _send(self, msg: dict[str, Any]) -> None:
        assert self.proc.stdin is not None
        body = json.dumps({"jsonrpc": "2.0", **msg}).encode()
        self.proc.stdin.write(b"Content-Length: %d\r\n\r\n" % len(body) + body)
        self.proc.stdin.flush()

    def notify(self, method: str, params: dict[str, Any]) -> None:
        self._send({"method": method, "params": params})

    def request(self, method: str, params: dict[str, Any], timeout: float = 30) -> Any:
        rid = next(self.ids)
        self._send({"id": rid, "method": method, "params": params})
        for msg in self._messages(timeout):
            if msg.get("id") == rid and "method" not in msg:
                return msg.get("result")
        raise TimeoutError(method)

    def _messages(self, timeout: float) -> Iterator[dict[str, Any]]:
        assert self.proc.stdout is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if b"\r\n\r\n" in self.buf:
                head, rest = self.buf.split(b"\r\n\r\n", 1)
                size = next(
                    int(h.split(b":")[1]) for h in head.split(b"\r\n") if h.lower().startswith(b"content-length")
                )
                if len(rest) >= size:
                    self.buf = rest[size:]
                    msg = json.loads(rest[:size])
                    if msg.get("method") == "textDocument/publishDiagnostics":
                        self.diagnostics[msg["params"]["uri"]] = msg["params"]["diagnostics"]
                    elif "id" in msg and "method" in msg:  # the server asks (workspace/configuration)
                        self._send({"id": msg["id"], "result": [{"validate": True}] * len(msg["params"]["items"])})
                    yield msg
                    continue
            ready, _, _ = select.select([self.proc.stdout], [], [], 0.2)
            if ready:
                self.buf += os.read(self.proc.stdout.fileno(), 65536)

    def open(self, path: Path) -> str:
        uri = path.resolve().as_uri()
        doc = {"uri": uri, "languageId": "yaml", "version": 1, "text": path.read_text(encoding="utf-8")}
        self.notify("textDocument/didOpen", {"textDocument": doc})
        return uri

    def diagnostics_of(self, uri: str, timeout: float = 30) -> list[dict[str, Any]]:
        for _ in self._messages(timeout):
            if uri in self.diagnostics:
                break
        return self.diagnostics[uri]

    def close(self) -> None:
        self.proc.kill()
        self.proc.wait(timeout=10)


@pytest.fixture(scope="module")
def lsp() -> Iterator[Lsp]:
    assert SERVER is not None
    client = Lsp(SERVER)
    yield client
    client.close()


SHIPPED = sorted(REPO.glob("config/*.yaml")) + sorted(REPO.glob("drivers/*/sample.yaml"))
SHIPPED += sorted(REPO.glob("drivers/*/profiles/*.yaml"))


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: str(p.relative_to(REPO)))
def test_the_shipped_files_show_no_errors(lsp: Lsp, path: Path) -> None:
    assert lsp.diagnostics_of(lsp.open(path)) == []


def test_mistakes_are_reported_on_their_line_in_words(lsp: Lsp, tmp_path: Path) -> None:
    schema = REPO / "config" / "edgegw.schema.json"
    path = tmp_path / "site.yaml"
    path.write_text(
        f"# yaml-language-server: $schema={schema}\n"
        "site: dc1\n"
        "mqtt: {url: 'http://broker', keepalive: 5 minutes}\n"
        "devices:\n"
        "  - id: m1\n"
        "    driver: modbus\n"
        "    tcp: {host: 10.0.0.1, port: 70000}\n"
        "    intervall: 5s\n"
        "    points:\n"
        "      - repeat: {n: [1, 3]}\n"
        "        points: [{id: 'c{n}', address: '{10 + n}', quantity: current}]\n"
        "      - {id: v, address: 1, quantity: voltag}\n",
        encoding="utf-8",
    )
    found = {(d["range"]["start"]["line"] + 1, d["message"]) for d in lsp.diagnostics_of(lsp.open(path))}
    lines = sorted(line for line, _ in found)
    assert lines == [3, 3, 7, 8, 12], found
    messages = " | ".join(m for _, m in found)
    for part in ("mqtts://host[:port]", "a duration: 500ms", "65535", "intervall", "active_power"):
        assert part in messages, messages


def test_completion_offers_the_drivers_own_keys(lsp: Lsp, tmp_path: Path) -> None:
    schema = REPO / "config" / "edgegw.schema.json"
    path = tmp_path / "c.yaml"
    path.write_text(
        f"# yaml-language-server: $schema={schema}\nsite: s\ndevices:\n  - id: m\n    driver: modbus\n    \n",
        encoding="utf-8",
    )
    uri = lsp.open(path)
    lsp.diagnostics_of(uri)
    result = lsp.request(
        "textDocument/completion", {"textDocument": {"uri": uri}, "position": {"line": 5, "character": 4}}
    )
    items = result.get("items", []) if isinstance(result, dict) else result or []
    labels = {i["label"] for i in items}
    assert {"tcp", "unit", "word_order", "points", "interval"} <= labels
    assert "oid" not in labels and "obis" not in labels  # another driver's keys
