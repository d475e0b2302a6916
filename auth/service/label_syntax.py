"""Label keys and values as Kubernetes validates them (apimachinery's IsQualifiedName and
IsValidLabelValue), so a rule names only labels an object can carry: a key the API server would
refuse could never match, and the file's author should hear so at load, not at a refused join."""

from __future__ import annotations

import re
from typing import Final

MAX_NAME: Final = 63
MAX_PREFIX: Final = 253
MAX_VALUE: Final = 63
_NAME: Final = re.compile(r"[A-Za-z0-9](?:[-A-Za-z0-9_.]*[A-Za-z0-9])?", re.ASCII)
_DNS_LABEL: Final = r"[a-z0-9](?:[-a-z0-9]*[a-z0-9])?"
_SUBDOMAIN: Final = re.compile(rf"{_DNS_LABEL}(?:\.{_DNS_LABEL})*", re.ASCII)
_CHARSET: Final = "alphanumeric characters, '-', '_' or '.', starting and ending with an alphanumeric character"


def key_problem(key: str) -> str | None:
    """Why `key` is not a label key (`[prefix/]name`), or None when it is one."""
    prefix, slash, name = key.rpartition("/")
    if slash:
        if not prefix:
            return f"label key {key[:80]!r} has an empty prefix before '/'"
        if len(prefix) > MAX_PREFIX or not _SUBDOMAIN.fullmatch(prefix):
            return (
                f"label key prefix {prefix[:80]!r} is not a DNS subdomain (lowercase alphanumeric characters, "
                f"'-' and '.', at most {MAX_PREFIX})"
            )
    if not name:
        return f"label key {key[:80]!r} has an empty name"
    if len(name) > MAX_NAME:
        return f"label key name {name[:80]!r} is {len(name)} characters; at most {MAX_NAME}"
    if not _NAME.fullmatch(name):
        return f"label key name {name[:80]!r} must consist of {_CHARSET}"
    return None


def value_problem(value: str) -> str | None:
    """Why `value` is not a label value (empty, or at most 63 of the name's characters)."""
    if len(value) > MAX_VALUE:
        return f"label value {value[:80]!r} is {len(value)} characters; at most {MAX_VALUE}"
    if value and not _NAME.fullmatch(value):
        return f"label value {value[:80]!r} must be empty or consist of {_CHARSET}"
    return None
