"""`make deb`: the package's contents and control data, then dpkg installing it into a throw-away root.

`make test` builds the package first and passes it as $EDGEGW_DEB; run alone, the test builds its own
(gzip instead of xz, to be quicker). The install uses `dpkg --root DIR --force-script-chrootless`:
dpkg unpacks into DIR and runs the maintainer scripts on the host with DPKG_ROOT=DIR, which they
honour (systemd-sysusers --root, deb-systemd-helper, the awk lookups of edgegw's ids). No chroot: the
throw-away root has no shell or python of its own, and /usr/bin/edgegw finds its libraries next to
itself, so it runs from DIR with the host's Debian /usr/bin/python3, as it would on a target.
"""

from __future__ import annotations

import gzip
import os
import re
import shutil
import stat
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from pathlib import Path

import pytest

from gateway.cli import build_parser
from gateway.manpage import subcommands

REPO = Path(__file__).resolve().parent.parent
VERSION = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))["project"]["version"]
CLEAN_ENV = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LC_ALL": "C.UTF-8"}
UNIT = "lib/systemd/system/edgegw.service"

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(shutil.which("dpkg-deb") is None, reason="not a Debian system: no dpkg-deb"),
]


def run(*args: str | Path, check: bool = True, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    res = subprocess.run(
        [str(a) for a in args], capture_output=True, text=True, timeout=600, env=env or CLEAN_ENV, check=False
    )
    assert not check or res.returncode == 0, f"{args}: {res.returncode}\n{res.stdout}\n{res.stderr}"
    return res


@pytest.fixture(scope="module")
def deb(tmp_path_factory: pytest.TempPathFactory) -> Path:
    given = os.environ.get("EDGEGW_DEB")
    if given:
        return Path(given)
    out = tmp_path_factory.mktemp("deb")
    env = {**os.environ, "PYTHON": sys.executable, "DEB_COMPRESS": "gzip"}
    res = run(REPO / "packaging" / "build-deb.sh", out, env=env)
    return Path(res.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def listing(deb: Path) -> dict[str, tuple[str, str]]:
    """Path (without ./) -> (mode string, owner/group) of every member."""
    found = {}
    for line in run("dpkg-deb", "-c", deb).stdout.splitlines():
        mode, owner, _size, _date, _time, name = line.split(None, 5)
        found[name.split(" -> ")[0].removeprefix("./")] = (mode, owner)
    return found


@pytest.fixture(scope="module")
def control(deb: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("control") / "DEBIAN"
    run("dpkg-deb", "-e", deb, out)
    return out


def field(deb: Path, name: str) -> str:
    return run("dpkg-deb", "-f", deb, name).stdout.strip()


def test_control_fields(deb: Path) -> None:
    assert field(deb, "Package") == "edgegw"
    assert field(deb, "Version") == f"{VERSION}-1"
    assert deb.name == f"edgegw_{VERSION}-1_{field(deb, 'Architecture')}.deb"
    assert field(deb, "Architecture") == run("dpkg", "--print-architecture").stdout.strip()
    depends = [d.strip() for d in field(deb, "Depends").split(",")]
    assert {"python3 (>= 3.11)", "python3 (<< 3.12)"} <= set(depends)
    assert any(re.fullmatch(r"libc6 \(>= 2\.\d+\)", d) for d in depends), depends
    # Test peers, not runtime needs.
    assert not {"mosquitto", "snmpd", "socat"} & {d.split()[0] for d in depends}


def test_files(listing: dict[str, tuple[str, str]]) -> None:
    expected = {
        "usr/bin/edgegw": "-rwxr-xr-x",
        UNIT: "-rw-r--r--",
        "usr/lib/sysusers.d/edgegw.conf": "-rw-r--r--",
        "usr/lib/tmpfiles.d/edgegw.conf": "-rw-r--r--",
        "etc/edgegw/gateway.yaml": "-rw-r-----",
        "var/lib/edgegw/": "drwxr-x---",
        "usr/share/doc/edgegw/copyright": "-rw-r--r--",
        "usr/share/doc/edgegw/changelog.Debian.gz": "-rw-r--r--",
        "usr/share/doc/edgegw/README.md.gz": "-rw-r--r--",
        "usr/share/doc/edgegw/operations.md.gz": "-rw-r--r--",
        "usr/share/man/man1/edgegw.1.gz": "-rw-r--r--",
        "usr/share/edgegw/edgegw.schema.json": "-rw-r--r--",
        "usr/share/edgegw/edgegw-profile.schema.json": "-rw-r--r--",
        "opt/edgegw/lib/gateway/cli.py": "-rw-r--r--",
    }
    for path, mode in expected.items():
        assert listing.get(path, ("missing",))[0] == mode, path
    for doc in (REPO / "docs").glob("*.md"):
        assert f"usr/share/doc/edgegw/{doc.name}.gz" in listing or f"usr/share/doc/edgegw/{doc.name}" in listing
    assert all(owner == "root/root" for _, owner in listing.values())
    names = set(listing)
    # Runtime libraries with their compiled extensions for CPython 3.11; no dev tools, no bytecode.
    for package in ("pydantic_core", "pymodbus", "bacpypes3", "pysnmp", "gurux_dlms", "aiomqtt", "uvloop", "yaml"):
        assert f"opt/edgegw/lib/{package}/" in names, package
    assert any(re.search(r"opt/edgegw/lib/.*\.cpython-311-.*\.so$", n) for n in names)
    for dev in ("pytest", "mypy", "hypothesis", "ruff", "_pytest"):
        assert f"opt/edgegw/lib/{dev}/" not in names, dev
    assert not [n for n in names if "__pycache__" in n or n.endswith(".pyc")]
    assert not [n for n in names if n.startswith("opt/edgegw/lib/bin/")]


def test_maintainer_scripts_and_conffiles(control: Path) -> None:
    assert (control / "conffiles").read_text().split() == ["/etc/edgegw/gateway.yaml"]
    for script in ("postinst", "prerm", "postrm"):
        path = control / script
        assert path.stat().st_mode & 0o777 == 0o755, script
        assert path.read_text().startswith("#!/bin/sh\n")
        run("sh", "-n", path)
    md5sums = (control / "md5sums").read_text()
    assert "  usr/bin/edgegw\n" in md5sums and "etc/edgegw" not in md5sums


def test_man_page_and_unit_documentation(deb: Path, tmp_path: Path) -> None:
    run("dpkg-deb", "-x", deb, tmp_path)
    unit = (tmp_path / UNIT).read_text()
    docs = next(line for line in unit.splitlines() if line.startswith("Documentation=")).split("=", 1)[1].split()
    assert "man:edgegw(1)" in docs
    for doc in docs:
        assert not doc.startswith("file://") or (tmp_path / doc.removeprefix("file:///")).is_file(), doc
    assert "ExecStart=/usr/bin/edgegw run --config /etc/edgegw/gateway.yaml" in unit
    page = gzip.decompress((tmp_path / "usr/share/man/man1/edgegw.1.gz").read_bytes()).decode()
    assert page.startswith('.\\" Generated by gateway/manpage.py')
    assert f'"edgegw {VERSION}"' in page
    for name in subcommands(build_parser()):
        assert f'.SS "{name}"' in page, name


def dpkg(root: Path, *args: str | Path) -> subprocess.CompletedProcess[str]:
    return run("dpkg", f"--root={root}", "--force-script-chrootless", "--force-depends", "--force-not-root", *args)


@pytest.fixture
def root(tmp_path: Path) -> Iterator[Path]:
    """An empty root with a dpkg database and nothing else."""
    top = tmp_path / "root"
    for d in ("var/lib/dpkg/info", "var/lib/dpkg/updates"):
        (top / d).mkdir(parents=True)
    (top / "var/lib/dpkg/status").touch()
    yield top


def db_id(root: Path, db: str, name: str) -> int:
    for line in (root / "etc" / db).read_text().splitlines():
        fields = line.split(":")
        if fields[0] == name:
            return int(fields[2])
    raise AssertionError(f"no {name} in {db}")


def unit_condition(root: Path) -> list[str]:
    """The unit's ExecCondition command line, pointed at the config inside `root`."""
    line = next(x for x in (root / UNIT).read_text().splitlines() if x.startswith("ExecCondition="))
    command = line.removeprefix("ExecCondition=").replace(
        "/etc/edgegw/gateway.yaml", str(root / "etc/edgegw/gateway.yaml")
    )
    assert command.startswith("/bin/sh -c '") and command.endswith("'")
    return ["/bin/sh", "-c", command.removeprefix("/bin/sh -c '").removesuffix("'")]


def edgegw(root: Path, *args: str) -> subprocess.CompletedProcess[str]:
    # Run as the file is: its shebang picks the host's Debian /usr/bin/python3.
    return run(root / "usr/bin/edgegw", *args, check=False)


@pytest.mark.skipif(
    not Path("/usr/bin/python3").exists()
    or run("/usr/bin/python3", "-c", "import sys; print(sys.version_info[:2] == (3, 11))").stdout.strip() != "True",
    reason="the package needs Debian's python3 3.11",
)
def test_install_check_remove_purge(deb: Path, root: Path) -> None:
    out = dpkg(root, "--install", deb)
    assert "Setting up edgegw" in out.stdout
    # The user, with the state folder and config readable only by it.
    uid, gid = db_id(root, "passwd", "edgegw"), db_id(root, "group", "edgegw")
    assert "edgegw" in (root / "etc/group").read_text().split("dialout:", 1)[1].splitlines()[0]
    for path in ("var/lib/edgegw", "var/lib/edgegw/buffer"):
        st = (root / path).stat()
        assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == (uid, gid, 0o750), path
    conf = root / "etc/edgegw/gateway.yaml"
    assert (conf.stat().st_gid, stat.S_IMODE(conf.stat().st_mode)) == (gid, 0o640)
    # Enabled, not started: the unit waits for the config to be edited.
    assert (root / "etc/systemd/system/multi-user.target.wants/edgegw.service").is_symlink()
    assert list((root / "opt/edgegw/lib/gateway/__pycache__").glob("cli.cpython-311.pyc"))

    res = edgegw(root, "check", "--strict", str(conf))
    assert res.returncode == 0 and "ok (0 devices" in res.stdout, res.stderr
    assert run(*unit_condition(root), check=False).returncode == 1

    # The operator's edit: the marker line gone, the example device uncommented.
    text = conf.read_text()
    edited = "\n".join(line for line in text.splitlines() if "EDGEGW_UNCONFIGURED" not in line)
    edited = edited.replace("devices: []", "devices:").replace("\n#  ", "\n  ") + "\n"
    conf.write_text(edited)
    assert run(*unit_condition(root), check=False).returncode == 0
    res = edgegw(root, "check", "--strict", str(conf))
    assert res.returncode == 0 and "ok (1 devices" in res.stdout, res.stdout + res.stderr
    assert edgegw(root, "--help").returncode == 0

    # Reinstalling (an upgrade as far as the scripts go) keeps the edited conffile.
    dpkg(root, "--install", deb)
    assert conf.read_text() == edited
    (root / "var/lib/edgegw/buffer/segment").write_text("undelivered")

    dpkg(root, "--remove", "edgegw")
    assert conf.read_text() == edited
    assert (root / "var/lib/edgegw/buffer/segment").exists()
    assert not (root / "opt/edgegw").exists() and not (root / "usr/bin/edgegw").exists()

    dpkg(root, "--purge", "edgegw")
    assert not (root / "etc/edgegw").exists() and not (root / "var/lib/edgegw").exists()
    assert not (root / "etc/systemd/system/multi-user.target.wants/edgegw.service").exists()


@pytest.mark.skipif(shutil.which("lintian") is None, reason="lintian is not installed")
def test_lintian_finds_nothing_not_overridden(deb: Path) -> None:
    res = run("lintian", "--fail-on", "error,warning", deb, check=False)
    tags = [line for line in res.stdout.splitlines() if re.match(r"[EW]: ", line)]
    assert res.returncode == 0 and not tags, res.stdout + res.stderr
