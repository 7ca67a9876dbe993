"""The config file's JSON Schema, for editors (`edgegw schema`): generated from the models.

Draft-07, because that is what yaml-language-server (VS Code's YAML extension, Neovim's lspconfig)
implements; it reads newer drafts' keywords partly or not at all. Everything comes from the models
of gateway/config.py and each registered driver, with three additions the file model does not
carry itself:

- a device's `points` and `actions` are `list[dict]` / `dict[str, dict]` in the file model and are
  validated per driver after the profile is merged (`_validated_points`): the schema puts the
  driver's point model there (the base `PointConfig` for a `calc` point), the profile format's
  repeat blocks, `{expression}` text in any point key, and, on a device with a `profile`, points
  that only override some keys of a profile point;
- descriptions: a key without a `description=` in its model takes the "meaning" column of the
  table that documents it (docs/configuration.md and each driver's doc), so the prose lives in
  the docs only and the schema follows them when regenerated;
- a `*_file`/`*_env` pair of a secret may not both be given.

What JSON Schema cannot say (ids that must exist or be unique, expressions, files, cross-key
rules in model validators) `edgegw check` still says; docs/configuration.md, "Editor support".
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from pydantic import BaseModel
from pydantic.json_schema import GenerateJsonSchema, JsonSchemaMode, models_json_schema

from gateway.config import _gateway_model
from gateway.models import PointConfig
from gateway.profiles import IDENTITY_OBJECTS, IDENTITY_REQUIRED, MAX_IDENTITY_TEXT
from gateway.registry import DRIVERS

DRAFT = "http://json-schema.org/draft-07/schema#"
#: Where the shipped schema lives in a checkout; sample configs name it in their modeline.
SHIPPED = Path(__file__).resolve().parent.parent / "config" / "edgegw.schema.json"
SHIPPED_PROFILE = SHIPPED.with_name("edgegw-profile.schema.json")
DOCS_ROOT = Path(__file__).resolve().parent.parent
_REF = "#/definitions/{model}"

#: A point key written as a profile expression: a string with `{...}` parts (docs/profiles.md).
EXPRESSION: dict[str, Any] = {
    "type": "string",
    "pattern": r"\{[^{}]+\}",
    "description": "a profile expression, evaluated with the profile's and the device's variables",
}
#: A `repeat:` variable's range: a count, `[first, last]`, `[first, last, step]`, an expression, `{values: [...]}`.
RANGE: dict[str, Any] = {
    "anyOf": [
        {"type": "integer", "minimum": 0},
        {"type": "string"},
        {"type": "array", "minItems": 2, "maxItems": 3, "items": {"type": ["integer", "string"]}},
        {
            "type": "object",
            "required": ["values"],
            "additionalProperties": False,
            "properties": {"values": {"type": "array"}},
        },
    ]
}

# Which documentation table describes which model: (file, heading, role). A role is a model's class
# name, `root`, `profile`, or `device`, `point`, `section` of one kind (`*`: every kind).
DOC_TABLES: tuple[tuple[str, str, str], ...] = (
    ("docs/configuration.md", "Top level", "root"),
    ("docs/configuration.md", "mqtt", "MqttConfig"),
    ("docs/configuration.md", "ha", "HaConfig"),
    ("docs/configuration.md", "buffer", "BufferConfig"),
    ("docs/configuration.md", "buses", "BusConfig"),
    ("docs/configuration.md", "Alternate paths", "FailoverSettings"),
    ("docs/configuration.md", "devices (every driver)", "device:*"),
    ("docs/configuration.md", "points (every driver)", "point:*"),
    ("drivers/modbus/README.md", "Device keys", "device:modbus"),
    ("drivers/modbus/README.md", "Point keys", "point:modbus"),
    ("drivers/modbus/README.md", "Actions", "ModbusWrite"),
    ("docs/dlms.md", "Addressing", "device:dlms"),
    ("docs/dlms.md", "Other device keys", "device:dlms"),
    ("docs/dlms.md", "Points", "point:dlms"),
    ("docs/bacnet.md", "One BACnet/IP port", "section:bacnet"),
    ("docs/bacnet.md", "Devices", "device:bacnet"),
    ("docs/bacnet.md", "Points", "point:bacnet"),
    ("docs/bacnet.md", "Actions", "BacnetWriteStep"),
    ("docs/snmp.md", "Device configuration", "device:snmp"),
    ("docs/snmp.md", "Points", "point:snmp"),
    ("docs/profiles.md", "The format", "profile"),
)


class _Generator(GenerateJsonSchema):
    """Pydantic's generator, minus the titles it makes from field names ("Max Backoff")."""

    def field_title_should_be_set(self, schema: Any) -> bool:
        return False


def doc_tables(root: Path = DOCS_ROOT) -> dict[tuple[str, str], dict[str, str]]:
    """(file, heading) -> {key: meaning} for every key/meaning table of the documentation."""
    out: dict[tuple[str, str], dict[str, str]] = {}
    for file in dict.fromkeys(f for f, _, _ in DOC_TABLES):
        path = root / file
        if not path.is_file():
            continue  # an installed copy without the docs: the models' own descriptions only
        for heading, rows in _tables(path.read_text(encoding="utf-8")):
            table = out.setdefault((file, heading), {})
            for keys, meaning in rows:
                for key in keys:
                    table.setdefault(key, meaning)
    return out


def _tables(text: str) -> Iterator[tuple[str, list[tuple[list[str], str]]]]:
    """(heading, [(keys, meaning)]) for each table whose header names a meaning column."""
    heading = ""
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        line = lines[i]
        if line.startswith("#"):
            heading = line.lstrip("#").strip()
        if line.startswith("|") and i + 1 < len(lines) and re.match(r"^\|[\s:|-]+\|$", lines[i + 1]):
            header = [c.strip().lower() for c in _cells(line)]
            meaning = header.index("meaning") if "meaning" in header else -1
            rows: list[tuple[list[str], str]] = []
            i += 2
            while i < len(lines) and lines[i].startswith("|"):
                cells = _cells(lines[i])
                if meaning >= 0 and len(cells) > meaning and cells[meaning].strip():
                    rows.append((_keys(cells[0]), _plain(cells[meaning])))
                i += 1
            if meaning >= 0:
                yield heading, rows
            continue
        i += 1


def _cells(row: str) -> list[str]:
    # A `|` inside backticks belongs to the cell (`a|b`); split on the others.
    cells, cell, code = [], "", False
    for ch in row.strip().strip("|"):
        if ch == "`":
            code = not code
        if ch == "|" and not code:
            cells.append(cell)
            cell = ""
        else:
            cell += ch
    return [*cells, cell]


def _keys(cell: str) -> list[str]:
    """The keys a table row documents: `a`, `a` / `b`, `a`, `b`."""
    quoted = re.findall(r"`([A-Za-z_][A-Za-z0-9_]*)`", cell)
    if quoted:
        return quoted
    word = cell.strip()
    return [word] if re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", word) else []


def _plain(text: str) -> str:
    return re.sub(r"\s+", " ", text.replace("\\|", "|")).strip()


def config_schema(docs: Path | None = DOCS_ROOT) -> dict[str, Any]:
    """The JSON Schema (draft-07) of a gateway config file over every registered driver."""
    file_model = _gateway_model()
    kinds = list(DRIVERS.values())
    extra: list[type[BaseModel]] = [PointConfig]
    for spec in kinds:
        extra += [spec.device_model.point_model, spec.device_model.action_model]
    mode: JsonSchemaMode = "validation"
    refs, top = models_json_schema(
        [(m, mode) for m in dict.fromkeys([file_model, *extra])], ref_template=_REF, schema_generator=_Generator
    )
    defs: dict[str, Any] = top["$defs"]

    def name(model: type[BaseModel]) -> str:
        ref = refs.get((model, mode))
        return str(ref["$ref"]).rsplit("/", 1)[1] if ref is not None else model.__name__

    tables = doc_tables(docs) if docs is not None else {}
    root = defs.pop(name(file_model))
    _describe(root, _role_table(tables, "root"))
    for role in dict.fromkeys(r for _, _, r in DOC_TABLES):
        if role in defs:  # a role that names a model (its class name) rather than a kind's part
            _describe(defs[role], _role_table(tables, role))

    defs["Expression"] = EXPRESSION
    defs["RepeatRanges"] = {
        "type": "object",
        "description": "repeat variables: each takes every value of its range, nested in order",
        "additionalProperties": RANGE,
    }
    # A point model's required keys go to the list entries, so that an override (a device with a
    # profile) reuses the same definition with `id` alone required.
    calc = name(PointConfig)
    _with_expressions(defs[calc])
    _describe(defs[calc], _role_table(tables, "point:*"))
    calc_required = defs[calc].pop("required", [])
    for spec in kinds:
        device_model = spec.device_model
        point = name(device_model.point_model)
        _with_expressions(defs[point])
        _describe(defs[point], {**_role_table(tables, "point:*"), **_role_table(tables, f"point:{spec.kind}")})
        required = defs[point].pop("required", [])
        override = f"{point}Override"
        defs[f"{point}Item"] = _point_item(f"{point}Item", (point, required), (calc, calc_required))
        defs[f"{override}Item"] = _point_item(f"{override}Item", (point, ["id"]), (calc, ["id"]))
        device = defs[name(device_model)]
        _describe(device, {**_role_table(tables, "device:*"), **_role_table(tables, f"device:{spec.kind}")})
        props = device["properties"]
        props["points"] = {"type": "array", "description": props["points"].get("description", "")}
        # Points are validated after the profile is merged: with a profile, an inline point may
        # name a profile point and change some of its keys only.
        device["if"] = {"required": ["profile"], "properties": {"profile": {"type": "string"}}}
        device["then"] = {"properties": {"points": {"items": {"$ref": _REF.format(model=f"{override}Item")}}}}
        device["else"] = {"properties": {"points": {"items": {"$ref": _REF.format(model=f"{point}Item")}}}}
        action = {"$ref": _REF.format(model=name(device_model.action_model))}
        for sub in props["actions"].get("patternProperties", {}).values():
            sub.clear()
            sub.update(action)
        section = spec.section_model
        if section is not None and name(section) in defs:
            _describe(defs[name(section)], _role_table(tables, f"section:{spec.kind}"))
    # The device union is discriminated by `driver`: dispatch on it, so that an editor reports the
    # errors of that driver's model, not "matches none of four".
    devices = root["properties"]["devices"]
    devices["items"] = {
        "type": "object",
        "required": ["id", "driver"],
        "properties": {"driver": {"enum": [spec.kind for spec in kinds], "description": "the device's protocol"}},
        "allOf": [
            {
                "if": {"required": ["driver"], "properties": {"driver": {"const": spec.kind}}},
                "then": {"$ref": _REF.format(model=name(spec.device_model))},
            }
            for spec in kinds
        ],
    }
    for schema in defs.values():
        _secrets(schema)
    _secrets(root)
    out: dict[str, Any] = {
        "$schema": DRAFT,
        "title": "edgegw configuration",
        "description": "The gateway's YAML configuration (docs/configuration.md); generated by `edgegw schema`.",
        **{k: v for k, v in root.items() if k not in ("title", "description")},
        "definitions": dict(sorted(defs.items())),
    }
    return _draft7(out)  # type: ignore[no-any-return]


#: Device keys a profile's `device:` block cannot set: they name the device, or have their own block.
_NOT_PROFILE_DEFAULTS = ("id", "driver", "profile", "profile_vars", "points", "actions")


def profile_schema(docs: Path | None = DOCS_ROOT) -> dict[str, Any]:
    """The JSON Schema (draft-07) of a device profile file (docs/profiles.md), per its `driver`."""
    config = config_schema(docs)
    defs: dict[str, Any] = config["definitions"]
    text = {"type": "string", "minLength": 1, "maxLength": MAX_IDENTITY_TEXT, "pattern": r"^[ -~]*[!-~][ -~]*$"}
    identity = {
        "type": "object",
        "additionalProperties": False,
        "required": list(IDENTITY_REQUIRED),
        "properties": {
            **{key: text for key in IDENTITY_OBJECTS},
            "match": {"anyOf": [text, {"type": "array", "items": text}]},
            "assumed": {"type": "boolean"},
        },
    }
    kinds = list(DRIVERS.values())
    root: dict[str, Any] = {
        "type": "object",
        "additionalProperties": False,
        "required": ["driver", "points"],
        "properties": {
            "profile": {"type": "string"},
            "driver": {"enum": [spec.kind for spec in kinds]},
            "description": {"type": "string"},
            "status": {"type": "string", "examples": ["verified", "draft", "assumed"]},
            "source": {"type": "string"},
            "notes": {},
            "identity": identity,
            "vars": {"type": "object"},
            "device": {"type": "object"},
            "points": {"type": "array"},
            "actions": {"type": "object"},
        },
        "allOf": [],
    }
    _describe(root, _role_table(doc_tables(docs) if docs is not None else {}, "profile"))
    for spec in kinds:
        device_name = spec.device_model.__name__
        device = defs[device_name]
        defaults = f"{device_name}Defaults"
        defs[defaults] = {
            "type": "object",
            "additionalProperties": False,
            "description": "defaults for the device's own settings; a key the device sets wins",
            "properties": {k: v for k, v in device["properties"].items() if k not in _NOT_PROFILE_DEFAULTS},
        }
        point_item = device["else"]["properties"]["points"]["items"]
        action = device["properties"]["actions"]["patternProperties"]
        root["allOf"].append(
            {
                "if": {"required": ["driver"], "properties": {"driver": {"const": spec.kind}}},
                "then": {
                    "properties": {
                        "device": {"$ref": _REF.format(model=defaults)},
                        "points": {"items": point_item},
                        "actions": {"patternProperties": action, "additionalProperties": False},
                    }
                },
            }
        )
    return {
        "$schema": DRAFT,
        "title": "edgegw device profile",
        "description": "A device profile (docs/profiles.md); generated by `edgegw schema --profile`.",
        **root,
        "definitions": dict(sorted(defs.items())),
    }


def _role_table(tables: dict[tuple[str, str], dict[str, str]], role: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for file, heading, r in DOC_TABLES:
        if r != role:
            continue
        for (f, h), rows in tables.items():
            if f == file and h.startswith(heading):
                for key, meaning in rows.items():
                    out.setdefault(key, meaning)
    return out


def _describe(schema: dict[str, Any], meanings: dict[str, str]) -> None:
    """Fill each property's missing description from the docs' table."""
    for key, prop in schema.get("properties", {}).items():
        if not prop.get("description") and meanings.get(key):
            prop["description"] = meanings[key]


_EXPR = {"$ref": _REF.format(model="Expression")}


def _with_expressions(schema: dict[str, Any]) -> None:
    """Every value in a point, nested ones too, may be a profile expression, expanded before validation."""
    for key, prop in schema.get("properties", {}).items():
        notes = {k: prop.pop(k) for k in ("description", "default", "examples", "deprecated") if k in prop}
        schema["properties"][key] = {**_or_expression(prop), **notes}


def _or_expression(node: dict[str, Any]) -> dict[str, Any]:
    out = dict(node)
    for key in ("items", "prefixItems", "additionalProperties"):
        if isinstance(out.get(key), dict):
            out[key] = _or_expression(out[key])
        elif isinstance(out.get(key), list):
            out[key] = [_or_expression(n) for n in out[key]]
    if isinstance(out.get("properties"), dict):
        out["properties"] = {k: _or_expression(v) for k, v in out["properties"].items()}
    if "anyOf" in out:
        out["anyOf"] = [_or_expression(n) for n in out["anyOf"] if n != _EXPR] + [_EXPR]
        return out
    return {"anyOf": [out, _EXPR]}


def _point_item(item: str, point: tuple[str, list[str]], calc: tuple[str, list[str]]) -> dict[str, Any]:
    """One entry of a `points` list: a repeat block, a calculated point or the driver's point.

    `point` and `calc` name a definition and the keys an entry must have.
    """

    def model(name: str, required: list[str]) -> dict[str, Any]:
        return {"allOf": [{"$ref": _REF.format(model=name)}, {"required": required}]}

    return {
        "if": {"type": "object", "required": ["repeat"]},
        "then": {
            "type": "object",
            "required": ["repeat", "points"],
            "additionalProperties": False,
            "properties": {
                "repeat": {"$ref": _REF.format(model="RepeatRanges")},
                "points": {"type": "array", "items": {"$ref": _REF.format(model=item)}},
            },
        },
        "else": {
            # `calc: null` is the driver's point, as in gateway/config.py `_validated_points`.
            "if": {"required": ["calc"], "properties": {"calc": {"type": "string"}}},
            "then": model(*calc),
            "else": model(*point),
        },
    }


def _secrets(schema: dict[str, Any]) -> None:
    """A secret is a `*_file` or a `*_env`, not both (gateway/models.py `read_secret`)."""
    props = schema.get("properties", {})
    pairs = [(k, f"{k[:-5]}_env") for k in props if k.endswith("_file") and f"{k[:-5]}_env" in props]
    if pairs:
        schema["allOf"] = [*schema.get("allOf", []), *({"not": {"required": list(p)}} for p in pairs)]


def _draft7(node: Any) -> Any:
    """Pydantic writes 2020-12: tuples as `prefixItems`, `const` with `type`; say them in draft-07."""
    if isinstance(node, list):
        return [_draft7(n) for n in node]
    if not isinstance(node, dict):
        return node
    out = {k: _draft7(v) for k, v in node.items()}
    out.pop("discriminator", None)  # OpenAPI's keyword; draft-07 validators ignore it
    if "prefixItems" in out:
        out["items"] = out.pop("prefixItems")
        out.setdefault("additionalItems", False)
    if "$ref" in out and len(out) > 1:
        # Draft-07 ignores a `$ref`'s siblings: keep the notes beside an allOf.
        ref = out.pop("$ref")
        out = {**out, "allOf": [{"$ref": ref}, *out.get("allOf", [])]}
    return out


def dumps(schema: dict[str, Any]) -> str:
    """The schema as the shipped file has it (stable key order, a final newline)."""
    return json.dumps(schema, indent=2, ensure_ascii=False) + "\n"
