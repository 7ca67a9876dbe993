"""Every sample and example config in the repository passes `edgegw check` on a fresh machine.

A fresh machine has none of the files and secrets the samples name for run time (CA file,
password file, SNMP keys in the environment): `check` names each one as a warning with its
file:line and still passes; `check --strict` (and `edgegw run`) refuse them.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

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
# What each sample needs of the machine at run time, as `check` names it (file:line key: ...).
NEEDS = {
    "config/gateway.example.yaml": [
        (10, "mqtt.password_file", "/etc/edgegw/mqtt.secret"),
        (12, "mqtt.tls.ca_file", "/etc/edgegw/ca.pem"),
    ],
    "config/demo.yaml": [(30, "devices[5].community_env", "EDGEGW_DEMO_COMMUNITY")],
    "drivers/snmp/sample.yaml": [
        (13, "snmp.traps.communities_env", "EDGEGW_SNMP_TRAP_COMMUNITIES"),
        (15, "snmp.traps.users[0].auth_key_env", "EDGEGW_SNMP_AUTH"),
        (16, "snmp.traps.users[0].priv_key_env", "EDGEGW_SNMP_PRIV"),
        (28, "devices[0].auth_key_env", "EDGEGW_SNMP_AUTH"),
        (30, "devices[0].priv_key_env", "EDGEGW_SNMP_PRIV"),
        (42, "devices[1].community_env", "EDGEGW_SNMP_COMMUNITY"),
        (56, "devices[2].community_env", "EDGEGW_SNMP_COMMUNITY"),
    ],
}
FRESH = {"PATH": "/usr/bin:/bin"}  # no HOME, no secrets, no XDG_*: nothing but a shell's path


def check(*args: str, env: dict[str, str] = FRESH) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gateway.cli", "check", *args],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
        cwd=REPO,
        check=False,
    )


def rel(path: Path) -> str:
    return str(path.relative_to(REPO))


def test_every_sample_passes_check_on_a_fresh_machine_and_names_what_it_needs() -> None:
    res = check(*(rel(s) for s in SAMPLES))
    assert res.returncode == 0, res.stderr
    for sample in SAMPLES:
        needs = NEEDS.get(rel(sample), [])
        suffix = f", {len(needs)} warning{'s' if len(needs) != 1 else ''}: errors with --strict)" if needs else ")"
        assert re.search(rf"^{re.escape(rel(sample))}: ok \(.*{re.escape(suffix)}$", res.stdout, re.M), res.stdout
    warnings = [line for line in res.stderr.splitlines() if line.endswith("[warning: needed by edgegw run]")]
    assert len(warnings) == sum(len(n) for n in NEEDS.values()), res.stderr
    for name, needs in NEEDS.items():
        for line, key, what in needs:
            assert any(w.startswith(f"{name}:{line} {key}: ") and what in w for w in warnings), (key, res.stderr)


def test_strict_check_refuses_what_is_missing() -> None:
    res = check("--strict", *(rel(s) for s in SAMPLES))
    assert res.returncode == 2
    for sample in SAMPLES:
        needs = NEEDS.get(rel(sample), [])
        if needs:
            assert f"{rel(sample)}: invalid configuration ({len(needs)} error" in res.stderr, res.stderr
            for line, key, _ in needs:
                assert f"{rel(sample)}:{line} {key}: " in res.stderr
        else:
            assert f"{rel(sample)}: ok (" in res.stdout, res.stderr


def test_every_sample_passes_strict_check_where_its_files_and_secrets_exist(tmp_path: Path) -> None:
    configs = []
    for sample in SAMPLES:
        text = sample.read_text(encoding="utf-8")
        # Files the samples expect under /etc/edgegw on a real box: stand-ins in a temporary folder.
        for name in set(re.findall(r"/etc/edgegw/([\w./-]+)", text)):
            target = tmp_path / "etc" / name
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text("stand-in\n", encoding="utf-8")
        # Beside the sample: its relative files (DLMS sample.keys) resolve as they do for the sample.
        config = sample.with_name(f".check-{sample.stem}-{tmp_path.name}.yaml")
        config.write_text(text.replace("/etc/edgegw/", f"{tmp_path}/etc/"), encoding="utf-8")
        configs.append(config)
    try:
        res = check("--strict", *(str(c) for c in configs), env={**FRESH, **SECRETS})
    finally:
        for config in configs:
            config.unlink()
    assert res.returncode == 0, res.stderr
    assert "warning" not in res.stderr + res.stdout
    assert res.stdout.count(": ok (") == len(SAMPLES)
