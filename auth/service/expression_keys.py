"""What a CEL expression reads, found from its text: which objects of the cluster (so a rule that
reads one needs the cluster's binding), which label keys (so the watch cache keeps only those) and
which claims (so an evaluation converts only those: the whole payload would cost 4 µs more a join).
Conservative: a use it cannot read a literal key from (`pod.labels[k]`, `pod.labels.exists(...)`,
`pod` passed whole, `claims.exists(...)`) wants all keys of that object."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Final, NamedTuple

from verifier.labels import ALL_KEYS, AllKeys, LabelKeys, LabelKind

Variable = LabelKind  # the kinds; CEL calls the namespace `namespaceObject`

KINDS: Final[Mapping[str, Variable]] = {"pod": "pod", "namespaceObject": "namespace", "node": "node"}
_MACROS: Final = frozenset({"all", "exists", "exists_one", "map", "filter"})
# What may come just before an operand of `in` that is a string literal alone: the start, a bracket,
# a comma, `&&`, `||`, `?` or `:` (each binds looser than `in`, or is no operator).
_OPENS: Final = frozenset({"", "(", "[", "{", ",", "&", "|", "?", ":"})
_TOKEN: Final = re.compile(
    r"""\s+
    | //[^\n]*
    | (?P<string>(?:[rR][bB]?|[bB][rR]?)?
        (?:\"\"\"[\s\S]*?\"\"\"|'''[\s\S]*?'''|"(?:\\.|[^"\\\n])*"|'(?:\\.|[^'\\\n])*'))
    | (?P<ident>[A-Za-z_][A-Za-z0-9_]*)
    | (?P<other>\d[\w.]*|[^\s])""",
    re.VERBOSE,
)


class _Token(NamedTuple):
    text: str
    key: str | None = None  # for a plain string literal: its value; None for anything else


@dataclass(frozen=True, slots=True)
class Scanned:
    reads: frozenset[Variable]
    label_keys: Mapping[Variable, LabelKeys] = field(default_factory=dict)
    claim_keys: LabelKeys = frozenset()
    comprehensions: tuple[str, ...] = ()  # the macros used, in order: `exists`, `map`, ...
    calls: frozenset[str] = frozenset()  # the functions called: `matches`, `size`, ...


def scan(text: str) -> Scanned:
    # Spaces and comments have no group: a quote in a comment must not open a string that would
    # hide the code after it (a `.map(` on the next line).
    tokens = [_token(m) for m in _TOKEN.finditer(text) if m.lastgroup is not None]
    end = _Token("")
    tokens += [end, end, end, end]  # lookahead past the last token reads no-ops
    reads: set[Variable] = set()
    keys: dict[Variable, set[str] | AllKeys] = {}
    claims: set[str] | AllKeys = set()
    comprehensions: list[str] = []
    calls: set[str] = set()
    for i, token in enumerate(tokens[:-4]):
        previous = tokens[i - 1].text if i else ""
        if tokens[i + 1].text == "(" and token.key is None:
            calls.add(token.text)
            if previous == "." and token.text in _MACROS:
                comprehensions.append(token.text)
        if previous == "." and i >= 2 and _ends_operand(tokens[i - 2].text):
            continue  # a field (`claims.node`), not the variable (`.claims` is it, at the root scope)
        if token.text == "claims":
            claim = _literal_key(tokens, i, 1)
            if claim is None:
                claims = ALL_KEYS
            elif isinstance(claims, set):
                claims.add(claim)
        kind = KINDS.get(token.text)
        if kind is None:
            continue
        reads.add(kind)
        if tokens[i + 1].text == "." and tokens[i + 2].text in ("name", "uid"):
            continue
        key = _literal_key(tokens, i, 3) if tokens[i + 1].text == "." and tokens[i + 2].text == "labels" else None
        wanted = keys.setdefault(kind, set())
        if key is None:
            keys[kind] = ALL_KEYS
        elif isinstance(wanted, set):
            wanted.add(key)
    label_keys = {k: v if isinstance(v, AllKeys) else frozenset(v) for k, v in keys.items()}
    claim_keys = claims if isinstance(claims, AllKeys) else frozenset(claims)
    return Scanned(frozenset(reads), label_keys, claim_keys, tuple(comprehensions), frozenset(calls))


def _literal_key(tokens: list[_Token], i: int, path: int) -> str | None:
    """The key of `pod.labels["k"]`, `pod.labels.k` or `"k" in pod.labels` (`claims["k"]`, ... with
    path 1), the map's path taking `path` tokens from tokens[i]; None for any other use of the map."""
    after = tokens[i + path : i + path + 3]
    if after[0].text == "[" and after[1].key is not None and after[2].text == "]":
        return after[1].key
    if after[0].text == "." and _is_ident(after[1].text) and after[2].text != "(":
        return after[1].text
    # `"k" in m`, but not `x + "k" in m`: `in` binds looser than arithmetic, so the key is then a sum
    if after[0].text not in ("[", ".") and i >= 2 and tokens[i - 1].text == "in" and tokens[i - 3].text in _OPENS:
        return tokens[i - 2].key
    return None


def _ends_operand(text: str) -> bool:
    """Whether a token can end an operand (`x`, `f()`, `m[k]`, `"s"`, `1`), so that a `.` after it
    selects a field; after anything else a `.` names a variable at the root scope (`.claims`)."""
    if text == "in":
        return False
    return text[:1].isalnum() or text[:1] == "_" or text[-1:] in ")]}\"'"


def _token(match: re.Match[str]) -> _Token:
    text = match.group()
    if match.lastgroup != "string":
        return _Token(text)
    prefix = text[: len(text) - len(text.lstrip("rRbB"))]
    body = text[len(prefix) :]
    quote = 3 if body[:3] in ('"""', "'''") else 1
    value = body[quote:-quote]
    # A byte string, or an escape we would have to decode, is no key we can name: all keys then.
    plain = "b" not in prefix.lower() and ("r" in prefix.lower() or "\\" not in value)
    return _Token(text, value if plain else None)


def _is_ident(text: str) -> bool:
    return text.isidentifier() and text.isascii()
