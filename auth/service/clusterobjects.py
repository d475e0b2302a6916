"""Which live binding answers an allow rule's questions about a verified token's pod, namespace
and node (issue 19), and what those rules need of the bindings: at load, a binding at all (a rule
that reads the cluster with no watch behind it is refused, naming the rule), and the label keys
each watch cache must keep.

The binding follows the token, as for the binding check itself: a token whose `iss` is a
registered cluster's is judged by that cluster's watch; an `in_cluster` token by the local one."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Final

from verifier import Identity
from verifier.errors import BindingRefusal, Reason
from verifier.k8s.binding import LiveBinding
from verifier.labels import AllKeys, LabelKind, ObjectView, WantedKeys

from .allow import rules_reading_cluster
from .allow import wanted as allowed_keys
from .clusters import ClusterSpec
from .config import Config
from .files import ConfigError
from .registry import ClusterRegistry
from .tokens import AllowRule, JoinToken, KubernetesRules

log = logging.getLogger("kubejoin.rules")
Found = tuple[ObjectView | None, ObjectView | None, ObjectView | None]
# What a node's own kubelet may label its Node with under the NodeRestriction admission plugin
# (kubernetes.io/docs/reference/access-authn-authz/admission-controllers/#noderestriction): any
# key outside the kubernetes.io and k8s.io domains, these keys, and these domains.
_KUBELET_KEYS: Final = frozenset(
    {
        "kubernetes.io/hostname",
        "kubernetes.io/arch",
        "kubernetes.io/os",
        "beta.kubernetes.io/instance-type",
        "beta.kubernetes.io/arch",
        "beta.kubernetes.io/os",
        "node.kubernetes.io/instance-type",
        "failure-domain.beta.kubernetes.io/region",
        "failure-domain.beta.kubernetes.io/zone",
        "topology.kubernetes.io/region",
        "topology.kubernetes.io/zone",
    }
)
_KUBELET_DOMAINS: Final = ("kubelet.kubernetes.io", "node.kubernetes.io")


class ClusterObjects:
    """The local binding (in_cluster) and the registered clusters', seen as one."""

    def __init__(self, config: Config, local: LiveBinding | None, registry: ClusterRegistry) -> None:
        self._config = config
        self._local = local
        self._registry = registry
        self.wanted = WantedKeys()

    def binding_for(self, rules: KubernetesRules | None, identity: Identity) -> LiveBinding | None:
        found = self._registry.binding.by_issuer.get(identity.issuer)
        if found is None and rules is not None and rules.type == "in_cluster":
            return self._local
        return found

    def lookup(
        self, rules: KubernetesRules | None, identity: Identity
    ) -> Callable[[frozenset[LabelKind], WantedKeys], Found]:
        """What allow.decide calls, at most once, for the objects its rules read: memory only."""

        def objects(kinds: frozenset[LabelKind], keys: WantedKeys) -> Found:
            binding = self.binding_for(rules, identity)
            if binding is None:
                # The file was checked at load; the cluster's watch went since (a clusters reload).
                raise BindingRefusal(
                    Reason.BINDING_UNAVAILABLE,
                    "the allow rules read the cluster's objects, but the cluster this token comes from has no "
                    "live binding (binding.mode: watch) now",
                    identity,
                )
            return binding.objects(identity, kinds, keys)

        return objects

    # -- at load ---------------------------------------------------------------------------
    def check_tokens(self, tokens: Mapping[str, JoinToken], source: str) -> None:
        """check_token_rules against the clusters in force (TokenStore's validation)."""
        check_token_rules(tokens, self._config, self._registry.specs, source)

    def check_reviewers(self, reviewers: Sequence[AllowRule] | None, source: KubernetesRules) -> None:
        """The same check for token_review.reviewers, whose tokens come from the review source."""
        for number, rule in enumerate(reviewers or (), start=1):
            if rule.conditions is not None and rule.conditions.reads:
                missing = _missing(self._config, source, rule.conditions.reads, self._registry.specs)
                if missing:
                    raise ConfigError(
                        f"token_review.reviewers[{number - 1}] (rule {number}) reads "
                        f"{_kinds(rule.conditions.reads)} of the cluster, {missing}"
                    )

    def want(self, tokens: Mapping[str, JoinToken], reviewers: Iterable[AllowRule] = ()) -> None:
        """Tells every binding which label keys the rules now read. One set for all clusters:
        keys are few, and a cluster added later starts with it (ClusterRegistry.wanted)."""
        wanted = allowed_keys(tokens.values(), reviewers)
        for kind, keys in zip(wanted._fields, wanted, strict=True):
            if isinstance(keys, AllKeys) and not isinstance(getattr(self.wanted, kind), AllKeys):
                # bench/labels.py: every label of 100,000 pods is 85 MB; two named keys are 5 MB
                log.warning(
                    "an allow rule's expression reads %s labels as a whole (a key that is not a literal, a "
                    "comprehension, size()): the watch cache now keeps every %s label; name the keys to keep "
                    "only those",
                    kind,
                    kind,
                )
        self.wanted = wanted
        self._registry.wanted = wanted
        if self._local is not None:
            self._local.want(self.wanted)
        for cluster in self._registry.clusters.values():
            if cluster.binding is not None:
                cluster.binding.want(self.wanted)


def check_token_rules(
    tokens: Mapping[str, JoinToken], config: Config, specs: Mapping[str, ClusterSpec], source: str
) -> None:
    """Raises ConfigError naming the first rule that reads the cluster's objects where no binding
    (or no node watch) can answer it; warns of node rules a kubelet could satisfy on its own."""
    for name, number, kinds in rules_reading_cluster(tokens):
        rules = tokens[name].kubernetes
        assert rules is not None  # only kubernetes tokens have rules
        missing = _missing(config, rules, kinds, specs)
        if missing:
            raise ConfigError(
                f"{source}: join token {name}: spec.kubernetes.allow[{number - 1}] (rule {number}) reads "
                f"{_kinds(kinds)} of the cluster, {missing}"
            )
    for name, number, keys in _self_labelled_node_rules(tokens):
        log.warning(
            "%s: join token %s, rule %d: node label %s can be set by the node's own kubelet, so a compromised "
            "node could label itself into this rule; prefer a key under node-restriction.kubernetes.io/",
            source,
            name,
            number,
            keys,
        )


def _missing(
    config: Config, rules: KubernetesRules, kinds: frozenset[LabelKind], specs: Mapping[str, ClusterSpec]
) -> str | None:
    """Why no binding can answer these kinds for tokens of this source; None if one can."""
    if rules.cluster is not None:
        spec = specs.get(rules.cluster)
        if spec is None:  # refused per join as unknown_cluster; `tokens check --config` warns
            return None
        return _spec_missing(spec, kinds, f"cluster {spec.name}")
    if rules.type == "in_cluster":
        if config.binding.mode != "watch" or config.in_cluster is None:
            return "which needs the local cluster's live binding (binding.mode: watch)"
        if "node" in kinds and not config.binding.nodes:
            return "which needs node watching (binding.nodes: true)"
        return None
    issuer = rules.oidc_issuer or rules.static_issuer
    for spec in specs.values():
        if spec.issuer == issuer:
            return _spec_missing(spec, kinds, f"cluster {spec.name} (its issuer)")
    return (
        f"which needs a live binding: with type {rules.type}, only a token whose issuer is a registered "
        "cluster's with binding watch can be judged; name the cluster instead (cluster: NAME)"
    )


def _self_labelled_node_rules(tokens: Mapping[str, JoinToken]) -> list[tuple[str, int, str]]:
    """(token, rule number, keys) of node rules that a kubelet could satisfy on its own."""
    found = []
    for token in tokens.values():
        for number, rule in enumerate(token.kubernetes.allow if token.kubernetes else (), start=1):
            conditions = rule.conditions
            if conditions is None:
                continue
            keys: set[str] = set(conditions.node_labels)
            read = conditions.expression.label_keys.get("node") if conditions.expression else None
            if isinstance(read, AllKeys):
                found.append((token.name, number, "(any, read by the expression)"))
                continue
            keys |= read or frozenset()
            settable = sorted(key for key in keys if kubelet_may_set(key))
            if settable:
                found.append((token.name, number, ", ".join(settable)))
    return found


def kubelet_may_set(key: str) -> bool:
    """Whether a node's kubelet may set this label on its own Node under NodeRestriction."""
    if key in _KUBELET_KEYS:
        return True
    domain = key.rpartition("/")[0]
    if domain in _KUBELET_DOMAINS or any(domain.endswith("." + d) for d in _KUBELET_DOMAINS):
        return True
    protected = ("kubernetes.io", "k8s.io")
    return not any(domain == d or domain.endswith("." + d) for d in protected)


def _spec_missing(spec: ClusterSpec, kinds: frozenset[LabelKind], what: str) -> str | None:
    if not spec.watch:
        return f"which needs the live binding of {what} (binding.mode: watch in its registration)"
    if "node" in kinds and not spec.nodes:
        return f"which needs node watching in {what} (binding.nodes: true)"
    return None


def _kinds(kinds: frozenset[LabelKind]) -> str:
    return ", ".join(f"{kind}s" for kind in sorted(kinds))
