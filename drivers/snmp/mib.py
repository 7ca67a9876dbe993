"""MIB support: compile vendor MIB files with pysmi, resolve `MODULE::symbol.index`, name OIDs.

Integrators drop the vendor's MIB files (ASN.1 text, any file name) into a folder listed in
`mib_dirs`; a point may then say `oid: "BCPME-MIB::branchCurrent.1"`. At start the modules the
points name are compiled into pysnmp modules (in `snmp.mib_cache`, or a temporary folder) and the
symbols resolved to numeric OIDs once; polling never touches the MIB machinery.

pysmi must read the SMI base modules a MIB imports (SNMPv2-SMI, SNMPv2-TC, ...). Those RFC texts
are not installed on most systems (Debian ships them in non-free), so the minimal stand-ins below
declare just the names those modules export; pysnmp supplies the real compiled modules, and a
copy of the real text in `mib_dirs` takes precedence.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
import threading
import warnings
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from drivers.snmp.codec import Oid, format_oid, split_symbol, well_known_name

_DEFINITIONS = re.compile(rb"^\s*([A-Za-z][A-Za-z0-9-]*)\s+(?:PIB-)?DEFINITIONS\s*(?:[A-Z ]*)::=\s*BEGIN", re.M)
_MAX_MIB_SIZE = 10_000_000

_SMI_V2_ROOTS = """
org            OBJECT IDENTIFIER ::= { iso 3 }
dod            OBJECT IDENTIFIER ::= { org 6 }
internet       OBJECT IDENTIFIER ::= { dod 1 }
directory      OBJECT IDENTIFIER ::= { internet 1 }
mgmt           OBJECT IDENTIFIER ::= { internet 2 }
mib-2          OBJECT IDENTIFIER ::= { mgmt 1 }
transmission   OBJECT IDENTIFIER ::= { mib-2 10 }
experimental   OBJECT IDENTIFIER ::= { internet 3 }
private        OBJECT IDENTIFIER ::= { internet 4 }
enterprises    OBJECT IDENTIFIER ::= { private 1 }
security       OBJECT IDENTIFIER ::= { internet 5 }
snmpV2         OBJECT IDENTIFIER ::= { internet 6 }
snmpDomains    OBJECT IDENTIFIER ::= { snmpV2 1 }
snmpProxys     OBJECT IDENTIFIER ::= { snmpV2 2 }
snmpModules    OBJECT IDENTIFIER ::= { snmpV2 3 }
"""

_TC = [
    ("DisplayString", '"255a"', "OCTET STRING (SIZE (0..255))"),
    ("PhysAddress", '"1x:"', "OCTET STRING"),
    ("MacAddress", '"1x:"', "OCTET STRING (SIZE (6))"),
    ("TruthValue", None, "INTEGER { true(1), false(2) }"),
    ("TestAndIncr", None, "INTEGER (0..2147483647)"),
    ("AutonomousType", None, "OBJECT IDENTIFIER"),
    ("InstancePointer", None, "OBJECT IDENTIFIER"),
    ("VariablePointer", None, "OBJECT IDENTIFIER"),
    ("RowPointer", None, "OBJECT IDENTIFIER"),
    (
        "RowStatus",
        None,
        "INTEGER { active(1), notInService(2), notReady(3), createAndGo(4), createAndWait(5), destroy(6) }",
    ),
    ("TimeStamp", None, "TimeTicks"),
    ("TimeInterval", None, "INTEGER (0..2147483647)"),
    ("DateAndTime", '"2d-1d-1d,1d:1d:1d.1d,1a1d:1d"', "OCTET STRING (SIZE (8 | 11))"),
    ("StorageType", None, "INTEGER { other(1), volatile(2), nonVolatile(3), permanent(4), readOnly(5) }"),
    ("TDomain", None, "OBJECT IDENTIFIER"),
    ("TAddress", None, "OCTET STRING (SIZE (1..255))"),
]


def _textual_conventions() -> str:
    out = []
    for name, hint, syntax in _TC:
        display = f"\n    DISPLAY-HINT {hint}" if hint else ""
        out.append(
            f'{name} ::= TEXTUAL-CONVENTION{display}\n    STATUS current\n    DESCRIPTION "stand-in"\n    SYNTAX {syntax}\n'
        )
    return "\n".join(out)


STAND_INS: dict[str, str] = {
    "SNMPv2-SMI": f"""SNMPv2-SMI DEFINITIONS ::= BEGIN
{_SMI_V2_ROOTS}
MODULE-IDENTITY MACRO ::= BEGIN END
OBJECT-IDENTITY MACRO ::= BEGIN END
OBJECT-TYPE MACRO ::= BEGIN END
NOTIFICATION-TYPE MACRO ::= BEGIN END
ObjectName ::= OBJECT IDENTIFIER
NotificationName ::= OBJECT IDENTIFIER
Integer32 ::= INTEGER (-2147483648..2147483647)
IpAddress ::= [APPLICATION 0] IMPLICIT OCTET STRING (SIZE (4))
Counter32 ::= [APPLICATION 1] IMPLICIT INTEGER (0..4294967295)
Gauge32 ::= [APPLICATION 2] IMPLICIT INTEGER (0..4294967295)
Unsigned32 ::= [APPLICATION 2] IMPLICIT INTEGER (0..4294967295)
TimeTicks ::= [APPLICATION 3] IMPLICIT INTEGER (0..4294967295)
Opaque ::= [APPLICATION 4] IMPLICIT OCTET STRING
Counter64 ::= [APPLICATION 6] IMPLICIT INTEGER (0..18446744073709551615)
zeroDotZero OBJECT-IDENTITY
    STATUS current
    DESCRIPTION "stand-in"
    ::= {{ 0 0 }}
END
""",
    "SNMPv2-TC": f"""SNMPv2-TC DEFINITIONS ::= BEGIN
IMPORTS TimeTicks FROM SNMPv2-SMI;
TEXTUAL-CONVENTION MACRO ::= BEGIN END
{_textual_conventions()}
END
""",
    "SNMPv2-CONF": """SNMPv2-CONF DEFINITIONS ::= BEGIN
OBJECT-GROUP MACRO ::= BEGIN END
NOTIFICATION-GROUP MACRO ::= BEGIN END
MODULE-COMPLIANCE MACRO ::= BEGIN END
AGENT-CAPABILITIES MACRO ::= BEGIN END
END
""",
    "RFC1155-SMI": """RFC1155-SMI DEFINITIONS ::= BEGIN
org            OBJECT IDENTIFIER ::= { iso 3 }
dod            OBJECT IDENTIFIER ::= { org 6 }
internet       OBJECT IDENTIFIER ::= { dod 1 }
directory      OBJECT IDENTIFIER ::= { internet 1 }
mgmt           OBJECT IDENTIFIER ::= { internet 2 }
experimental   OBJECT IDENTIFIER ::= { internet 3 }
private        OBJECT IDENTIFIER ::= { internet 4 }
enterprises    OBJECT IDENTIFIER ::= { private 1 }
OBJECT-TYPE MACRO ::= BEGIN END
ObjectName ::= OBJECT IDENTIFIER
IpAddress ::= [APPLICATION 0] IMPLICIT OCTET STRING (SIZE (4))
NetworkAddress ::= [APPLICATION 0] IMPLICIT OCTET STRING (SIZE (4))
Counter ::= [APPLICATION 1] IMPLICIT INTEGER (0..4294967295)
Gauge ::= [APPLICATION 2] IMPLICIT INTEGER (0..4294967295)
TimeTicks ::= [APPLICATION 3] IMPLICIT INTEGER (0..4294967295)
Opaque ::= [APPLICATION 4] IMPLICIT OCTET STRING
END
""",
    "RFC-1212": """RFC-1212 DEFINITIONS ::= BEGIN
OBJECT-TYPE MACRO ::= BEGIN END
END
""",
    "RFC-1215": """RFC-1215 DEFINITIONS ::= BEGIN
TRAP-TYPE MACRO ::= BEGIN END
END
""",
    "RFC1213-MIB": """RFC1213-MIB DEFINITIONS ::= BEGIN
IMPORTS mgmt FROM RFC1155-SMI;
mib-2      OBJECT IDENTIFIER ::= { mgmt 1 }
system     OBJECT IDENTIFIER ::= { mib-2 1 }
interfaces OBJECT IDENTIFIER ::= { mib-2 2 }
at         OBJECT IDENTIFIER ::= { mib-2 3 }
ip         OBJECT IDENTIFIER ::= { mib-2 4 }
icmp       OBJECT IDENTIFIER ::= { mib-2 5 }
tcp        OBJECT IDENTIFIER ::= { mib-2 6 }
udp        OBJECT IDENTIFIER ::= { mib-2 7 }
egp        OBJECT IDENTIFIER ::= { mib-2 8 }
transmission OBJECT IDENTIFIER ::= { mib-2 10 }
snmp       OBJECT IDENTIFIER ::= { mib-2 11 }
DisplayString ::= OCTET STRING
PhysAddress ::= OCTET STRING
END
""",
}


def index_mib_files(dirs: Iterable[Path]) -> dict[str, Path]:
    """Module name -> file, for every MIB text file in the folders (recursively); first one wins."""
    found: dict[str, Path] = {}
    for root in dirs:
        if not root.is_dir():
            continue
        for dirpath, _dirnames, filenames in os.walk(root):
            for name in sorted(filenames):
                if name.endswith((".py", ".pyc", ".json")):
                    continue
                path = Path(dirpath) / name
                try:
                    if path.stat().st_size > _MAX_MIB_SIZE:
                        continue
                    data = path.read_bytes()
                except OSError:
                    continue
                for match in _DEFINITIONS.finditer(data):
                    found.setdefault(match.group(1).decode("ascii"), path)
    return found


def _readers(index: dict[str, Path]) -> list[Any]:
    from pysmi import error as smi_error
    from pysmi.mibinfo import MibInfo
    from pysmi.reader.base import AbstractReader

    class IndexedReader(AbstractReader):  # type: ignore[misc]
        """Finds a module by its name inside the files, whatever the files are called."""

        def __str__(self) -> str:
            return "mib_dirs"

        def get_data(self, mibname: str, **_options: Any) -> tuple[Any, str]:
            path = index.get(mibname)
            if path is None:
                raise smi_error.PySmiReaderFileNotFoundError(mibname=mibname, reader=self)
            data = path.read_bytes()
            info = MibInfo(path=f"file://{path}", file=path.name, name=mibname, mtime=int(path.stat().st_mtime))
            return info, data.decode("utf-8", errors="replace")

    class StandInReader(AbstractReader):  # type: ignore[misc]
        """The SMI base modules' names (see the module docstring)."""

        def __str__(self) -> str:
            return "edgegw SMI stand-ins"

        def get_data(self, mibname: str, **_options: Any) -> tuple[Any, str]:
            text = STAND_INS.get(mibname)
            if text is None:
                raise smi_error.PySmiReaderFileNotFoundError(mibname=mibname, reader=self)
            return MibInfo(path="stand-in", file=mibname, name=mibname, mtime=0), text

    return [IndexedReader(), StandInReader()]


class MibLibrary:
    """One pysnmp MIB builder and view: the built-in MIBs plus modules compiled from `mib_dirs`.

    Thread-safe: compiling and loading run in a worker thread (they take hundreds of ms), lookups
    from the event loop never wait for them (they fall back to the well-known names).
    """

    def __init__(self, cache_dir: Path | None = None) -> None:
        from pysnmp.smi import builder, view

        self._lock = threading.Lock()
        self._own_cache = cache_dir is None
        self.cache_dir = Path(tempfile.mkdtemp(prefix="edgegw-mibs-")) if cache_dir is None else cache_dir
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        self._builder = builder.MibBuilder()
        self._builder.add_mib_sources(builder.DirMibSource(str(self.cache_dir)))
        self._builder.load_modules("SNMPv2-MIB", "SNMP-COMMUNITY-MIB")
        self._view = view.MibViewController(self._builder)
        self._loaded: set[str] = set()
        self._dirs: list[Path] = []

    def close(self) -> None:
        if self._own_cache:
            shutil.rmtree(self.cache_dir, ignore_errors=True)

    def ensure(self, modules: Iterable[str], dirs: Sequence[Path]) -> dict[str, str]:
        """Load the modules, compiling them from `dirs` when needed; returns module -> error."""
        from pysnmp.smi import builder
        from pysnmp.smi.error import MibNotFoundError, SmiError

        errors: dict[str, str] = {}
        with self._lock:
            for d in dirs:
                if d not in self._dirs:
                    self._dirs.append(d)
                    if any(p.suffix == ".py" for p in d.glob("*.py")):
                        self._builder.add_mib_sources(builder.DirMibSource(str(d)))
            wanted = [m for m in dict.fromkeys(modules) if m not in self._loaded]
            if not wanted:
                return errors
            for module in wanted:
                try:
                    self._load(module)
                    self._loaded.add(module)
                    continue
                except MibNotFoundError:
                    pass
                except SmiError as exc:
                    errors[module] = f"cannot load MIB module {module}: {exc}"
                    continue
                problem = self._compile(module)
                if problem is not None:
                    errors[module] = problem
                    continue
                try:
                    self._load(module)
                    self._loaded.add(module)
                except SmiError as exc:
                    errors[module] = f"cannot load MIB module {module}: {exc}"
            # A new module changes the OID tree the view indexes.
            from pysnmp.smi import view

            self._view = view.MibViewController(self._builder)
        return errors

    def _load(self, module: str) -> None:
        # Code generated by pysmi still calls pysnmp's deprecated camelCase names.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            self._builder.load_modules(module)

    def _compile(self, module: str) -> str | None:
        import pysnmp.smi.mibs as builtin
        from pysmi.codegen.pysnmp import PySnmpCodeGen, baseMibs
        from pysmi.compiler import MibCompiler
        from pysmi.error import PySmiError
        from pysmi.parser.dialect import smi_v1_relaxed
        from pysmi.parser.smi import parserFactory
        from pysmi.searcher.pyfile import PyFileSearcher
        from pysmi.searcher.pypackage import PyPackageSearcher
        from pysmi.searcher.stub import StubSearcher
        from pysmi.writer.pyfile import PyFileWriter

        index = index_mib_files(self._dirs)
        compiler = MibCompiler(parserFactory(**smi_v1_relaxed)(), PySnmpCodeGen(), PyFileWriter(str(self.cache_dir)))
        compiler.add_sources(*_readers(index))
        compiler.add_searchers(
            PyFileSearcher(str(self.cache_dir)),
            PyPackageSearcher(builtin.__name__),
            StubSearcher(*baseMibs),
        )
        try:
            results = compiler.compile(module, ignoreErrors=True)
        except PySmiError as exc:
            return f"cannot compile MIB module {module}: {exc}"
        status = results.get(module)
        if status is None or str(status) == "missing":
            where = ", ".join(str(d) for d in self._dirs) or "no mib_dirs configured"
            return f"MIB module {module} not found ({where})"
        if str(status) == "failed":
            return f"cannot compile MIB module {module}: {getattr(status, 'error', 'failed')}"
        return None

    def resolve(self, text: str) -> Oid:
        """`MODULE::symbol.1.2` -> the numeric OID; raises LookupError with a readable message."""
        from pysnmp.smi.error import SmiError

        module, symbol, index = split_symbol(text)
        with self._lock:
            try:
                (node,) = self._builder.import_symbols(module, symbol)
            except SmiError:
                raise LookupError(f"no symbol {symbol!r} in MIB module {module}") from None
        name = getattr(node, "name", None)
        if not isinstance(name, tuple):
            raise LookupError(f"{module}::{symbol} is not an object (it has no OID)")
        return tuple(int(a) for a in name) + index

    def name(self, oid: Oid) -> str | None:
        """`MODULE::symbol.index` for an OID the loaded MIBs know at object level, else None."""
        if not self._lock.acquire(blocking=False):
            return well_known_name(oid)
        try:
            return self._name(oid) or well_known_name(oid)
        finally:
            self._lock.release()

    def _name(self, oid: Oid) -> str | None:
        from pysnmp.smi.error import SmiError

        try:
            prefix, _labels, suffix = self._view.get_node_name(oid)
            module, symbol, _ = self._view.get_node_location(prefix)
            (node,) = self._builder.import_symbols(module, symbol)
        except (SmiError, ValueError):
            return None
        kind = type(node).__name__
        # An ancestor such as `enterprises` is no name for an object deep below it.
        if kind in ("MibScalar", "MibTableColumn") or (not suffix and kind != "MibIdentifier"):
            tail = format_oid(tuple(suffix))
            return f"{module}::{symbol}" + (f".{tail}" if tail else "")
        if not suffix:
            return f"{module}::{symbol}"
        return None


def symbol_modules(oids: Iterable[str]) -> list[str]:
    return list(dict.fromkeys(split_symbol(o)[0] for o in oids if "::" in o))
