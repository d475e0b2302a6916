"""Registered clusters (CONTRACT.md "Many clusters"): the `clusters:` list of the config file and
one YAML file per cluster in `clusters_dir`, validated into frozen ClusterSpecs.

Every mistake is a ConfigError naming the file and the key path, e.g.
`clusters.d/eu.yaml: keys.type: expected one of oidc, api_server, static_jwks, got 'x'`. Each spec
carries a fingerprint of its content, the bytes of the files it names included, so a reload keeps
a cluster whose entry (and kubeconfig, the files that names, and key file) did not change, and
replaces one that did."""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from verifier import KeySourceError, parse_jwks
from verifier.sources import url_scheme_allowed

from .files import ConfigError, load_yaml, read_small_file
from .kubeconfigs import named_files

LOCAL: Final = "local"  # the cluster kubejoin runs in (in_cluster): never registered by name
KEY_TYPES: Final = ("oidc", "api_server", "static_jwks")
_DNS_LABEL: Final = re.compile(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?", re.ASCII)
_FIELDS: Final = frozenset({"name", "issuer", "keys", "kubeconfig", "binding", "audiences"})


@dataclass(frozen=True)
class ClusterSpec:
    """One registered cluster, validated; file names are absolute. `fingerprint` decides on a
    reload whether the cluster changed: equal fingerprints keep its key source and watch cache."""

    name: str  # a lowercase DNS label: shown in logs, metrics and /clusters/NAME
    issuer: str  # its tokens' `iss`, compared exactly
    keys: str  # one of KEY_TYPES
    # where it was written, "config.yaml: clusters[0]" or "clusters.d/eu.yaml": moving an entry
    # changes no cluster
    origin: str = field(compare=False)
    fingerprint: str
    jwks: str | None = None  # keys static_jwks: the JWKS document (inline, or read from jwks_file)
    kubeconfig: str | None = None
    insecure_allow_http_issuer: bool = False  # keys oidc: for local test issuers only
    watch: bool = False  # binding.mode watch: tokens with this issuer must pass its live binding
    nodes: bool = True  # binding.nodes
    audiences: tuple[str, ...] = ()  # this cluster's TokenReview default audiences


def check_cluster_label(name: object, where: str) -> str:
    """A cluster's name: a lowercase DNS label, not `local`; raises ConfigError naming `where`."""
    if not isinstance(name, str) or not _DNS_LABEL.fullmatch(name):
        raise ConfigError(f"{where}: expected a lowercase DNS label such as eu-west-1, got {str(name)[:80]!r}")
    if name == LOCAL:
        raise ConfigError(f"{where}: {LOCAL!r} is the cluster kubejoin runs in (in_cluster); choose another name")
    return name


def _mapping(value: object, where: str) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise ConfigError(f"{where}: expected a mapping, got {type(value).__name__}")
    return value


def _only(value: Mapping[str, Any], known: set[str] | frozenset[str], where: str) -> None:
    unknown = sorted(str(key) for key in value if key not in known)
    if unknown:
        raise ConfigError(f"{where}{unknown[0]}: unknown key")


def _file(value: object, where: str, base_dir: Path, reads: Reads | None) -> tuple[str, bytes]:
    if not isinstance(value, str) or not value.strip():
        raise ConfigError(f"{where}: expected a file name, got {value!r}")
    path = str(base_dir / value)
    try:
        data = read_small_file(path)
    except ConfigError as exc:
        raise ConfigError(f"{where}: {exc}") from None
    _record(reads, path, data)
    return path, data


def parse_cluster(value: object, where: str, base_dir: Path, reads: Reads | None = None) -> ClusterSpec:
    """One cluster entry; `where` prefixes every key path in errors (`config.yaml: clusters[2].`
    or `clusters.d/eu.yaml: `)."""
    entry = _mapping(value, where.rstrip(":. "))
    _only(entry, _FIELDS, where)
    digest = hashlib.sha256(json.dumps(entry, sort_keys=True, default=str).encode())
    name = check_cluster_label(entry.get("name"), f"{where}name")
    issuer = entry.get("issuer")
    if not isinstance(issuer, str) or not issuer.strip():
        raise ConfigError(f"{where}issuer: required: the `iss` of this cluster's tokens")
    keys = _mapping(entry.get("keys") or {}, f"{where}keys")
    _only(keys, {"type", "jwks", "jwks_file", "insecure_allow_http_issuer"}, f"{where}keys.")
    kind = keys.get("type") or "oidc"
    if kind not in KEY_TYPES:
        raise ConfigError(f"{where}keys.type: expected one of {', '.join(KEY_TYPES)}, got {str(kind)[:40]!r}")
    allow_http = keys.get("insecure_allow_http_issuer", False)
    if not isinstance(allow_http, bool) or (allow_http and kind != "oidc"):
        raise ConfigError(f"{where}keys.insecure_allow_http_issuer: true or false, and only with type oidc")
    if kind == "oidc" and not url_scheme_allowed(issuer, allow_http=allow_http):
        raise ConfigError(f"{where}issuer: keys oidc need an https:// issuer (discovery is fetched there)")
    for key in ("jwks", "jwks_file"):
        if key in keys and kind != "static_jwks":
            raise ConfigError(f"{where}keys.{key}: only with type static_jwks, not {kind}")
    jwks = _jwks(keys, f"{where}keys.", base_dir, digest, reads) if kind == "static_jwks" else None
    kubeconfig = None
    if entry.get("kubeconfig") is not None:
        kubeconfig, data = _file(entry["kubeconfig"], f"{where}kubeconfig", base_dir, reads)
        digest.update(data)
        for named in named_files(kubeconfig, data):  # its CA, client certificate, token file
            _, content = _file(named.path, f"{where}kubeconfig: {named.key}", base_dir, reads)
            digest.update(f"\0{named.key}\0{hashlib.sha256(content).hexdigest()}".encode())
    if kind == "api_server" and kubeconfig is None:
        raise ConfigError(f"{where}kubeconfig: required with keys api_server (keys come through the API server)")
    binding = _mapping(entry.get("binding") or {}, f"{where}binding")
    _only(binding, {"mode", "nodes"}, f"{where}binding.")
    mode = binding.get("mode", "off")
    mode = "off" if mode is False else mode  # YAML 1.1 reads an unquoted `off` as false
    if mode not in ("off", "watch"):
        raise ConfigError(f"{where}binding.mode: expected watch or off, got {str(mode)[:40]!r}")
    if mode == "watch" and kubeconfig is None:
        raise ConfigError(f"{where}kubeconfig: required with binding.mode watch (the watch reads the API server)")
    nodes = binding.get("nodes", True)
    if not isinstance(nodes, bool):
        raise ConfigError(f"{where}binding.nodes: expected true or false, got {nodes!r}")
    audiences = entry.get("audiences") or []
    if not isinstance(audiences, list) or not all(isinstance(a, str) and a for a in audiences):
        raise ConfigError(f"{where}audiences: expected a list of audiences (strings)")
    return ClusterSpec(
        name=name,
        issuer=issuer,
        keys=kind,
        origin=where.rstrip(":. "),
        fingerprint=digest.hexdigest(),
        jwks=jwks,
        kubeconfig=kubeconfig,
        insecure_allow_http_issuer=allow_http,
        watch=mode == "watch",
        nodes=nodes,
        audiences=tuple(dict.fromkeys(audiences)),
    )


def _jwks(keys: Mapping[str, Any], where: str, base_dir: Path, digest: Any, reads: Reads | None) -> str:
    if ("jwks" in keys) == ("jwks_file" in keys):
        raise ConfigError(f"{where.rstrip('.')}: static_jwks needs jwks (the document) or jwks_file, one of them")
    if "jwks_file" in keys:
        _, data = _file(keys["jwks_file"], f"{where}jwks_file", base_dir, reads)
        digest.update(data)
        text, field = data.decode("utf-8", "replace"), f"{where}jwks_file"
    else:
        document = keys["jwks"]
        text = json.dumps(document) if isinstance(document, Mapping) else document
        field = f"{where}jwks"
        if not isinstance(text, str):
            raise ConfigError(f"{field}: expected a JWKS document, got {type(document).__name__}")
    try:
        if not parse_jwks(text).keys:
            raise KeySourceError("no usable signing key (RSA >= 2048 bits, EC P-256/384/521)")
    except KeySourceError as exc:
        raise ConfigError(f"{field}: {exc}") from None
    return text


def parse_clusters(
    document: Mapping[str, Any], source: str, base_dir: Path, reads: Reads | None = None
) -> tuple[tuple[ClusterSpec, ...], str | None]:
    """The clusters of a parsed config file (`clusters` and the files of `clusters_dir`) and the
    directory's absolute name. Names and issuers are unique across both. `reads` records what was
    read (see `unchanged`)."""
    listed = document.get("clusters") or []
    if not isinstance(listed, list):
        raise ConfigError(f"{source}: clusters: expected a list of clusters")
    specs = [parse_cluster(entry, f"{source}: clusters[{i}].", base_dir, reads) for i, entry in enumerate(listed)]
    directory = document.get("clusters_dir")
    if directory is not None:
        if not isinstance(directory, str) or not directory.strip():
            raise ConfigError(f"{source}: clusters_dir: expected a directory name, got {directory!r}")
        directory = str(base_dir / directory)
        specs += _read_dir(directory, f"{source}: clusters_dir", reads)
    seen: dict[str, ClusterSpec] = {}
    issuers: dict[str, ClusterSpec] = {}
    for spec in specs:
        if spec.name in seen:
            twice = seen[spec.name].origin
            raise ConfigError(f"{key_path(spec.origin, 'name')}: cluster {spec.name!r} is also registered in {twice}")
        if spec.issuer in issuers:
            twice = issuers[spec.issuer].name
            raise ConfigError(
                f"{key_path(spec.origin, 'issuer')}: the issuer of cluster {twice!r} too: tokens name one"
            )
        seen[spec.name] = issuers[spec.issuer] = spec
    return tuple(specs), directory


def key_path(origin: str, key: str) -> str:
    """A key of the entry at `origin`: `config.yaml: clusters[0].name` or `clusters.d/eu.yaml: name`."""
    return f"{origin}.{key}" if origin.endswith("]") else f"{origin}: {key}"


def _read_dir(directory: str, where: str, reads: Reads | None) -> list[ClusterSpec]:
    try:
        names = _listing(directory)
    except OSError as exc:
        raise ConfigError(f"{where}: cannot read {directory} ({exc.strerror or exc})") from None
    if reads is not None:
        reads[directory + os.sep] = "\0".join(names)
    specs = []
    for name in names:
        path = os.path.join(directory, name)
        data = read_small_file(path)
        _record(reads, path, data)
        document = load_yaml(_utf8(data, path), path)
        specs.append(parse_cluster(document, f"{path}: ", Path(directory), reads))
    return specs


def load_clusters(config_file: str, reads: Reads | None = None) -> tuple[ClusterSpec, ...]:
    """Re-reads only the clusters of a config file (a reload: other keys take a restart)."""
    data = read_small_file(config_file)
    _record(reads, config_file, data)
    top = _mapping(load_yaml(_utf8(data, config_file), config_file), config_file)
    return parse_clusters(top, config_file, Path(config_file).resolve().parent, reads)[0]


# What a read of the clusters depended on: each file's SHA-256 and each directory's listing (key
# ending in a separator). Polling compares these instead of parsing everything again: re-parsing
# fifty clusters' YAML and key sets twice a second cost 55 ms a poll; this costs a few file reads.
Reads = dict[str, str]


def _record(reads: Reads | None, path: str, data: bytes) -> None:
    if reads is not None:
        reads[path] = hashlib.sha256(data).hexdigest()


def _listing(directory: str) -> list[str]:
    return sorted(n for n in os.listdir(directory) if n.endswith(".yaml") and not n.startswith("."))


def _utf8(data: bytes, path: str) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not UTF-8") from None


def unchanged(reads: Reads) -> bool:
    """Whether every file and directory a read recorded is as it was then (the same bytes)."""
    for path, recorded in reads.items():
        try:
            now = (
                "\0".join(_listing(path))
                if path.endswith(os.sep)
                else hashlib.sha256(read_small_file(path)).hexdigest()
            )
        except (OSError, ConfigError):
            return False
        if now != recorded:
            return False
    return True
