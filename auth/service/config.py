"""The service's YAML config file, validated at start. Every mistake is one ConfigError that
names the key path, e.g. `verification.leeway: expected a duration such as 90s, 30m or 1h`."""

from __future__ import annotations

import dataclasses
import math
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from verifier.sources import url_scheme_allowed

from .clusters import ClusterSpec, parse_clusters
from .durations import parse_duration
from .files import ConfigError, load_yaml, read_text_file
from .tokens import AllowRule, KubernetesRules, parse_allow_rules, parse_key_source

DEFAULT_LISTEN: Final = "127.0.0.1:3025"
MAX_WORKERS: Final = 256
# A lowercase DNS name: labels of letters, digits and inner hyphens, at most 253 characters. It
# is the SPIFFE trust domain of every certificate (spiffe://<cluster_name>/...).
_LABEL: Final = r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?"
_DNS_NAME: Final = re.compile(rf"(?=.{{1,253}}\Z){_LABEL}(\.{_LABEL})*", re.ASCII)
SERVICE_ACCOUNT_DIR: Final = "/var/run/secrets/kubernetes.io/serviceaccount"
# kube-apiserver sends each watch a bookmark about once a minute; a watch idle timeout must leave
# room for one to be late, or quiet watches would be cut and relisted for nothing.
MIN_WATCH_IDLE_TIMEOUT: Final = 90.0


@dataclass(frozen=True)
class Verification:
    """Token checks beyond the signature: clock leeway for exp/nbf/iat and the longest token
    lifetime (exp - iat) accepted, in seconds."""

    leeway: float = 10.0
    max_token_ttl: float = 1800.0


@dataclass(frozen=True)
class InCluster:
    """Where kubejoin reaches its cluster's API server (the `in_cluster` key source and the live
    binding): the API server, its CA and the pod's own token (re-read for every request, since
    kubelet rotates it), or a kubeconfig (server, CA and credentials from that file) when kubejoin
    runs outside the cluster."""

    api_server: str
    ca_file: str
    token_file: str
    kubeconfig: str | None = None


@dataclass(frozen=True)
class Binding:
    """Live binding: with mode "watch", tokens verified against this cluster's keys must also name
    a service account, pod (and node) that exist with the token's uids (CONTRACT.md)."""

    mode: str = "off"  # "off" or "watch"
    nodes: bool = True
    # seconds a watch may deliver nothing, not even a bookmark, before it is treated as broken
    watch_idle_timeout: float = 150.0


@dataclass(frozen=True)
class Limits:
    """Bounds that keep one replica answering under overload and against slow or silent clients."""

    max_in_flight: int = 1024  # joins served at once; more get 429 with Retry-After
    request_timeout: float = 10.0  # a client must send its whole request within this
    idle_timeout: float = 15.0  # an idle or silent connection is closed after this
    max_pending_per_address: int = 32  # requests from one address whose body is still arriving


@dataclass(frozen=True)
class Tls:
    """HTTPS for the join endpoint: a certificate from files, or one that kubejoin issues itself
    from its own CA at start for `dns_names` (agents then trust the CA's ca.pem)."""

    cert_file: str | None = None
    key_file: str | None = None
    dns_names: tuple[str, ...] = ()


@dataclass(frozen=True)
class TokenReview:
    """The offline TokenReview endpoint (CONTRACT.md "TokenReview, offline")."""

    source: KubernetesRules  # the key source, as a join token's spec.kubernetes names it (no allow rules)
    audiences: tuple[str, ...]  # accepted when a review names none
    max_token_ttl: float  # 0: no limit (only with binding.mode watch and an in_cluster source)
    reviewers: tuple[AllowRule, ...] | None  # None: anyone may ask, with no token of their own


@dataclass(frozen=True)
class Config:
    """The validated service configuration; file names are absolute (resolved against the config
    file's directory), durations are seconds."""

    cluster_name: str
    tokens_file: str
    ca_cert_file: str
    ca_key_file: str
    listen: str = DEFAULT_LISTEN
    metrics_listen: str | None = None
    certificate_ttl: float = 3600.0
    verification: Verification = Verification()
    in_cluster: InCluster | None = None
    limits: Limits = Limits()
    tls: Tls | None = None
    binding: Binding = Binding()
    workers: int = 1  # processes serving the same listeners; `auto` resolved to usable CPUs
    token_review: TokenReview | None = None
    clusters: tuple[ClusterSpec, ...] = ()  # registered clusters (`clusters` and `clusters_dir`)
    clusters_dir: str | None = None
    config_file: str | None = None  # re-read for the clusters on SIGHUP or a change


def usable_cpus() -> int:
    """CPUs this process may use: its affinity set, capped by a cgroup v2 CPU quota (a container's
    `resources.limits.cpu`), which os.cpu_count() does not see."""
    count = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    try:
        with open("/sys/fs/cgroup/cpu.max", encoding="ascii") as handle:
            quota, period = handle.read().split()[:2]
        if quota != "max":
            count = min(count, max(1, -(-int(quota) // int(period))))
    except (OSError, ValueError):
        pass
    return max(1, count)


def parse_workers(value: object, where: str = "workers") -> int:
    """A worker count: an integer from 1 to MAX_WORKERS, or `auto` for one per usable CPU."""
    if value == "auto":
        return usable_cpus()
    if isinstance(value, str) and value.isdigit():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_WORKERS:
        raise ConfigError(f"{where}: expected auto or an integer from 1 to {MAX_WORKERS}, got {value!r}")
    return value


def check_cluster_name(name: str) -> None:
    """Raises ConfigError unless name is a lowercase DNS name such as example.teleport.sh."""
    if not _DNS_NAME.fullmatch(name):
        raise ConfigError(f"cluster_name: expected a lowercase DNS name such as example.teleport.sh, got {name[:80]!r}")


def default_api_server() -> str:
    host = os.environ.get("KUBERNETES_SERVICE_HOST", "kubernetes.default.svc")
    port = os.environ.get("KUBERNETES_SERVICE_PORT", "443")
    if ":" in host:  # IPv6 address
        host = f"[{host}]"
    return f"https://{host}" if port == "443" else f"https://{host}:{port}"


class _Reader:
    """Reads one mapping, recording which keys were used so leftovers can be named."""

    def __init__(self, value: object, path: str) -> None:
        if not isinstance(value, Mapping):
            raise ConfigError(f"{path or 'config'}: expected a mapping, got {type(value).__name__}")
        self.value: Mapping[str, Any] = value
        self.path = path
        self.used: set[str] = set()

    def where(self, key: str) -> str:
        return f"{self.path}.{key}" if self.path else key

    def get(self, key: str, default: Any = None, *, required: bool = False) -> Any:
        self.used.add(key)
        if key not in self.value or self.value[key] is None:
            if required:
                raise ConfigError(f"{self.where(key)}: required")
            return default
        return self.value[key]

    def string(self, key: str, default: str | None = None, *, required: bool = False) -> Any:
        value = self.get(key, default, required=required)
        if value is not None and (not isinstance(value, str) or not value.strip()):
            raise ConfigError(f"{self.where(key)}: expected a non-empty string, got {value!r}")
        return value

    def duration(self, key: str, default: float) -> float:
        value = self.get(key)
        if value is None:
            return default
        try:
            seconds = parse_duration(value)
        except ValueError as exc:
            raise ConfigError(f"{self.where(key)}: {exc}") from None
        if seconds <= 0:
            raise ConfigError(f"{self.where(key)}: must be positive")
        return seconds

    def integer(self, key: str, default: int, *, minimum: int = 1) -> int:
        value = self.get(key, default)
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            raise ConfigError(f"{self.where(key)}: expected an integer of at least {minimum}, got {value!r}")
        return value

    def finish(self) -> None:
        unknown = sorted(str(key) for key in self.value if key not in self.used)
        if unknown:
            raise ConfigError(f"{self.where(unknown[0])}: unknown key")


def split_host_port(listen: str) -> tuple[str, int]:
    """HOST:PORT (an IPv6 host in brackets) as (host without brackets, port); ValueError if not."""
    host, sep, port = listen.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"expected HOST:PORT, got {listen!r}")
    return host.strip("[]"), int(port)


def _host_port(reader: _Reader, key: str, default: str | None) -> str | None:
    value = reader.string(key, default)
    if value is None:
        return None
    try:
        split_host_port(value)
    except ValueError as exc:
        raise ConfigError(f"{reader.where(key)}: {exc}") from None
    return str(value)


def _tls(top: _Reader, base_dir: Path) -> Tls | None:
    if top.get("tls") is None:
        return None
    reader = _Reader(top.get("tls"), "tls")
    cert, key = reader.string("cert_file"), reader.string("key_file")
    names = reader.get("dns_names", [])
    if not isinstance(names, list) or not all(isinstance(n, str) and n for n in names):
        raise ConfigError("tls.dns_names: expected a list of DNS names")
    reader.finish()
    if bool(cert) != bool(key):
        raise ConfigError("tls: cert_file and key_file go together")
    if bool(cert) == bool(names):
        raise ConfigError("tls: give either cert_file and key_file, or dns_names (a certificate from kubejoin's CA)")
    return Tls(str(base_dir / cert) if cert else None, str(base_dir / key) if key else None, tuple(names))


def _binding(top: _Reader) -> Binding:
    reader = _Reader(top.get("binding", {}), "binding")
    mode = reader.get("mode", "off")
    if mode is False:  # YAML 1.1 reads an unquoted `off` as false
        mode = "off"
    if mode not in ("off", "watch"):
        raise ConfigError(f"binding.mode: expected watch or off, got {mode!r}")
    nodes = reader.get("nodes", True)
    if not isinstance(nodes, bool):
        raise ConfigError(f"binding.nodes: expected true or false, got {nodes!r}")
    idle = reader.get("watch_idle_timeout", Binding.watch_idle_timeout)
    if isinstance(idle, str):  # also a duration, as every other time in this file
        try:
            idle = parse_duration(idle)
        except ValueError as exc:
            raise ConfigError(f"binding.watch_idle_timeout: {exc}") from None
    if isinstance(idle, bool) or not isinstance(idle, int | float) or not MIN_WATCH_IDLE_TIMEOUT <= idle < math.inf:
        raise ConfigError(
            f"binding.watch_idle_timeout: expected seconds, at least {MIN_WATCH_IDLE_TIMEOUT:g} (the API server "
            f"sends a bookmark about once a minute), got {idle!r}"
        )
    reader.finish()
    return Binding(mode, nodes, float(idle))


def _token_review(top: _Reader, default_ttl: float, binding: Binding, cluster_name: str) -> TokenReview | None:
    if top.get("token_review") is None:
        return None

    reader = _Reader(top.get("token_review"), "token_review")
    source = _Reader(reader.get("source", {}), "token_review.source")
    for key in ("type", "static_jwks", "oidc"):
        source.get(key)
    source.finish()
    rules = parse_key_source(source.value, "token_review.source")
    audiences = reader.get("audiences", required=True)
    if not isinstance(audiences, list) or not audiences or not all(isinstance(a, str) and a for a in audiences):
        raise ConfigError("token_review.audiences: expected a non-empty list of audiences (strings)")
    if cluster_name in audiences:
        raise ConfigError(
            f"token_review.audiences: {cluster_name!r} is cluster_name, the audience of join tokens: a token "
            "meant for joins would then pass reviews (and serve as a reviewer's credential); use another audience"
        )
    ttl = reader.get("max_token_ttl")
    if ttl in (0, "0", "0s"):
        if binding.mode != "watch" or rules.type != "in_cluster":
            raise ConfigError(
                "token_review.max_token_ttl: 0 (no limit) is allowed only with binding.mode: watch and an "
                "in_cluster source: without the live binding check, a leaked year-long token stays valid for a year"
            )
        max_ttl = 0.0
    else:
        max_ttl = reader.duration("max_token_ttl", default_ttl)
    reviewers = reader.get("reviewers")
    if "reviewers" in reader.value and reviewers is None:
        raise ConfigError("token_review.reviewers: expected a non-empty list of rules; omit it to let anyone ask")
    reader.finish()
    return TokenReview(
        source=rules,
        audiences=tuple(dict.fromkeys(audiences)),
        max_token_ttl=max_ttl,
        reviewers=None if reviewers is None else parse_allow_rules(reviewers, "token_review.reviewers"),
    )


def parse_config(document: object, base_dir: Path, source: str = "config") -> Config:
    """Builds a Config from parsed YAML; relative file names are relative to base_dir; `source`
    names the file in errors about its clusters."""
    top = _Reader(document, "")
    clusters, clusters_dir = parse_clusters(top.value, source, base_dir)
    for key in ("clusters", "clusters_dir"):  # read by parse_clusters: not unknown keys
        top.get(key)

    def path_of(reader: _Reader, key: str, default: str) -> str:
        return str(base_dir / reader.string(key, default))

    cluster_name = top.string("cluster_name", required=True)
    check_cluster_name(cluster_name)
    tokens_file = path_of(top, "tokens_file", "tokens.yaml")
    ca = _Reader(top.get("ca", {}), "ca")
    ca_cert, ca_key = path_of(ca, "cert_file", "ca.pem"), path_of(ca, "key_file", "ca-key.pem")
    ca.finish()
    verification = _Reader(top.get("verification", {}), "verification")
    checks = Verification(verification.duration("leeway", 10.0), verification.duration("max_token_ttl", 1800.0))
    verification.finish()
    cluster = _Reader(top.get("in_cluster", {}), "in_cluster")
    kubeconfig = cluster.string("kubeconfig")
    if kubeconfig is not None:
        given = [key for key in ("api_server", "ca_file", "token_file") if cluster.get(key) is not None]
        if given:
            raise ConfigError(f"in_cluster.{given[0]}: not with in_cluster.kubeconfig, which names the server itself")
    in_cluster = InCluster(
        api_server=cluster.string("api_server", default_api_server()),
        ca_file=cluster.string("ca_file", f"{SERVICE_ACCOUNT_DIR}/ca.crt"),
        token_file=cluster.string("token_file", f"{SERVICE_ACCOUNT_DIR}/token"),
        kubeconfig=str(base_dir / kubeconfig) if kubeconfig is not None else None,
    )
    if not url_scheme_allowed(in_cluster.api_server, allow_http=False):
        raise ConfigError(f"in_cluster.api_server: must be https://, got {in_cluster.api_server!r}")
    cluster.finish()
    limits_reader = _Reader(top.get("limits", {}), "limits")
    limits = Limits(
        limits_reader.integer("max_in_flight", 1024),
        limits_reader.duration("request_timeout", 10.0),
        limits_reader.duration("idle_timeout", 15.0),
        limits_reader.integer("max_pending_per_address", 32),
    )
    limits_reader.finish()
    binding = _binding(top)
    config = Config(
        tls=_tls(top, base_dir),
        cluster_name=cluster_name,
        tokens_file=tokens_file,
        ca_cert_file=ca_cert,
        ca_key_file=ca_key,
        listen=_host_port(top, "listen", DEFAULT_LISTEN) or DEFAULT_LISTEN,
        metrics_listen=_host_port(top, "metrics_listen", None),
        certificate_ttl=top.duration("certificate_ttl", 3600.0),
        verification=checks,
        in_cluster=in_cluster,
        limits=limits,
        binding=binding,
        workers=parse_workers(top.get("workers", 1)),
        token_review=_token_review(top, checks.max_token_ttl, binding, cluster_name),
        clusters=clusters,
        clusters_dir=clusters_dir,
    )
    top.finish()
    return config


def load_config(path: str) -> Config:
    text = read_text_file(path)
    try:
        config = parse_config(load_yaml(text, path), Path(path).resolve().parent, path)
        return dataclasses.replace(config, config_file=str(Path(path).resolve()))
    except ConfigError as exc:
        message = str(exc)
        raise ConfigError(message if message.startswith(path) else f"{path}: {message}") from None
