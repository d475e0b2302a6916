"""CEL expressions of allow rules (issue 19), on cel-expr-python (Google's cel-cpp; chosen by
bench/cel.py: 3-4 µs per evaluation, type-checked at compile). This module is the only one that
imports the library: everything it returns is typed here.

Variables, as in Kubernetes' AuthenticationConfiguration and ValidatingAdmissionPolicy: `claims`
(the token's payload), `pod`, `namespaceObject` and `node` (each `{name, uid, labels}`; one the
token names none of, or the cache does not know, is left unbound and reading it fails the rule)."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

from cel_expr_python import cel

from verifier.labels import AllKeys, LabelKeys

from .expression_keys import Variable, scan

# The library has no cost limit, so the text is bounded instead, from bench/cel.py's worst cases
# over the longest list a 16 KiB token can carry (2,700 audiences, which the workload chooses):
# one predicate comprehension (all, exists, exists_one) is linear, under 1 ms; two nested are
# quadratic; map and filter are quadratic in cel-cpp even alone (110 ms); matches() inside a
# comprehension compiles its pattern per element (13 ms).
MAX_EXPRESSION_CHARS: Final = 1024
MAX_COMPREHENSIONS: Final = 1
REFUSED_MACROS: Final = frozenset({"map", "filter"})
MAX_ERROR_CHARS: Final = 120

_OBJECT: Final = cel.Type.Map(cel.Type.STRING, cel.Type.DYN)
_ENV: Final = cel.NewEnv(variables={"claims": _OBJECT, "pod": _OBJECT, "namespaceObject": _OBJECT, "node": _OBJECT})
_BOOL: Final = cel.Type.BOOL
_ERROR: Final = cel.Type.ERROR
_STATUS_PREFIX: Final = re.compile(r"^[A-Z_]+: ")
_NO_KEY: Final = re.compile(r'Key not found in map : "(.*)"')
_FOREIGN: Final = "Non-CEL value type"
_NO_VARIABLE: Final = re.compile(r'No value with name "(\w+)" found in Activation')


class ExpressionError(ValueError):
    """An expression that cannot be compiled or is too costly; the message says where and why."""


@dataclass(frozen=True, slots=True, eq=False)
class Expression:
    """A compiled expression, with what it reads from the cluster (for the binding and the cache)."""

    text: str
    reads: frozenset[Variable]
    label_keys: Mapping[Variable, LabelKeys]
    claim_keys: LabelKeys
    _program: Any  # cel_expr_python's Expression, untyped: only evaluate() touches it


def compile_expression(text: str) -> Expression:
    """Compiles and type-checks `text` at load time; raises ExpressionError on a syntax or type
    error, a result that cannot be a bool, or an expression over the bounds."""
    if len(text) > MAX_EXPRESSION_CHARS:
        raise ExpressionError(f"expression is {len(text)} characters; at most {MAX_EXPRESSION_CHARS} are accepted")
    scanned = scan(text)
    if refused := sorted(REFUSED_MACROS.intersection(scanned.comprehensions)):
        raise ExpressionError(
            f"expression uses {', '.join(refused)}: too costly on long lists; use all, exists or exists_one"
        )
    if len(scanned.comprehensions) > MAX_COMPREHENSIONS:
        raise ExpressionError(
            f"expression has {len(scanned.comprehensions)} comprehensions (all, exists, exists_one);"
            f" at most {MAX_COMPREHENSIONS} is accepted, to bound its cost"
        )
    if scanned.comprehensions and "matches" in scanned.calls:
        raise ExpressionError("expression uses matches() with a comprehension: too costly on long lists")
    try:
        program = _ENV.compile(text)
    except RuntimeError as error:
        raise ExpressionError(_compile_message(str(error))) from None
    result = program.return_type()
    if result != cel.Type.BOOL and result != cel.Type.DYN:
        raise ExpressionError(f"expression gives {result.name().lower()}, not a bool")
    return Expression(text, scanned.reads, scanned.label_keys, scanned.claim_keys, program)


def evaluate(expression: Expression, claims: Mapping[str, object], objects: Mapping[str, object]) -> str | None:
    """None when the expression holds, else why not (`expression is false`, `expression failed:
    ...`). `objects` are the bound ones of pod, namespaceObject, node. Never raises: a run-time
    error refuses the join, it is not the server's failure."""
    if not isinstance(expression.claim_keys, AllKeys):  # only the claims it names: the binding converts all it gets
        claims = {key: claims[key] for key in expression.claim_keys if key in claims}
    variables = {"claims": claims, **objects}
    try:
        value = expression._program.eval(data=variables)
        result = value.value()
        if result is True or result is False:  # the common case first: no type() call (0.5 µs)
            return None if result else "expression is false"
        kind = value.type()
        if kind == _ERROR and _FOREIGN in str(result):
            # The binding takes dicts and lists only; copying every time would cost more than the
            # evaluation: copy only when a claim is another mapping or sequence (a MappingProxyType).
            value = expression._program.eval(data={k: _plain(v) for k, v in variables.items()})
            result, kind = value.value(), value.type()
        if kind == _BOOL:
            return None if result is True else "expression is false"
        if kind == _ERROR:
            return "expression failed: " + _run_message(str(result))
        return f"expression gives {_bounded(kind.name().lower())}, not a bool"
    except Exception as error:  # the C++ binding raises what it likes (e.g. on a value it cannot convert)
        return "expression failed: " + _run_message(str(error))


def _plain(value: object) -> object:
    """A copy of dicts and lists only, for the binding (a MappingProxyType, a tuple of groups)."""
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value


def _compile_message(raw: str) -> str:
    # cel-cpp says `INVALID_ARGUMENT: ERROR: <input>:1:13: Syntax error: ...` then a caret picture
    # of the text; keep the first line, with the position, which the file's author needs.
    first = _STATUS_PREFIX.sub("", raw.strip().splitlines()[0] if raw.strip() else raw)
    first = first.removeprefix("ERROR: ").replace("<input>:", "at ")
    return "expression " + _bounded(first, 300)


def _run_message(raw: str) -> str:
    message = _STATUS_PREFIX.sub("", raw.strip())
    if found := _NO_KEY.search(message):
        return f"no such key {_quote(found.group(1))}"
    if found := _NO_VARIABLE.search(message):
        return f"no {found.group(1)} known for this token"
    return _bounded(message)


def _quote(text: str) -> str:
    return "'" + _bounded(text, 63) + "'"


def _bounded(text: str, limit: int = MAX_ERROR_CHARS) -> str:
    """A run-time message may quote a claim's value: bounded, on one line."""
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"
