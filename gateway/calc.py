"""Calculated points: an expression over other points of the same device, compiled once at start.

An expression is parsed with :mod:`ast` and turned into closures over a whitelist (numbers, point
ids, + - * /, comparisons, and/or/not, `a if c else b`, and the functions in :data:`FUNCTIONS`);
nothing is ever passed to eval. A point id that is not a Python name is written `point("id")`; a
dotted id (`l1.voltage`) may also be written as it is.
"""

from __future__ import annotations

import ast
import functools
import math
import operator
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from gateway.points import Quality

#: One input per slot of `Compiled.inputs`, in that order.
Env = Sequence[Any]
Fn = Callable[[Env], Any]


class CalcError(ValueError):
    """An expression that cannot be used: syntax, an unsupported construct, a wrong call."""


class EvalError(Exception):
    """An expression that has no value for these inputs (division by zero, a domain error)."""


@dataclass(frozen=True, slots=True)
class Compiled:
    """One expression: the point ids it reads and the function of their values."""

    expr: str
    inputs: tuple[str, ...]
    fn: Fn

    def __call__(self, values: Env) -> int | float | bool:
        """The value for `values` (aligned with `inputs`); EvalError when there is none."""
        try:
            result = self.fn(values)
        except ZeroDivisionError:
            raise EvalError("division by zero") from None
        except OverflowError:
            raise EvalError("result out of range") from None
        except (ValueError, TypeError) as exc:
            raise EvalError(str(exc)) from None
        if isinstance(result, float) and not math.isfinite(result):
            raise EvalError("not a finite number")
        if not isinstance(result, int | float | bool):
            raise EvalError(f"not a number: {result!r}")
        return result


def _number(x: Any) -> int | float:
    if isinstance(x, bool | int | float):
        return x
    raise ValueError(f"not a number: {x!r}")


def _sqrt(x: Any) -> float:
    x = _number(x)
    if x < 0:
        raise ValueError(f"sqrt of a negative number ({x!r})")
    return math.sqrt(x)


def _bit(word: Any, n: Any) -> bool:
    word, n = _number(word), _number(n)
    if word != int(word) or n != int(n) or not 0 <= n < 64:
        raise ValueError(f"bit({word!r}, {n!r}) needs an integer word and a bit number 0-63")
    return bool((int(word) >> int(n)) & 1)


def _vll(v1: Any, v2: Any) -> float:
    """Line-to-line voltage from two phase voltages 120 degrees apart."""
    a, b = _number(v1), _number(v2)
    return math.sqrt(a * a + b * b + a * b)


def _variadic(name: str, f: Callable[[Sequence[int | float]], int | float]) -> Callable[..., int | float]:
    def call(*args: Any) -> int | float:
        if not args:
            raise ValueError(f"{name}() of nothing")
        return f([_number(a) for a in args])

    return call


#: Function name -> (callable, fewest arguments, most arguments or None for any).
FUNCTIONS: dict[str, tuple[Callable[..., Any], int, int | None]] = {
    "abs": (lambda x: abs(_number(x)), 1, 1),
    "min": (_variadic("min", min), 1, None),
    "max": (_variadic("max", max), 1, None),
    "sum": (_variadic("sum", sum), 1, None),
    "sqrt": (_sqrt, 1, 1),
    "bit": (_bit, 2, 2),
    "vll": (_vll, 2, 2),
}

_BINOPS: dict[type[ast.operator], Callable[[Any, Any], Any]] = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
}
_CMPOPS: dict[type[ast.cmpop], Callable[[Any, Any], Any]] = {
    ast.Eq: operator.eq,
    ast.NotEq: operator.ne,
    ast.Lt: operator.lt,
    ast.LtE: operator.le,
    ast.Gt: operator.gt,
    ast.GtE: operator.ge,
}


def _dotted(node: ast.AST) -> str | None:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        base = _dotted(node.value)
        return None if base is None else f"{base}.{node.attr}"
    return None


class _Compiler:
    def __init__(self, src: str) -> None:
        self.src = src
        self.inputs: list[str] = []

    def fail(self, what: str) -> CalcError:
        return CalcError(f"{what} in {self.src!r}")

    def slot(self, pid: str) -> Fn:
        if pid not in self.inputs:
            self.inputs.append(pid)
        k = self.inputs.index(pid)
        return lambda env: env[k]

    def node(self, node: ast.AST) -> Fn:  # noqa: C901 - one branch per construct
        if isinstance(node, ast.Constant):
            value = node.value
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise self.fail(f"unsupported constant {value!r}")
            return lambda _env: value
        if isinstance(node, ast.Name | ast.Attribute):
            pid = _dotted(node)
            if pid is None:
                raise self.fail("unsupported attribute")
            if pid in ("True", "False", "None"):
                raise self.fail(f"unsupported constant {pid}")
            return self.slot(pid)
        if isinstance(node, ast.BinOp):
            op = _BINOPS.get(type(node.op))
            if op is None:
                raise self.fail(f"unsupported operator {type(node.op).__name__}")
            left, right = self.node(node.left), self.node(node.right)
            return lambda env: op(_number(left(env)), _number(right(env)))
        if isinstance(node, ast.UnaryOp):
            operand = self.node(node.operand)
            if isinstance(node.op, ast.USub):
                return lambda env: -_number(operand(env))
            if isinstance(node.op, ast.UAdd):
                return lambda env: +_number(operand(env))
            if isinstance(node.op, ast.Not):
                return lambda env: not operand(env)
            raise self.fail(f"unsupported operator {type(node.op).__name__}")
        if isinstance(node, ast.BoolOp):
            parts = [self.node(v) for v in node.values]
            if isinstance(node.op, ast.And):
                return lambda env: all(p(env) for p in parts)
            return lambda env: any(p(env) for p in parts)
        if isinstance(node, ast.Compare):
            return self.compare(node)
        if isinstance(node, ast.IfExp):
            test, body, orelse = self.node(node.test), self.node(node.body), self.node(node.orelse)
            return lambda env: body(env) if test(env) else orelse(env)
        if isinstance(node, ast.Call):
            return self.call(node)
        raise self.fail(f"unsupported expression ({type(node).__name__})")

    def compare(self, node: ast.Compare) -> Fn:
        ops = []
        for op in node.ops:
            f = _CMPOPS.get(type(op))
            if f is None:
                raise self.fail(f"unsupported comparison {type(op).__name__}")
            ops.append(f)
        terms = [self.node(node.left), *(self.node(c) for c in node.comparators)]

        def run(env: Env) -> bool:
            left = _number(terms[0](env))
            for f, term in zip(ops, terms[1:], strict=True):
                right = _number(term(env))
                if not f(left, right):
                    return False
                left = right
            return True

        return run

    def call(self, node: ast.Call) -> Fn:
        if not isinstance(node.func, ast.Name) or node.keywords:
            raise self.fail("only plain calls of the known functions")
        name = node.func.id
        if name == "point":
            arg = node.args[0] if len(node.args) == 1 else None
            if not isinstance(arg, ast.Constant) or not isinstance(arg.value, str):
                raise self.fail('point() takes one point id in quotes: point("my-id")')
            return self.slot(arg.value)
        if name not in FUNCTIONS:
            known = ", ".join(sorted([*FUNCTIONS, "point"]))
            raise self.fail(f"unknown function {name!r} (known: {known})")
        f, least, most = FUNCTIONS[name]
        if len(node.args) < least or (most is not None and len(node.args) > most):
            count = f"{least}" if least == most else f"at least {least}"
            raise self.fail(f"{name}() takes {count} argument(s), not {len(node.args)}")
        if any(isinstance(a, ast.Starred) for a in node.args):
            raise self.fail("no *arguments")
        args = [self.node(a) for a in node.args]
        return lambda env: f(*(a(env) for a in args))


@functools.cache
def compile_expr(expr: str) -> Compiled:
    """The expression compiled; CalcError names what is wrong with it."""
    if not isinstance(expr, str) or not expr.strip():
        raise CalcError("an empty expression")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", SyntaxWarning)
            tree = ast.parse(expr.strip(), mode="eval")
    except SyntaxError as exc:
        raise CalcError(f"syntax error in {expr!r}: {exc.msg}") from None
    compiler = _Compiler(expr)
    fn = compiler.node(tree.body)
    return Compiled(expr, tuple(compiler.inputs), fn)


def evaluation_order(calcs: Mapping[str, Compiled]) -> list[str]:
    """The calculated point ids, each after the calculated points it reads; CalcError on a cycle."""
    order: list[str] = []
    state: dict[str, int] = {}  # 1: being visited, 2: done

    def visit(pid: str, trail: list[str]) -> None:
        mark = state.get(pid)
        if mark == 2:
            return
        if mark == 1:
            cycle = [*trail[trail.index(pid) :], pid]
            raise CalcError(f"calculated points form a cycle: {' -> '.join(cycle)}")
        state[pid] = 1
        for dep in calcs[pid].inputs:
            if dep in calcs:
                visit(dep, [*trail, pid])
        state[pid] = 2
        order.append(pid)

    for pid in calcs:
        visit(pid, [])
    return order


_RANK = {Quality.GOOD.value: 0, Quality.UNCERTAIN.value: 1, Quality.BAD.value: 2}


def combine(
    compiled: Compiled, values: Sequence[Any], qualities: Sequence[str], errors: Sequence[str | None]
) -> tuple[int | float | bool | None, str, str | None]:
    """(value, quality, error) of an expression: the worst quality of its inputs, bad when it has no value."""
    worst = Quality.GOOD.value
    for pid, quality, error in zip(compiled.inputs, qualities, errors, strict=True):
        if quality == Quality.BAD.value:
            return None, quality, f"input {pid} is bad" + (f" ({error})" if error else "")
        if _RANK.get(quality, 2) > _RANK[worst]:
            worst = quality
    for pid, value, error in zip(compiled.inputs, values, errors, strict=True):
        if value is None:
            why = f"input {pid} has no value" + (f" ({error})" if error else "")
            return None, worst if worst != Quality.GOOD.value else Quality.BAD.value, why
    try:
        value = compiled(values)
    except EvalError as exc:
        return None, Quality.BAD.value, f"calc: {exc}"
    return value, worst, None
