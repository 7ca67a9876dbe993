"""YAML loading that remembers where every key and item came from, for errors that name a line."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml


class LineDict(dict[str, Any]):
    """A mapping that knows its own line and the line of each of its keys (1-based)."""

    __slots__ = ("_lines", "file", "line")

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.file = ""
        self.line = 0
        # The key lines, or how to compute them: ONE_LINE (every key on the mapping's own line: a
        # flow mapping) or LINE_EACH (key i on line + i: a block mapping). A loaded config is
        # thousands of such mappings, and a dict of lines each was a third of their memory; the
        # dict is made when something asks for it (an error message) or writes to it.
        self._lines: dict[Any, int] | int = {}

    @property
    def lines(self) -> dict[Any, int]:
        found = self._lines
        if isinstance(found, int):
            found = self._lines = {key: self.line + i * found for i, key in enumerate(self)}
        return found

    @lines.setter
    def lines(self, value: dict[Any, int]) -> None:
        self._lines = value

    def set_key_lines(self, lines: list[int]) -> None:
        """The line of each key, in key order (the builder's; compact when it follows a pattern)."""
        first = self.line
        if all(n == first for n in lines):
            self._lines = ONE_LINE
        elif all(n == first + i for i, n in enumerate(lines)):
            self._lines = LINE_EACH
        else:
            self._lines = dict(zip(self, lines, strict=True))


ONE_LINE, LINE_EACH = 0, 1


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


# libyaml's parser where PyYAML was built with it (about ten times faster than the pure-Python one).
_Base: Any = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
_MAP_TAG = yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG
_SEQ_TAG = yaml.resolver.BaseResolver.DEFAULT_SEQUENCE_TAG
_STR_TAG = yaml.resolver.BaseResolver.DEFAULT_SCALAR_TAG
_MERGE_TAG = "tag:yaml.org,2002:merge"
_PLAIN: tuple[bool, bool] = (True, False)
_CACHEABLE = (str, int, float, bool, type(None))


class _Loader(_Base):  # type: ignore[misc]
    pass


class _Builder:
    """Builds LineDict/LineList data straight from the parser's events.

    PyYAML's own loader first composes a node graph of the whole document (a node and two marks
    per scalar: 50 MB for a 10 000-point config) and only then constructs it; the daemon's memory
    kept that high-water mark for good. Building from events holds one event at a time. Scalars
    are resolved and constructed by PyYAML's safe resolver and constructors, so values are the
    same as with `yaml.safe_load`; equal scalars are shared.
    """

    def __init__(self, loader: _Loader, name: str) -> None:
        self.loader = loader
        self.name = name
        self.anchors: dict[str, Any] = {}
        self.scalars: dict[tuple[str | None, str, bool], Any] = {}

    def document(self) -> Any:
        loader = self.loader
        loader.get_event()  # stream start
        if loader.check_event(yaml.StreamEndEvent):
            return None
        loader.get_event()  # document start
        data = self.value()
        loader.get_event()  # document end
        if not loader.check_event(yaml.StreamEndEvent):
            event: Any = loader.get_event()
            raise yaml.composer.ComposerError(
                None, None, "expected a single document in the stream, but found another one", event.start_mark
            )
        return data

    def value(self) -> Any:
        event: Any = self.loader.get_event()
        if isinstance(event, yaml.AliasEvent):
            if event.anchor not in self.anchors:
                mark: Any = event.start_mark
                raise yaml.composer.ComposerError(None, None, f"found undefined alias {event.anchor!r}", mark)
            return self.anchors[event.anchor]
        if isinstance(event, yaml.ScalarEvent):
            out = self.scalar(event)
        elif isinstance(event, yaml.SequenceStartEvent):
            out = self.sequence(event)
        else:
            out = self.mapping(event)
        return out

    def scalar(self, event: Any) -> Any:
        # Equal scalars written the same way resolve to the same value: resolve (a regex per
        # implicit type) and construct each once per document.
        key = (event.tag, event.value, event.implicit[0])
        scalars = self.scalars
        if key in scalars:
            value = scalars[key]
        else:
            tag = event.tag
            if tag is None or tag == "!":
                tag = (
                    self.loader.resolve(yaml.ScalarNode, event.value, event.implicit) if event.implicit[0] else _STR_TAG
                )
            construct = self.loader.yaml_constructors.get(tag)
            if construct is None:
                raise yaml.constructor.ConstructorError(
                    None, None, f"could not determine a constructor for the tag {tag!r}", event.start_mark
                )
            value = construct(self.loader, yaml.ScalarNode(tag, event.value, event.start_mark, event.end_mark))
            if isinstance(value, _CACHEABLE):
                scalars[key] = value
        if event.anchor is not None:
            self.anchors[event.anchor] = value
        return value

    def sequence(self, event: Any) -> LineList:
        self._collection_tag(event, _SEQ_TAG)
        out = LineList()
        out.file, out.line = self.name, event.start_mark.line + 1
        if event.anchor is not None:
            self.anchors[event.anchor] = out
        loader = self.loader
        while not loader.check_event(yaml.SequenceEndEvent):
            out.lines.append(loader.peek_event().start_mark.line + 1)
            out.append(self.value())
        loader.get_event()
        return out

    def mapping(self, event: Any) -> LineDict:
        self._collection_tag(event, _MAP_TAG)
        out = LineDict()
        out.file, out.line = self.name, event.start_mark.line + 1
        if event.anchor is not None:
            self.anchors[event.anchor] = out
        loader = self.loader
        merged: list[Any] = []
        key_lines: list[int] = []
        while not loader.check_event(yaml.MappingEndEvent):
            key_event = loader.peek_event()
            merge = (
                isinstance(key_event, yaml.ScalarEvent)
                and key_event.value == "<<"
                and key_event.tag in (None, "!", _MERGE_TAG)
                and (key_event.implicit[0] or key_event.tag == _MERGE_TAG)
            )
            if merge:
                loader.get_event()
                merged.append((key_event, self.value()))
                continue
            key = self.value()
            if key in out:
                raise yaml.constructor.ConstructorError(None, None, f"duplicate key {key!r}", key_event.start_mark)
            out[key] = self.value()
            key_lines.append(key_event.start_mark.line + 1)
        loader.get_event()
        out.set_key_lines(key_lines)
        for key_event, source in merged:
            self._merge(out, source, key_event)
        return out

    @staticmethod
    def _merge(out: LineDict, source: Any, mark_event: Any) -> None:
        """YAML merge keys: written keys win, then the first merged mapping, then the next."""
        sources = source if isinstance(source, list) else [source]
        for src in sources:
            if not isinstance(src, dict):
                raise yaml.constructor.ConstructorError(
                    None, None, "a merge key (<<) takes a mapping or a list of mappings", mark_event.start_mark
                )
            for k, v in src.items():
                if k not in out:
                    out[k] = v
                    out.lines[k] = getattr(src, "lines", {}).get(k, out.line)

    def _collection_tag(self, event: Any, default: str) -> None:
        if event.tag not in (None, "!", default):
            raise yaml.constructor.ConstructorError(
                None, None, f"tag {event.tag!r} is not supported here", event.start_mark
            )


def load_text(text: str, name: str) -> Any:
    """Parse YAML text; errors become YamlError with the file name and line."""
    try:
        loader = _Loader(text)
    except yaml.YAMLError as exc:
        raise YamlError(name, 1, str(exc)) from None
    loader.name = name
    try:
        return _Builder(loader, name).document()
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
