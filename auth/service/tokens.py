"""Join tokens in Teleport's format (`kind: token`, `version: v2`), validated as strictly as
Teleport validates them. A token written for Teleport loads here unchanged; a mistake is a
ConfigError naming the field path, e.g. `spec.kubernetes.allow[0].service_account: ...`."""

from __future__ import annotations

import dataclasses
import datetime
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final

import yaml

from verifier import KeySourceError, parse_jwks
from verifier.claims import NAME_SYNTAX, NAMESPACE_SYNTAX
from verifier.sources import url_scheme_allowed

from .files import ConfigError, StrictLoader, read_text_file, yaml_error
from .label_syntax import key_problem, value_problem
from .rules import ExpressionError, RuleConditions, compile_expression

ROLES: Final = {
    r.lower(): r for r in ("Node", "Proxy", "Kube", "App", "Db", "WindowsDesktop", "Discovery", "Instance", "Bot")
}
KUBERNETES: Final = "kubernetes"
TYPES: Final = ("in_cluster", "static_jwks", "oidc")
# Fields of Teleport's token spec: blocks of other join methods are accepted (the token is then
# refused for joins with wrong_join_method); anything else is a typo and an error.
_SPEC_KEYS: Final = frozenset(
    {
        "roles",
        "join_method",
        "kubernetes",
        "allow",
        "bot_name",
        "aws_iid_ttl",
        "suggested_labels",
        "suggested_agent_matcher_labels",
        "github",
        "circleci",
        "gcp",
        "spacelift",
        "gitlab",
        "azure",
        "tpm",
        "terraform_cloud",
        "bitbucket",
        "oracle",
        "azure_devops",
        "bound_keypair",
        "env0",
        "integration",
    }
)
_METADATA_KEYS: Final = frozenset({"name", "expires", "labels", "description", "revision", "namespace"})
_NAMESPACE_GLOB: Final = re.compile(r"[-a-z0-9*?]{1,63}")
_ACCOUNT_GLOB: Final = re.compile(r"[-a-z0-9.*?]{1,253}")
_CLUSTER_NAME: Final = re.compile(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?", re.ASCII)
_ACCOUNT_KEYS: Final = frozenset({"service_account", "service_account_namespace", "service_account_name"})
LABEL_FIELDS: Final = ("pod_labels", "namespace_labels", "node_labels")
CONDITION_FIELDS: Final = frozenset({*LABEL_FIELDS, "expression"})


class TokenError(ConfigError):
    """A field of a join token is invalid."""

    def __init__(self, path: str, message: str) -> None:
        super().__init__(f"{path}: {message}")


@dataclass(frozen=True)
class AllowRule:
    """Allows service accounts by exact `namespace:name` or by a glob pair (`*` and `?`), and,
    with `conditions`, only pods whose labels (or whose namespace's or node's) and whose claims
    satisfy them: auth.service.allow.decide judges those; matches() reads the account only."""

    namespace: str
    name: str
    glob: bool = False
    pattern: re.Pattern[str] | None = field(default=None, init=False, repr=False, compare=False)
    # hash=False: its mappings are read-only proxies, which do not hash; equality still reads it.
    conditions: RuleConditions | None = field(default=None, hash=False)

    def __post_init__(self) -> None:
        if self.glob:  # compiled once, when the token is loaded
            object.__setattr__(self, "pattern", _glob_regex(self.namespace, self.name))

    def matches(self, namespace: str, name: str) -> bool:
        if self.pattern is None:
            return namespace == self.namespace and name == self.name
        return self.pattern.fullmatch(f"{namespace}:{name}") is not None

    def __str__(self) -> str:
        return f"{self.namespace}:{self.name}"


def _glob_regex(namespace: str, name: str) -> re.Pattern[str]:
    def part(glob: str) -> str:
        return "".join("[^:]*" if c == "*" else "[^:]" if c == "?" else re.escape(c) for c in glob)

    return re.compile(part(namespace) + ":" + part(name))


@dataclass(frozen=True)
class KubernetesRules:
    """The `spec.kubernetes` block of a join token: which key source verifies the ServiceAccount
    token, and which service accounts may join."""

    type: str
    allow: tuple[AllowRule, ...]
    static_jwks: str | None = None
    static_issuer: str | None = None
    oidc_issuer: str | None = None
    insecure_allow_http_issuer: bool = False
    cluster: str | None = None  # type "cluster": a registered cluster's name (kubejoin's extension)


@dataclass(frozen=True)
class JoinToken:
    """One Teleport `kind: token, version: v2` join token, validated; only `join_method:
    kubernetes` tokens carry rules (others load, and their joins are refused as wrong_join_method)."""

    name: str
    roles: tuple[str, ...]
    join_method: str
    expires: float | None  # unix seconds
    kubernetes: KubernetesRules | None

    @property
    def public(self) -> bool:
        """Whether the name may be shown: in Teleport the name of a token of join method
        `token` (and others) is the secret itself, so only kubernetes tokens' names appear in
        logs, metrics, messages and /readyz."""
        return self.join_method == KUBERNETES

    def allows(self, namespace: str, name: str) -> bool:
        """Whether a rule with no conditions allows the service account: for callers that know no
        cluster. A rule with conditions never allows here (failing closed: labels it cannot read
        must not let everyone in); a join judges every rule with auth.service.allow.decide."""
        return self.kubernetes is not None and any(
            rule.conditions is None and rule.matches(namespace, name) for rule in self.kubernetes.allow
        )

    def names_account(self, namespace: str, name: str) -> bool:
        """Whether some rule's service account part matches, whatever its conditions."""
        return self.kubernetes is not None and any(rule.matches(namespace, name) for rule in self.kubernetes.allow)


def _mapping(value: object, path: str) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise TokenError(path, f"expected a mapping, got {type(value).__name__}")
    return value


def _no_unknown(value: Mapping[str, Any], known: frozenset[str] | set[str], path: str) -> None:
    for key in value:
        if key not in known:
            raise TokenError(f"{path}.{key}" if path else str(key), "unknown field")


def _text(value: object, path: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise TokenError(path, f"expected a non-empty string, got {value!r}")
    return value


def _expires(value: object) -> float | None:
    if value is None:
        return None
    if isinstance(value, str):
        try:
            value = datetime.datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            raise TokenError("metadata.expires", f"expected an RFC 3339 time, got {value!r}") from None
    if not isinstance(value, datetime.datetime):
        raise TokenError("metadata.expires", f"expected an RFC 3339 time, got {value!r}")
    if value.tzinfo is None:
        value = value.replace(tzinfo=datetime.UTC)
    return value.timestamp()


def _roles(value: object) -> tuple[str, ...]:
    if not isinstance(value, list) or not value:
        raise TokenError("spec.roles", "expected a non-empty list of roles")
    roles: list[str] = []
    for index, role in enumerate(value):
        if isinstance(role, str) and role.lower() == "auth":
            raise TokenError(f"spec.roles[{index}]", "the Auth role can never be granted by a join token")
        canonical = ROLES.get(role.lower()) if isinstance(role, str) else None
        if canonical is None:
            raise TokenError(
                f"spec.roles[{index}]", f"unknown role {role!r}; expected one of {', '.join(ROLES.values())}"
            )
        if canonical not in roles:
            roles.append(canonical)
    return tuple(roles)


def _allow_rule(value: object, path: str, number: int) -> AllowRule:
    rule = _mapping(value, path)
    _no_unknown(rule, _ACCOUNT_KEYS | CONDITION_FIELDS, path)
    account = _account(rule, path)
    judged = _conditions(rule, path, number)
    return account if judged is None else dataclasses.replace(account, conditions=judged)


def _account(rule: Mapping[str, Any], path: str) -> AllowRule:
    if "service_account" in rule:
        if "service_account_namespace" in rule or "service_account_name" in rule:
            raise TokenError(
                path, "use service_account, or the pair service_account_namespace and service_account_name, not both"
            )
        account = _text(rule["service_account"], f"{path}.service_account")
        namespace, sep, name = account.partition(":")
        if not sep or ":" in name or not NAMESPACE_SYNTAX.fullmatch(namespace) or not NAME_SYNTAX.fullmatch(name):
            raise TokenError(f"{path}.service_account", f'expected "namespace:name", got {account!r}')
        return AllowRule(namespace, name)
    if "service_account_namespace" not in rule or "service_account_name" not in rule:
        raise TokenError(path, "needs service_account, or both service_account_namespace and service_account_name")
    namespace = _text(rule["service_account_namespace"], f"{path}.service_account_namespace")
    name = _text(rule["service_account_name"], f"{path}.service_account_name")
    if not _NAMESPACE_GLOB.fullmatch(namespace):
        raise TokenError(f"{path}.service_account_namespace", f"not a namespace or glob: {namespace!r}")
    if not _ACCOUNT_GLOB.fullmatch(name):
        raise TokenError(f"{path}.service_account_name", f"not a service account name or glob: {name!r}")
    return AllowRule(namespace, name, glob=True)


def _conditions(rule: Mapping[str, Any], path: str, number: int) -> RuleConditions | None:
    """The labels and expression of a rule, or None when it has none. Errors say `rule N` (from
    1) as well as the path: the file's author counts rules, not indexes."""
    if not CONDITION_FIELDS.intersection(rule):
        return None
    labels = {key: _labels(rule[key], f"{path}.{key}", number) for key in LABEL_FIELDS if key in rule}
    expression = None
    if "expression" in rule:
        text = rule["expression"]
        if not isinstance(text, str) or not text.strip():
            raise TokenError(f"{path}.expression", f"rule {number}: expected a CEL expression as a string")
        try:
            expression = compile_expression(text)
        except ExpressionError as exc:
            raise TokenError(f"{path}.expression", f"rule {number}: {exc}") from None
    return RuleConditions(**labels, expression=expression)


def _labels(value: object, path: str, number: int) -> dict[str, str]:
    if not isinstance(value, Mapping) or not value:
        raise TokenError(path, f"rule {number}: expected a mapping of label keys to values, e.g. {{tier: prod}}")
    labels: dict[str, str] = {}
    for key, wanted in value.items():
        if not isinstance(key, str):
            raise TokenError(path, f"rule {number}: label key {_yaml_read(key)}, not a string; {_QUOTE}")
        if problem := key_problem(key):
            raise TokenError(path, f"rule {number}: {problem}")
        if not isinstance(wanted, str):
            raise TokenError(
                f"{path}.{key}", f"rule {number}: label value {_yaml_read(wanted)}, not a string; {_QUOTE}"
            )
        if problem := value_problem(wanted):
            raise TokenError(f"{path}.{key}", f"rule {number}: {problem}")
        labels[key] = wanted
    return labels


# YAML reads unquoted true, yes, 1, 1.10 or an empty value as other types: an easy mistake, since
# Kubernetes manifests quote such label values for the same reason.
_QUOTE: Final = 'quote it as written, e.g. "true", "1.10" or ""'


def _yaml_read(value: object) -> str:
    """How YAML read an unquoted scalar, e.g. `true is a boolean to YAML`."""
    if value is None:
        return "is empty (null to YAML)"
    if isinstance(value, bool | int | float):
        return f"{json.dumps(value)} is a {'boolean' if isinstance(value, bool) else 'number'} to YAML"
    return f"{str(value)[:40]} is a {type(value).__name__} to YAML"


def _issuer_url(value: object, path: str, *, allow_http: bool) -> str:
    url = _text(value, path)
    if url_scheme_allowed(url, allow_http=allow_http):
        return url
    raise TokenError(path, f"expected an https:// URL (http:// only with insecure_allow_http_issuer), got {url!r}")


def parse_allow_rules(value: object, path: str) -> tuple[AllowRule, ...]:
    """A non-empty list of allow rules, as join tokens write them, labels and expressions included
    (also `token_review.reviewers`, which the TokenReview endpoint judges the same way)."""
    if not isinstance(value, list) or not value:
        raise TokenError(path, "expected a non-empty list of rules")
    return tuple(_allow_rule(rule, f"{path}[{i}]", i + 1) for i, rule in enumerate(value))


def parse_key_source(spec: Mapping[str, Any], path: str) -> KubernetesRules:
    """The key source fields of a `spec.kubernetes` block (`type`, `static_jwks`, `oidc`), with no
    allow rules; `path` names the block in errors. Also read by `token_review.source`."""
    kind = spec.get("type") or "in_cluster"
    if kind not in TYPES:
        raise TokenError(f"{path}.type", f"expected one of {', '.join(TYPES)}, got {kind!r}")
    for owner in ("static_jwks", "oidc"):
        if owner in spec and kind != owner:
            raise TokenError(f"{path}.{owner}", f"only allowed with type {owner}, not {kind}")
    if kind == "static_jwks":
        static = _mapping(spec.get("static_jwks"), f"{path}.static_jwks")
        _no_unknown(static, {"jwks", "issuer"}, f"{path}.static_jwks")
        jwks = static.get("jwks")
        if isinstance(jwks, Mapping):  # accept the document inline as YAML too
            jwks = json.dumps(jwks)
        jwks = _text(jwks, f"{path}.static_jwks.jwks")
        try:
            if not parse_jwks(jwks).keys:
                raise KeySourceError("no usable signing key (RSA >= 2048 bits, EC P-256/384/521)")
        except KeySourceError as exc:
            raise TokenError(f"{path}.static_jwks.jwks", str(exc)) from None
        issuer = static.get("issuer")
        return KubernetesRules(
            kind,
            (),
            static_jwks=jwks,
            static_issuer=_text(issuer, f"{path}.static_jwks.issuer") if issuer else None,
        )
    if kind == "oidc":
        oidc = _mapping(spec.get("oidc"), f"{path}.oidc")
        _no_unknown(oidc, {"issuer", "insecure_allow_http_issuer"}, f"{path}.oidc")
        allow_http = oidc.get("insecure_allow_http_issuer", False)
        if not isinstance(allow_http, bool):
            raise TokenError(f"{path}.oidc.insecure_allow_http_issuer", "expected true or false")
        issuer = _issuer_url(oidc.get("issuer"), f"{path}.oidc.issuer", allow_http=allow_http)
        return KubernetesRules(kind, (), oidc_issuer=issuer, insecure_allow_http_issuer=allow_http)
    return KubernetesRules(kind, ())


def _kubernetes(value: object) -> KubernetesRules:
    spec = _mapping(value, "spec.kubernetes")
    _no_unknown(spec, {"type", "allow", "static_jwks", "oidc", "cluster"}, "spec.kubernetes")
    source = _cluster(spec) if "cluster" in spec else parse_key_source(spec, "spec.kubernetes")
    return dataclasses.replace(source, allow=parse_allow_rules(spec.get("allow"), "spec.kubernetes.allow"))


def _cluster(spec: Mapping[str, Any]) -> KubernetesRules:
    """`cluster: NAME` names a registered cluster, whose keys verify the token; `local` is the
    cluster kubejoin runs in (type in_cluster). Whether NAME is registered is decided per join."""
    for key in ("type", "static_jwks", "oidc"):
        if key in spec:
            raise TokenError(f"spec.kubernetes.{key}", "not with cluster, which names the keys itself")
    name = spec["cluster"]
    if not isinstance(name, str) or not _CLUSTER_NAME.fullmatch(name):
        raise TokenError("spec.kubernetes.cluster", f"expected a registered cluster's name, got {str(name)[:80]!r}")
    return KubernetesRules("in_cluster", ()) if name == "local" else KubernetesRules("cluster", (), cluster=name)


def parse_token(document: object) -> JoinToken:
    top = _mapping(document, "token")
    _no_unknown(top, {"kind", "version", "metadata", "spec"}, "")
    if top.get("kind") != "token":
        raise TokenError("kind", f"expected token, got {top.get('kind')!r}")
    if top.get("version") != "v2":
        raise TokenError("version", f"expected v2, got {top.get('version')!r}")
    metadata = _mapping(top.get("metadata"), "metadata")
    _no_unknown(metadata, _METADATA_KEYS, "metadata")
    name = metadata.get("name")
    if not isinstance(name, str) or not name.strip():
        raise TokenError("metadata.name", "expected a non-empty string")  # never echoed: it may be a secret
    spec = _mapping(top.get("spec"), "spec")
    _no_unknown(spec, _SPEC_KEYS, "spec")
    roles = _roles(spec.get("roles"))
    method = _text(spec.get("join_method"), "spec.join_method")
    kubernetes = None
    if method == KUBERNETES:
        if "kubernetes" not in spec:
            raise TokenError("spec.kubernetes", "required with join_method kubernetes")
        kubernetes = _kubernetes(spec["kubernetes"])
        if "Bot" in roles and not spec.get("bot_name"):
            raise TokenError("spec.bot_name", "required when roles include Bot")
    return JoinToken(name, roles, method, _expires(metadata.get("expires")), kubernetes)


def parse_tokens(text: str, source: str) -> dict[str, JoinToken]:
    """Parses a YAML stream of join tokens; names must be unique."""
    tokens: dict[str, JoinToken] = {}
    try:
        documents = list(yaml.load_all(text, Loader=StrictLoader))
    except yaml.YAMLError as exc:
        raise yaml_error(exc, source) from None
    for index, document in enumerate(d for d in documents if d is not None):
        label = f"{source}: token {index + 1}"
        if _is_kubernetes(document):
            label += f" ({str(document['metadata'].get('name'))[:64]})"
        try:
            token = parse_token(document)
        except ConfigError as exc:
            raise ConfigError(f"{label}: {exc}") from None
        if token.name in tokens:
            shown = f" {token.name!r}" if token.public and tokens[token.name].public else ""
            raise ConfigError(f"{label}: metadata.name: duplicate token name{shown}")
        tokens[token.name] = token
    return tokens


def _is_kubernetes(document: object) -> bool:
    """Whether a document that may not parse is a kubernetes token, whose name may be shown."""
    if not isinstance(document, Mapping):
        return False
    spec, metadata = document.get("spec"), document.get("metadata")
    return isinstance(spec, Mapping) and spec.get("join_method") == KUBERNETES and isinstance(metadata, Mapping)


def public_names(tokens: Mapping[str, JoinToken]) -> list[str]:
    """The names that may be shown (kubernetes tokens), sorted."""
    return sorted(name for name, token in tokens.items() if token.public)


def load_tokens(path: str) -> dict[str, JoinToken]:
    return parse_tokens(read_text_file(path), path)
