"""Device profiles: YAML files listing a device's points, with repetition for per-channel blocks.

A profile::

    profile: schneider-bcpme        # its name
    driver: modbus                  # the driver it is written for
    description: ...
    status: verified | draft | assumed
    source: where the map comes from
    identity:                       # what the device answers to identification (Modbus FC 43), optional
      vendor_name: ...              # matched (with product_code) to suggest and pick the profile
      product_code: ...
    vars: {panels: 2, channels: 42} # defaults; a device's `profile_vars` override them
    device: {word_order: big}       # defaults for the device's own driver options
    points:
      - {id: mains.frequency, address: 600, type: float32, quantity: frequency, unit: Hz}
      - repeat: {p: [1, panels], n: [1, channels]}   # nested inclusive ranges; or a count, or {values: [...]}
        points:
          - id: "panel{p}.ch{n}.current"
            address: "{2252 + 2*(n-1)}"
            ...

Any string may hold `{expression}` parts: arithmetic on the variables (the repeat variables, the
profile vars and the device's own scalar settings such as `unit`), list literals and indexing,
and `a if cond else b`. A string that is exactly one `{expression}` keeps the expression's type.
"""

from __future__ import annotations

import ast
import fnmatch
import functools
import operator
import re
import warnings
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gateway.yamlload import LineDict, LineList, load_file

_PLACEHOLDER = re.compile(r"\{([^{}]+)\}")


class ProfileError(Exception):
    """A profile that cannot be used; carries the file and line."""

    def __init__(self, file: str, line: int, message: str) -> None:
        super().__init__(f"{file}:{line}: {message}")
        self.file = file
        self.line = line
        self.message = message


# The `identity:` keys: the standard device identification objects (Modbus FC 43 objects 0-6,
# in that order), then how the profile is matched.
IDENTITY_OBJECTS = (
    "vendor_name",
    "product_code",
    "revision",
    "vendor_url",
    "product_name",
    "model_name",
    "user_application_name",
)
IDENTITY_REQUIRED = ("vendor_name", "product_code")
MAX_IDENTITY_TEXT = 244  # what one object can hold in a Modbus reply


@dataclass(frozen=True, slots=True)
class Identity:
    """What a device of a profile says it is (docs/profiles.md, `identity`).

    A device matches when its vendor name equals `vendor_name` and its product code equals
    `product_code` or one of the `match` patterns (case and repeated blanks ignored; `*` and `?`
    are wildcards in a pattern). The revision is never matched: firmware changes, the map not.
    """

    vendor_name: str
    product_code: str
    revision: str | None = None
    vendor_url: str | None = None
    product_name: str | None = None
    model_name: str | None = None
    user_application_name: str | None = None
    match: tuple[str, ...] = ()
    assumed: bool = False  # no public document says the device answers this

    def objects(self) -> dict[str, str]:
        """The identification objects declared, by name (what a twin answers)."""
        out: dict[str, str] = {}
        for name in IDENTITY_OBJECTS:
            value = getattr(self, name)
            if value is not None:
                out[name] = value
        return out

    def matches(self, vendor_name: str | None, product_code: str | None) -> bool:
        if not vendor_name or not product_code or _norm(vendor_name) != _norm(self.vendor_name):
            return False
        code = _norm(product_code)
        return any(fnmatch.fnmatchcase(code, _norm(p)) for p in (self.product_code, *self.match))


def _norm(text: str) -> str:
    return " ".join(text.split()).casefold()


def matching_profiles(driver: str, vendor_name: str | None, product_code: str | None) -> list[Profile]:
    """The shipped profiles of `driver` whose identity matches (usually one; none when unknown)."""
    out = []
    for path in shipped_profiles(driver).values():
        profile = load_profile(path)
        if profile.identity is not None and profile.identity.matches(vendor_name, product_code):
            out.append(profile)
    return out


@dataclass(slots=True)
class Profile:
    name: str
    driver: str
    file: str
    description: str = ""
    status: str = "verified"
    source: str = ""
    vars: dict[str, Any] = field(default_factory=dict)
    device: dict[str, Any] = field(default_factory=dict)
    points: LineList = field(default_factory=LineList)
    actions: dict[str, Any] = field(default_factory=dict)  # name -> the driver's action definition
    identity: Identity | None = None

    def meta(self) -> dict[str, Any]:
        return {"name": self.name, "status": self.status, "source": self.source}


def shipped_profiles(driver: str | None = None) -> dict[str, Path]:
    """Profile name -> file, for the profiles shipped with the drivers."""
    from gateway.registry import DRIVERS  # the registry's config modules may import this module

    out: dict[str, Path] = {}
    kinds = [driver] if driver else sorted(DRIVERS)
    for kind in kinds:
        if kind not in DRIVERS:
            continue
        folder = DRIVERS[kind].profile_dir
        if folder.is_dir():
            for f in sorted(folder.glob("*.yaml")):
                out[f.stem] = f
    return out


def resolve_profile_path(ref: str, driver: str, base: Path | None = None) -> Path:
    """A shipped name (`schneider-bcpme`) or a path, relative to the config file's folder."""
    if "/" in ref or ref.endswith((".yaml", ".yml")):
        path = Path(ref)
        if not path.is_absolute() and base is not None:
            path = base / path
        return path
    shipped = shipped_profiles(driver)
    if ref not in shipped:
        known = ", ".join(sorted(shipped)) or "none"
        raise ValueError(f"no shipped {driver} profile named {ref!r} (shipped: {known})")
    return shipped[ref]


def load_profile(path: Path) -> Profile:
    """A profile file, parsed once per version: a hundred devices on one profile read it once."""
    try:
        st = path.stat()
    except OSError:
        return _load_profile(path, 0, 0)
    return _load_profile(path, st.st_mtime_ns, st.st_size)


def forget_loaded() -> None:
    """Drop the parsed profiles and expression trees: a load needs them, a running daemon does not.

    They hold the profiles' YAML with its line numbers; the validated points are what lives on.
    """
    _load_profile.cache_clear()
    _parsed.cache_clear()


@functools.lru_cache(maxsize=64)
def _load_profile(path: Path, _mtime_ns: int, _size: int) -> Profile:
    data = load_file(path)
    if not isinstance(data, LineDict):
        raise ProfileError(str(path), 1, "a profile is a mapping with at least `driver` and `points`")
    allowed = {
        "profile",
        "driver",
        "description",
        "status",
        "source",
        "identity",
        "vars",
        "device",
        "points",
        "actions",
        "notes",
    }
    for key in data:
        if key not in allowed:
            raise ProfileError(str(path), data.lines.get(key, data.line), f"unknown profile key {key!r}")
    points = data.get("points", LineList())
    if not isinstance(points, LineList):
        raise ProfileError(str(path), data.lines.get("points", data.line), "`points` must be a list")
    for key in ("vars", "device", "actions"):
        if not isinstance(data.get(key, {}), dict):
            raise ProfileError(str(path), data.lines.get(key, data.line), f"`{key}` must be a mapping")
    return Profile(
        name=str(data.get("profile", path.stem)),
        driver=str(data.get("driver", "")),
        file=str(path),
        description=str(data.get("description", "")),
        status=str(data.get("status", "verified")),
        source=str(data.get("source", "")),
        vars=dict(data.get("vars", {})),
        device=dict(data.get("device", {})),
        points=points,
        actions=dict(data.get("actions", {})),
        identity=_identity(data, str(path)),
    )


def _identity(data: LineDict, file: str) -> Identity | None:
    """The profile's `identity:` block, checked; ProfileError with the line of the bad key."""
    if "identity" not in data:
        return None
    raw = data["identity"]
    line = data.lines.get("identity", data.line)
    if not isinstance(raw, dict):
        raise ProfileError(file, line, "`identity` must be a mapping (vendor_name, product_code, ...)")
    lines = raw.lines if isinstance(raw, LineDict) else {}
    known = (*IDENTITY_OBJECTS, "match", "assumed")
    values: dict[str, Any] = {}
    for key, value in raw.items():
        at = lines.get(key, line)
        if key not in known:
            raise ProfileError(file, at, f"identity: unknown key {key!r} (known: {', '.join(known)})")
        if key == "assumed":
            if not isinstance(value, bool):
                raise ProfileError(file, at, "identity.assumed must be true or false")
            values[key] = value
        elif key == "match":
            items = value if isinstance(value, list) else [value]
            values[key] = tuple(_identity_text(v, "identity.match", file, at) for v in items)
        else:
            values[key] = _identity_text(value, f"identity.{key}", file, at)
    for key in IDENTITY_REQUIRED:
        if key not in values:
            raise ProfileError(file, line, f"identity needs `{key}` (what the device is matched by)")
    return Identity(**values)


def _identity_text(value: Any, where: str, file: str, line: int) -> str:
    if not isinstance(value, str):
        # YAML reads `revision: 1.10` as the number 1.1: what the device sends is text.
        raise ProfileError(file, line, f'{where} must be text (quote it: {str(value)!r} -> "{value}")')
    if not value.strip():
        raise ProfileError(file, line, f"{where} is empty")
    if not value.isascii() or not value.isprintable():
        raise ProfileError(file, line, f"{where} must be printable ASCII (device identification objects are)")
    if len(value) > MAX_IDENTITY_TEXT:
        raise ProfileError(file, line, f"{where} is {len(value)} characters, at most {MAX_IDENTITY_TEXT}")
    return value


# --- safe expressions -----------------------------------------------------------------------

_BINOPS: dict[type[ast.operator], Any] = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
    ast.FloorDiv: operator.floordiv,
    ast.Mod: operator.mod,
    ast.Pow: operator.pow,
    ast.BitAnd: operator.and_,
    ast.BitOr: operator.or_,
    ast.LShift: operator.lshift,
    ast.RShift: operator.rshift,
}
_CMPOPS: dict[type[ast.cmpop], Any] = {
    ast.Eq: operator.eq,
    ast.NotEq: operator.ne,
    ast.Lt: operator.lt,
    ast.LtE: operator.le,
    ast.Gt: operator.gt,
    ast.GtE: operator.ge,
}


def evaluate(expr: str, env: Mapping[str, Any]) -> Any:
    """Evaluate a small arithmetic expression over `env`; no calls, no attributes."""
    return _eval(_parsed(expr), env, expr)


@functools.lru_cache(maxsize=4096)
def _parsed(expr: str) -> ast.expr:
    """An expression's tree: a profile repeats the same few expressions for every point and device."""
    try:
        with warnings.catch_warnings():
            # "1if x else 2" parses with a SyntaxWarning on stderr; the expression is what counts.
            warnings.simplefilter("ignore", SyntaxWarning)
            return ast.parse(expr.strip(), mode="eval").body
    except SyntaxError as exc:
        raise ValueError(f"bad expression {expr!r}: {exc.msg}") from None


def referenced_names(items: Any) -> frozenset[str] | None:
    """Every variable name the expressions in a profile's points may read; None when one does not parse.

    A profile's expansion depends on these names only, so devices that agree on them share one
    expansion (gateway/config.py). Conservative: a name in any placeholder or repeat range counts.
    """
    names: set[str] = set()

    def walk(value: Any, in_repeat: bool) -> bool:
        if isinstance(value, str):
            exprs = _PLACEHOLDER.findall(value) if "{" in value else []
            if in_repeat and not exprs:
                exprs = [value.strip("{}")]
            for expr in exprs:
                try:
                    tree = _parsed(expr)
                except ValueError:
                    return False
                names.update(n.id for n in ast.walk(tree) if isinstance(n, ast.Name))
            return True
        if isinstance(value, dict):
            # Under `repeat:` a range is an expression even without braces; `values:` are values.
            return all(walk(v, (in_repeat or k == "repeat") and k != "values") for k, v in value.items())
        if isinstance(value, list):
            return all(walk(v, in_repeat) for v in value)
        return True

    return frozenset(names) if walk(items, False) else None


def _eval(node: ast.AST, env: Mapping[str, Any], src: str) -> Any:
    handler = _NODES.get(type(node))
    if handler is None:
        raise ValueError(f"unsupported expression {src!r}")
    return handler(node, env, src)


def _constant(node: Any, _env: Mapping[str, Any], src: str) -> Any:
    if not isinstance(node.value, int | float | str | bool):
        raise ValueError(f"unsupported expression {src!r}")
    return node.value


def _name(node: Any, env: Mapping[str, Any], src: str) -> Any:
    if node.id not in env:
        raise ValueError(f"unknown variable {node.id!r} in {src!r}")
    return env[node.id]


def _binop(node: Any, env: Mapping[str, Any], src: str) -> Any:
    if type(node.op) not in _BINOPS:
        raise ValueError(f"unsupported expression {src!r}")
    left, right = _eval(node.left, env, src), _eval(node.right, env, src)
    if isinstance(node.op, ast.Pow) and isinstance(right, int | float) and abs(right) > 64:
        raise ValueError(f"exponent too large in {src!r}")
    try:
        return _BINOPS[type(node.op)](left, right)
    except (ArithmeticError, TypeError) as exc:
        raise ValueError(f"cannot evaluate {src!r}: {exc}") from None


def _unary(node: Any, env: Mapping[str, Any], src: str) -> Any:
    if not isinstance(node.op, ast.USub | ast.UAdd | ast.Not):
        raise ValueError(f"unsupported expression {src!r}")
    operand = _eval(node.operand, env, src)
    if isinstance(node.op, ast.Not):
        return not operand
    try:
        return -operand if isinstance(node.op, ast.USub) else +operand
    except TypeError as exc:  # -'text', -[1]
        raise ValueError(f"cannot evaluate {src!r}: {exc}") from None


def _compare(node: Any, env: Mapping[str, Any], src: str) -> Any:
    if not all(type(op) in _CMPOPS for op in node.ops):
        raise ValueError(f"unsupported expression {src!r}")
    left = _eval(node.left, env, src)
    for op, comp in zip(node.ops, node.comparators, strict=True):
        right = _eval(comp, env, src)
        try:
            if not _CMPOPS[type(op)](left, right):
                return False
        except TypeError as exc:  # 1 < 'a'
            raise ValueError(f"cannot evaluate {src!r}: {exc}") from None
        left = right
    return True


def _boolop(node: Any, env: Mapping[str, Any], src: str) -> Any:
    values = [_eval(v, env, src) for v in node.values]
    return all(values) if isinstance(node.op, ast.And) else any(values)


def _subscript(node: Any, env: Mapping[str, Any], src: str) -> Any:
    seq = _eval(node.value, env, src)
    idx = _eval(node.slice, env, src)
    try:
        return seq[idx]
    except (IndexError, TypeError, KeyError) as exc:
        raise ValueError(f"cannot evaluate {src!r}: {exc}") from None


_NODES: dict[type[ast.AST], Callable[[Any, Mapping[str, Any], str], Any]] = {
    ast.Constant: _constant,
    ast.Name: _name,
    ast.BinOp: _binop,
    ast.UnaryOp: _unary,
    ast.Compare: _compare,
    ast.BoolOp: _boolop,
    ast.IfExp: lambda n, env, src: _eval(n.body if _eval(n.test, env, src) else n.orelse, env, src),
    ast.List: lambda n, env, src: [_eval(e, env, src) for e in n.elts],
    ast.Tuple: lambda n, env, src: [_eval(e, env, src) for e in n.elts],
    ast.Subscript: _subscript,
}


def substitute(value: Any, env: Mapping[str, Any]) -> Any:
    """Replace `{expr}` parts in strings (recursively in lists and mappings)."""
    if isinstance(value, str):
        if "{" not in value:
            return value
        whole = _PLACEHOLDER.fullmatch(value)
        if whole:
            return evaluate(whole.group(1), env)
        return _PLACEHOLDER.sub(lambda m: str(evaluate(m.group(1), env)), value)
    # A mapping or list without a placeholder is returned as it is, not copied: ten thousand
    # inline points written out (no `{...}`) would otherwise be copied once more while loading.
    if isinstance(value, dict):
        items = [(k, v, substitute(v, env)) for k, v in value.items()]
        if all(new is v for _k, v, new in items):
            return value
        if isinstance(value, LineDict):
            out = LineDict({k: new for k, _v, new in items})
            out.file, out.line, out.lines = value.file, value.line, value.lines
            return out
        return {k: new for k, _v, new in items}
    if isinstance(value, list):
        subs = [substitute(v, env) for v in value]
        return value if all(new is v for new, v in zip(subs, value, strict=True)) else subs
    return value


def _range(spec: Any, env: Mapping[str, Any], src: str) -> list[Any]:
    """`[first, last]`, `[first, last, step]` (ints or expressions), a count, or `{values: [...]}`."""
    if isinstance(spec, dict) and set(spec) == {"values"} and isinstance(spec["values"], list):
        return list(substitute(spec["values"], env))
    if isinstance(spec, str):
        spec = evaluate(spec.strip("{}"), env)
    if isinstance(spec, int) and not isinstance(spec, bool):
        return list(range(1, spec + 1))
    if isinstance(spec, list) and len(spec) in (2, 3):
        bounds = [evaluate(x.strip("{}"), env) if isinstance(x, str) else x for x in spec]
        if all(isinstance(x, int) and not isinstance(x, bool) for x in bounds):
            step = bounds[2] if len(bounds) == 3 else 1
            if step == 0:
                raise ValueError(f"zero step in repeat {src}")
            return list(range(bounds[0], bounds[1] + (1 if step > 0 else -1), step))
    raise ValueError(f"repeat variable {src}: give [first, last], [first, last, step], a count or {{values: [...]}}")


def expand(items: LineList | list[Any], env: Mapping[str, Any]) -> Iterator[tuple[dict[str, Any], str, int]]:
    """Yield (point dict, file, line) for every point, repeats unrolled and expressions evaluated."""
    file = getattr(items, "file", "")
    lines = getattr(items, "lines", [])
    for i, item in enumerate(items):
        line = lines[i] if i < len(lines) else getattr(items, "line", 0)
        if not isinstance(item, dict):
            raise ProfileError(file, line, "each point is a mapping")
        if "repeat" in item:
            extra = set(item) - {"repeat", "points"}
            if extra or not isinstance(item.get("points"), list) or not isinstance(item["repeat"], dict):
                raise ProfileError(file, line, "a repeat block has exactly `repeat: {var: range}` and `points: [...]`")
            try:
                yield from _expand_repeat(item["repeat"], item["points"], env, file, line)
            except ValueError as exc:
                raise ProfileError(file, line, str(exc)) from None
            continue
        try:
            point = substitute(item, env)
        except ValueError as exc:
            raise ProfileError(file, line, str(exc)) from None
        yield point, file, line


def _expand_repeat(
    spec: dict[str, Any], body: Any, env: Mapping[str, Any], file: str, line: int
) -> Iterator[tuple[dict[str, Any], str, int]]:
    names = list(spec)
    if not names:
        yield from expand(body, env)
        return
    first, rest = names[0], {k: spec[k] for k in names[1:]}
    for value in _range(spec[first], env, first):
        yield from _expand_repeat(rest, body, {**env, first: value}, file, line)
