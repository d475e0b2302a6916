"""The files a registered cluster's kubeconfig names: its CA, client certificate and key, and
token file. The API client reads them once, when it connects, so they belong in the cluster's
fingerprint: a rotated token file or CA then replaces the cluster (new client, new watches), as a
changed kubeconfig does, instead of leaving it on a stale credential until a restart.

Read as kubernetes_asyncio reads them: only the current context's cluster and user; an inline
value (`certificate-authority-data`, `token`, ...) wins over the file; a relative name is
relative to the kubeconfig's directory. A kubeconfig this cannot follow (not YAML, no current
context) names no files here: the client reports it when it connects, as before."""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any, Final, NamedTuple

import yaml

# (section, file key, the inline key that wins over it, read only for an https server), as
# kubernetes_asyncio's FileOrData and _load_cluster_info read them
_FILE_KEYS: Final = (
    ("cluster", "certificate-authority", "certificate-authority-data", True),
    ("user", "client-certificate", "client-certificate-data", True),
    ("user", "client-key", "client-key-data", True),
    ("user", "tokenFile", "token", False),
)


class NamedFile(NamedTuple):
    """A file a kubeconfig names: where (`users[kubejoin].user.tokenFile`) and its absolute path."""

    key: str
    path: str


def named_files(kubeconfig: str, data: bytes) -> list[NamedFile]:
    """The files the current context of the kubeconfig at `kubeconfig` (its bytes `data`) reads."""
    try:
        document = yaml.safe_load(data)
    except yaml.YAMLError:
        return []
    if not isinstance(document, Mapping):
        return []
    context = _entry(document, "contexts", document.get("current-context"))
    if context is None:
        return []
    chosen = _fields(context[1], "context")
    cluster = _entry(document, "clusters", chosen.get("cluster"))
    https = cluster is not None and str(_fields(cluster[1], "cluster").get("server", "")).startswith("https")
    base = os.path.dirname(os.path.abspath(kubeconfig))
    found = []
    for section, file_key, inline_key, tls in _FILE_KEYS:
        entry = _entry(document, f"{section}s", chosen.get(section))
        if entry is None or (tls and not https):
            continue
        fields = _fields(entry[1], section)
        name = fields.get(file_key)
        if inline_key in fields or not isinstance(name, str) or not name:
            continue
        path = os.path.normpath(os.path.join(base, name))
        found.append(NamedFile(f"{section}s[{entry[0]}].{section}.{file_key}", path))
    return found


def _fields(entry: Mapping[str, Any], section: str) -> Mapping[str, Any]:
    fields = entry.get(section)
    return fields if isinstance(fields, Mapping) else {}


def _entry(document: Mapping[str, Any], listing: str, name: object) -> tuple[str, Mapping[str, Any]] | None:
    """The entry named `name` in the list `listing` (`clusters`, `users`, `contexts`)."""
    entries = document.get(listing)
    if not isinstance(name, str) or not isinstance(entries, list):
        return None
    for entry in entries:
        if isinstance(entry, Mapping) and entry.get("name") == name:
            return name, entry
    return None
