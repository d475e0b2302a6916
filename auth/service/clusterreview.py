"""TokenReview for each registered cluster: `POST /clusters/NAME/apis/authentication.k8s.io/
{v1,v1beta1}/tokenreviews`, so a consumer's "API server URL" is `https://kubejoin/clusters/NAME`.

A review there uses that cluster's keys, binding and audiences (else token_review.audiences) and
the token_review section's reviewers and lifetime cap; a token of another cluster is
`authenticated: false`. An unregistered NAME is a 404 Status, as kube-apiserver answers a path it
does not serve."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Final

from aiohttp import web

from metrics import Metrics

from .auditlog import AuditLog
from .clusterobjects import ClusterObjects
from .config import Config, TokenReview
from .pipeline import Pipeline
from .registry import Cluster, ClusterRegistry
from .tokenreview import TokenReviewer, kube_status, serve_review
from .tokens import KubernetesRules

PREFIX: Final = "/clusters/"
ROUTE: Final = "/clusters/{cluster}/apis/authentication.k8s.io/{version:v1|v1beta1}/tokenreviews"
ROUTE_LABEL: Final = "/clusters/{cluster}/apis/authentication.k8s.io/{version}/tokenreviews"


class ClusterReviews:
    """The reviewers of the registered clusters, one per running cluster: a replaced cluster
    gets a new one (its verifiers die with the old cluster object)."""

    def __init__(
        self,
        config: Config,
        registry: ClusterRegistry,
        *,
        metrics: Metrics,
        pipeline: Pipeline,
        audit: AuditLog,
        clock: Callable[[], float] = time.time,
        objects: ClusterObjects,
    ) -> None:
        assert config.token_review is not None
        self._objects = objects
        self._section: TokenReview = config.token_review
        self._ttl_default = config.verification.max_token_ttl
        self._registry = registry
        self._metrics = metrics
        self._pipeline = pipeline
        self._audit = audit
        self._clock = clock
        # By name, with the cluster object it was made for: a reviewer holds its cluster (and
        # so its caches), so one of a removed or replaced cluster is dropped at the next review.
        self._reviewers: dict[str, tuple[Cluster, TokenReviewer]] = {}
        self._generation = registry.generation

    def reviewer(self, name: str) -> TokenReviewer | None:
        if self._generation != self._registry.generation:  # the set changed: forget the gone
            self._generation = self._registry.generation
            self._reviewers = {n: made for n, made in self._reviewers.items() if self._registry.get(n) is made[0]}
        cluster = self._registry.get(name)
        if cluster is None:
            return None
        made = self._reviewers.get(name)
        reviewer = made[1] if made is not None and made[0] is cluster else None
        if reviewer is None:
            section = self._section
            # 0 (no lifetime cap) was allowed for the in_cluster source with its binding only
            ttl = section.max_token_ttl if section.max_token_ttl or cluster.spec.watch else self._ttl_default
            own = TokenReview(
                source=KubernetesRules("cluster", (), cluster=name),
                audiences=cluster.spec.audiences or section.audiences,
                max_token_ttl=ttl,
                reviewers=section.reviewers,
            )
            reviewer = TokenReviewer(
                own,
                keyring=cluster,
                metrics=self._metrics,
                pipeline=self._pipeline,
                audit=self._audit,
                clock=self._clock,
                cluster=name,
                objects=self._objects,
            )
            self._reviewers[name] = (cluster, reviewer)
        return reviewer


CLUSTER_REVIEWS: Final = web.AppKey("cluster_reviews", ClusterReviews)


async def handle_cluster_review(request: web.Request) -> web.Response:
    name = request.match_info["cluster"]
    reviewer = request.app[CLUSTER_REVIEWS].reviewer(name)
    if reviewer is None:
        return kube_status(404, f"the server could not find the requested resource (cluster {name[:63]!r})")
    return await serve_review(reviewer, request)
