"""edgegw(1) in roff, written from the CLI's own argparse definitions so that it cannot drift from `--help`.

`python -m gateway.manpage > edgegw.1`; `make deb` puts the page in the package.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import sys
from collections.abc import Iterator, Sequence
from importlib import metadata

from gateway.registry import DRIVERS, load_object

EXAMPLE_PREFIXES = ("example:", "examples:")


def escape(text: str) -> str:
    """Text as roff reads it literally: backslashes, hyphens (not hyphenation points) and control lines."""
    out = text.replace("\\", "\\e").replace("-", "\\-")
    lines = [("\\&" + line) if line.startswith((".", "'")) else line for line in out.split("\n")]
    return "\n".join(lines)


def subcommands(parser: argparse.ArgumentParser) -> dict[str, tuple[str, argparse.ArgumentParser]]:
    """Each subcommand's name, its one-line help and its parser, in definition order; hidden ones left out."""
    found: dict[str, tuple[str, argparse.ArgumentParser]] = {}
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            helps = {choice.dest: choice.help or "" for choice in action._choices_actions}
            for name, sub in action.choices.items():
                if name in helps and helps[name] != argparse.SUPPRESS:
                    found[name] = (helps[name], sub)
    return found


def options(parser: argparse.ArgumentParser) -> Iterator[argparse.Action]:
    """The documented arguments of a parser: positionals and options, `--help` and hidden ones left out."""
    for action in parser._actions:
        if isinstance(action, argparse._HelpAction | argparse._SubParsersAction) or action.help == argparse.SUPPRESS:
            continue
        yield action


def examples(parser: argparse.ArgumentParser) -> list[str]:
    """The example command lines of a parser's epilog (`example: ...` / `examples:` then one per line)."""
    epilog = (parser.epilog or "").strip()
    for prefix in EXAMPLE_PREFIXES:
        if epilog.startswith(prefix):
            return [line.strip() for line in epilog.removeprefix(prefix).splitlines() if line.strip()]
    return []


def _usage(parser: argparse.ArgumentParser) -> str:
    usage = parser.format_usage().strip()
    return " ".join(usage.removeprefix("usage:").split())


def _metavar(action: argparse.Action) -> str:
    fmt = argparse.HelpFormatter("edgegw")
    if action.option_strings:
        return fmt._format_args(action, action.dest.upper()) if action.nargs != 0 else ""
    return fmt._format_args(action, action.dest)


def _option(action: argparse.Action) -> list[str]:
    meta = _metavar(action)
    if action.option_strings:
        names = ", ".join(f"\\fB{escape(s)}\\fR" for s in action.option_strings)
        head = f"{names} \\fI{escape(meta)}\\fR" if meta else names
    else:
        head = f"\\fI{escape(meta)}\\fR"
    # As `--help` prints it: %(default)s and the like expanded.
    text = argparse.HelpFormatter("edgegw")._expand_help(action) if action.help else ""
    if action.choices is not None and not action.metavar and "{" not in meta:
        text += f" (one of: {', '.join(str(c) for c in action.choices)})"
    if action.required and action.option_strings:
        text += " (required)"
    return [".TP", head, escape(text.strip())]


def _section(lines: list[str], parser: argparse.ArgumentParser, skip: frozenset[str] = frozenset()) -> None:
    for action in options(parser):
        if action.dest not in skip:
            lines += _option(action)


def _twin_sections(lines: list[str], twins: Sequence[tuple[str, argparse.ArgumentParser]]) -> None:
    """The options every twin has once, then each kind's own."""
    if not twins:
        return
    dests = [{a.dest for a in options(twin)} for _, twin in twins]
    shared = frozenset(set.intersection(*dests))
    lines += [".PP", "Twin options, after the profile (every kind):"]
    _section(lines, twins[0][1], skip=frozenset(d for d in dests[0] if d not in shared))
    for kind, twin in twins:
        lines += [".PP", f"Twin options of a {escape(kind)} profile:"]
        _section(lines, twin, skip=shared)


def _example_block(lines: list[str], parser: argparse.ArgumentParser) -> None:
    shown = examples(parser)
    if not shown:
        return
    lines += [".PP", "Example" + ("s:" if len(shown) > 1 else ":"), ".RS 4", ".nf"]
    lines += [escape(line) for line in shown]
    lines += [".fi", ".RE"]


def twin_parsers() -> list[tuple[str, argparse.ArgumentParser]]:
    """`edgegw simulate PROFILE`'s options, one parser per driver kind that has a twin."""
    from gateway.twin import simulate_parser

    found = []
    for kind, spec in DRIVERS.items():
        if spec.twin:
            try:
                cls = load_object(spec.twin)
            except ImportError:  # pragma: no cover - a driver whose twin is not there yet
                continue
            found.append((kind, simulate_parser(cls, "PROFILE")))
    return found


def render(
    parser: argparse.ArgumentParser,
    *,
    version: str,
    date: dt.date,
    twins: Sequence[tuple[str, argparse.ArgumentParser]] = (),
) -> str:
    """The whole man page: every subcommand with its usage, description, arguments and examples."""
    name = parser.prog
    lines = [
        f'.\\" Generated by gateway/manpage.py from the {name} argparse definitions; do not edit.',
        f'.TH {name.upper()} 1 "{date.isoformat()}" "{escape(name)} {escape(version)}" "User Commands"',
        # Left-adjusted, unhyphenated: usage lines and option names must read as typed.
        ".ad l",
        ".nh",
        ".SH NAME",
        f"{escape(name)} \\- {escape((parser.description or '').rstrip('.'))}",
        ".SH SYNOPSIS",
        f".B {escape(name)}",
        "\\fICOMMAND\\fR [\\fIOPTIONS\\fR] [\\fIARGUMENTS\\fR]",
        ".SH DESCRIPTION",
        f"{escape(parser.description or '')}",
        "Every command below also takes \\fB\\-h\\fR, \\fB\\-\\-help\\fR, which shows the same text.",
        ".SH COMMANDS",
    ]
    subs = subcommands(parser)
    for sub_name, (help_text, sub) in subs.items():
        lines += [f'.SS "{escape(sub_name)}"', f"\\fB{escape(_usage(sub))}\\fR", ".PP"]
        lines.append(escape(sub.description or help_text[:1].upper() + help_text[1:] + "."))
        if any(True for _ in options(sub)):
            lines += [".PP", "Arguments:"]
            _section(lines, sub)
        if sub_name == "simulate":
            _twin_sections(lines, twins)
        _example_block(lines, sub)
    lines += [
        ".SH EXIT STATUS",
        ".TP",
        "0",
        "Success.",
        ".TP",
        "1",
        "The command failed (a device did not answer, a write was not confirmed).",
        ".TP",
        "2",
        "Invalid configuration or usage; the message names the file, line and field.",
        ".SH FILES",
        ".TP",
        "\\fI/etc/edgegw/gateway.yaml\\fR",
        "The gateway configuration read by the \\fBedgegw\\fR service.",
        ".TP",
        "\\fI/var/lib/edgegw\\fR",
        "State (sequence counters, driver cursors) and the disk buffer.",
        ".SH SEE ALSO",
        "\\fBsystemctl\\fR(1), \\fBjournalctl\\fR(1);",
        "the configuration reference and operations guide under \\fI/usr/share/doc/edgegw/\\fR.",
    ]
    return "\n".join(lines) + "\n"


def _version() -> str:
    try:
        return metadata.version("edgegw")
    except metadata.PackageNotFoundError:  # pragma: no cover - run from a bare checkout
        return "unknown"


def main(argv: list[str] | None = None) -> int:
    from gateway.cli import build_parser

    ap = argparse.ArgumentParser(prog="python -m gateway.manpage", description="Write edgegw(1) to stdout.")
    ap.add_argument("--version-string", default=None, help="the version in the page footer (default: installed)")
    args = ap.parse_args(argv)
    # SOURCE_DATE_EPOCH (reproducible builds) fixes the date, so that the same checkout gives the same page.
    epoch = os.environ.get("SOURCE_DATE_EPOCH")
    date = dt.datetime.fromtimestamp(int(epoch), dt.UTC).date() if epoch else dt.datetime.now(dt.UTC).date()
    page = render(build_parser(), version=args.version_string or _version(), date=date, twins=twin_parsers())
    sys.stdout.write(page)
    return 0


if __name__ == "__main__":
    sys.exit(main())
