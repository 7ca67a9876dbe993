"""Every sample and example config in the repository passes `edgegw check`."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SAMPLES = sorted(REPO.glob("drivers/*/sample.yaml")) + sorted(REPO.glob("config/*.yaml"))
SECRETS = {
    "EDGEGW_SNMP_COMMUNITY": "public",
    "EDGEGW_SNMP_AUTH": "authkey-123",
    "EDGEGW_SNMP_PRIV": "privkey-456",
    "EDGEGW_SNMP_TRAP_COMMUNITIES": "public",
    "EDGEGW_MQTT_PASSWORD": "x",
    "EDGEGW_DEMO_COMMUNITY": "public",
}


@pytest.mark.parametrize("sample", SAMPLES, ids=lambda p: str(p.relative_to(REPO)))
def test_sample_config_checks(sample: Path, tmp_path: Path) -> None:
    text = sample.read_text(encoding="utf-8")
    # Files the samples expect under /etc/edgegw on a real box: stand-ins in a temporary folder.
    for name in set(re.findall(r"/etc/edgegw/([\w./-]+)", text)):
        target = tmp_path / "etc" / name
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text("stand-in\n", encoding="utf-8")
    text = text.replace("/etc/edgegw/", f"{tmp_path}/etc/")
    config = sample.with_name(f".check-{sample.stem}-{tmp_path.name}.yaml")
    config.write_text(text, encoding="utf-8")
    try:
        env = {"PATH": "/usr/bin:/bin", **SECRETS}
        res = subprocess.run(
            [sys.executable, "-m", "gateway.cli", "check", str(config)],
            capture_output=True,
            text=True,
            timeout=60,
            env=env,
            cwd=REPO,
            check=False,
        )
    finally:
        config.unlink()
    assert res.returncode == 0, res.stderr
