"""YAML loading that remembers where every key and item came from, for errors that name a line."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml


class LineDict(dict[str, Any]):
    """A mapping that knows its own line and the line of each of its keys (1-based)."""

    __slots__ = ("file", "line", "lines")

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.file = ""
        self.line = 0
        self.lines: dict[Any, int] = {}


class LineList(list[Any]):
    """A sequence that knows its own line and the line of each item (1-based)."""

    __slots__ = ("file", "line", "lines")

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self.file = ""
        self.line = 0
        self.lines: list[int] = []


class YamlError(Exception):
    """A file that is not valid YAML, with its position."""

    def __init__(self, file: str, line: int, message: str) -> None:
        super().__init__(f"{file}:{line}: {message}")
        self.file = file
        self.line = line
        self.message = message


class _Loader(yaml.SafeLoader):
    pass


def _construct_mapping(loader: _Loader, node: yaml.MappingNode) -> LineDict:
    loader.flatten_mapping(node)
    out = LineDict()
    out.file = loader.name
    out.line = node.start_mark.line + 1
    for key_node, value_node in node.value:
        key = loader.construct_object(key_node, deep=True)
        if key in out:
            raise yaml.constructor.ConstructorError(None, None, f"duplicate key {key!r}", key_node.start_mark)
        out[key] = loader.construct_object(value_node, deep=True)
        out.lines[key] = key_node.start_mark.line + 1
    return out


def _construct_sequence(loader: _Loader, node: yaml.SequenceNode) -> LineList:
    out = LineList(loader.construct_object(child, deep=True) for child in node.value)
    out.file = loader.name
    out.line = node.start_mark.line + 1
    out.lines = [child.start_mark.line + 1 for child in node.value]
    return out


_Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)
_Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_SEQUENCE_TAG, _construct_sequence)


def load_text(text: str, name: str) -> Any:
    """Parse YAML text; errors become YamlError with the file name and line."""
    try:
        loader = _Loader(text)
    except yaml.YAMLError as exc:
        raise YamlError(name, 1, str(exc)) from None
    loader.name = name
    try:
        return loader.get_single_data()
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark is not None else 0
        raise YamlError(name, line, str(exc.problem or exc)) from None
    except yaml.YAMLError as exc:
        raise YamlError(name, 0, str(exc)) from None
    finally:
        loader.dispose()


def load_file(path: Path) -> Any:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise YamlError(str(path), 0, f"cannot read: {exc.strerror}") from None
    except UnicodeDecodeError as exc:
        raise YamlError(str(path), 0, f"not UTF-8 text: {exc.reason}") from None
    return load_text(text, str(path))


def locate(data: Any, loc: Sequence[str | int]) -> tuple[str, int, list[str | int]]:
    """Follow a validation error's path through loaded data.

    Returns the file and line of the deepest node reached and the path with the entries that are
    not in the data (pydantic's union tags such as `modbus`) left out.
    """
    file = getattr(data, "file", "")
    line = getattr(data, "line", 0)
    node: Any = data
    path: list[str | int] = []
    for part in loc:
        child = child_of(node, part)
        if child is not MISSING:
            lines = getattr(node, "lines", None)
            if isinstance(lines, dict):
                line = lines.get(part, line)
            elif isinstance(lines, list) and isinstance(part, int) and part < len(lines):
                line = lines[part]
            file = getattr(node, "file", "") or file
            node = child
            path.append(part)
        elif isinstance(part, str) and isinstance(node, dict) and _looks_like_tag(part, node):
            continue
        else:
            path.append(part)
            node = None
    return file, line, path


MISSING: Any = object()


def child_of(node: Any, part: str | int) -> Any:
    """node[part] for loaded YAML data, or MISSING."""
    if isinstance(node, dict):
        return node.get(part, MISSING)
    if isinstance(node, list) and isinstance(part, int) and 0 <= part < len(node):
        return node[part]
    return MISSING


def _looks_like_tag(part: str, node: dict[str, Any]) -> bool:
    return any(part == v for v in node.values() if isinstance(v, str)) or "[" in part


def format_path(path: Sequence[str | int]) -> str:
    out = ""
    for part in path:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out or "(top)"
