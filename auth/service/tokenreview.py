"""The TokenReview API, offline: `POST /apis/authentication.k8s.io/{v1,v1beta1}/tokenreviews`.

Anything that asks kube-apiserver "who holds this token?" (an in-house service, Vault's Kubernetes
auth, a webhook token authenticator) can ask kubejoin instead and get kube-apiserver's answer:
the same user info, groups, extra keys and audience semantics, from keys cached offline.

Order of concern: the caller first (so that a refused caller learns nothing about the reviewed
token), then the body, then the token. The answer is 201 with the TokenReview and its status, as
kube-apiserver gives it, except that `spec.token` is always "" (never echoed). Caller errors are
Kubernetes `Status` objects.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final, NamedTuple, Protocol

from aiohttp import web

from metrics import Metrics
from verifier import Identity, VerificationError, Verifier
from verifier.binding import BindingCheck
from verifier.jose import load_strict_json

from .allow import claims_reader, decide
from .auditlog import UNVERIFIED_REFUSALS, AuditLog
from .clusterobjects import ClusterObjects
from .config import TokenReview
from .errors import STATUS, JoinError
from .pipeline import RETRY_LATER, Pipeline, retry_after
from .tokens import KubernetesRules

API_GROUP: Final = "authentication.k8s.io"
ROUTE: Final = "/apis/authentication.k8s.io/{version:v1|v1beta1}/tokenreviews"
ROUTE_LABEL: Final = "/apis/authentication.k8s.io/{version}/tokenreviews"  # the route label of the HTTP metrics
REVIEW_PATHS: Final = tuple(f"/apis/authentication.k8s.io/{v}/tokenreviews" for v in ("v1", "v1beta1"))
# The owner of a static key set named by token_review.source: its issuer label is static:token_review.
SOURCE_OWNER: Final = "token_review"
# kube-apiserver's user info for ServiceAccount tokens (pkg/serviceaccount, k8s.io/apiserver user).
ALL_SERVICE_ACCOUNTS: Final = "system:serviceaccounts"
AUTHENTICATED: Final = "system:authenticated"
POD_NAME: Final = "authentication.kubernetes.io/pod-name"
POD_UID: Final = "authentication.kubernetes.io/pod-uid"
NODE_NAME: Final = "authentication.kubernetes.io/node-name"
NODE_UID: Final = "authentication.kubernetes.io/node-uid"
CREDENTIAL_ID: Final = "authentication.kubernetes.io/credential-id"
CLUSTER: Final = "kubejoin.dev/cluster"  # extra key of reviews at /clusters/NAME/...
_TOP_FIELDS: Final = frozenset({"apiVersion", "kind", "metadata", "spec", "status"})
_SPEC_FIELDS: Final = frozenset({"token", "audiences"})


# The Status `reason` of each HTTP status, as kube-apiserver names it (k8s.io/apimachinery metav1).
STATUS_REASONS: Final = {
    400: "BadRequest",
    401: "Unauthorized",
    403: "Forbidden",
    404: "NotFound",
    405: "MethodNotAllowed",
    408: "Timeout",
    413: "RequestEntityTooLarge",
    415: "UnsupportedMediaType",
    429: "TooManyRequests",
    500: "InternalError",
    503: "ServiceUnavailable",
}


def kube_status(code: int, message: str, headers: dict[str, str] | None = None) -> web.Response:
    """A Kubernetes `Status` answer, as kube-apiserver gives for a request it refuses."""
    status = {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": STATUS_REASONS[code],
        "code": code,
    }
    return web.json_response(status, status=code, headers=headers)


class CallerError(Exception):
    """The request itself is refused: answered as a Kubernetes Status object. `label` is the
    reason label of kubejoin_token_reviews_total."""

    def __init__(self, code: int, label: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.label = label
        self.message = message

    @classmethod
    def of(cls, error: JoinError) -> CallerError:
        """A refusal of the request pipeline (or of the caller's token), told as a Status."""
        return cls(STATUS[error.code], error.code, error.message)


def _bad_request(message: str) -> CallerError:
    return CallerError(400, "bad_request", message)


@dataclass(frozen=True)
class ReviewRequest:
    token: str
    audiences: tuple[str, ...] | None  # None: the review names none


def parse_review(raw: bytes, version: str) -> ReviewRequest:
    """The token and audiences of a TokenReview body, or CallerError (400)."""
    try:
        body = load_strict_json(raw)
    except ValueError as exc:  # UnicodeDecodeError and JSONDecodeError included
        raise _bad_request(f"the body is not a JSON TokenReview: {str(exc)[:120]}") from None
    if not isinstance(body, dict):
        raise _bad_request("the body must be a TokenReview object")
    unknown = sorted(set(body) - _TOP_FIELDS)
    if unknown:
        raise _bad_request(f"unknown field {unknown[0][:40]!r} in TokenReview")
    expected = f"{API_GROUP}/{version}"
    api_version = body.get("apiVersion")
    if api_version not in (None, "", expected):
        raise _bad_request(
            f"the API version in the data ({str(api_version)[:60]}) does not match the expected API version "
            f"({expected})"
        )
    if body.get("kind") not in (None, "", "TokenReview"):
        raise _bad_request(f"kind must be TokenReview, got {str(body.get('kind'))[:60]!r}")
    if body.get("metadata") is not None and not isinstance(body["metadata"], dict):
        raise _bad_request("metadata must be an object")
    spec = body.get("spec")
    if not isinstance(spec, dict):
        raise _bad_request("spec is required and must be an object")
    unknown = sorted(set(spec) - _SPEC_FIELDS)
    if unknown:
        raise _bad_request(f"unknown field 'spec.{unknown[0][:40]}'; expected spec.token and spec.audiences")
    token = spec.get("token")
    if not isinstance(token, str) or not token:
        raise _bad_request("spec.token is required for TokenReview")
    audiences = spec.get("audiences")
    if audiences is not None and (
        not isinstance(audiences, list) or not all(isinstance(a, str) and a for a in audiences)
    ):
        raise _bad_request("spec.audiences must be a list of non-empty strings")
    return ReviewRequest(token, tuple(dict.fromkeys(audiences)) if audiences else None)


def bearer_token(header: str | None) -> str | None:
    """The token of an `Authorization: Bearer TOKEN` header, as kube-apiserver reads it."""
    if not header:
        return None
    scheme, _, token = header.partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token or " " in token:
        return None
    return token


def user_info(identity: Identity) -> dict[str, Any]:
    """kube-apiserver's UserInfo for a ServiceAccount token bound to a pod."""
    extra = {POD_NAME: [identity.pod.name], POD_UID: [identity.pod.uid]}
    if identity.node is not None:
        extra[NODE_NAME] = [identity.node.name]
        extra[NODE_UID] = [identity.node.uid]
    if identity.jti:
        extra[CREDENTIAL_ID] = [f"JTI={identity.jti}"]
    return {
        "username": identity.username,
        "uid": identity.service_account.uid,
        "groups": [ALL_SERVICE_ACCOUNTS, f"{ALL_SERVICE_ACCOUNTS}:{identity.namespace}", AUTHENTICATED],
        "extra": extra,
    }


class Verifiers(Protocol):
    """Where a reviewer gets its verifiers: the Keyring (the token_review source) or one
    registered cluster (registry.Cluster, for /clusters/NAME/...)."""

    def verifier(
        self,
        rules: KubernetesRules,
        *,
        name: str,
        audiences: frozenset[str],
        max_ttl: float,
        keep: bool = False,
        bound: bool = True,
    ) -> Verifier: ...

    def binding_for(self, rules: KubernetesRules, name: str) -> BindingCheck | None: ...


class Verdict(NamedTuple):
    """A review's `status`, and its reason label: "ok" or the token's REASON."""

    status: dict[str, Any]
    reason: str


class TokenReviewer:
    """Answers TokenReviews against one key source, counted and logged once each."""

    def __init__(
        self,
        config: TokenReview,
        *,
        keyring: Verifiers,
        metrics: Metrics,
        pipeline: Pipeline,
        audit: AuditLog,
        clock: Callable[[], float] = time.time,
        cluster: str | None = None,
        objects: ClusterObjects,
    ) -> None:
        self.config = config
        self._objects = objects  # the watch caches that label and expression reviewer rules read
        self.cluster = cluster  # a registered cluster's reviewer: named in the answer and the log
        self.pipeline = pipeline
        self._keyring = keyring
        self._metrics = metrics
        self._audit = audit
        self._clock = clock
        self._default_audiences = frozenset(config.audiences)

    def start(self) -> None:
        """Opens the key source (so keys are fetched before the first review). In the event loop."""
        self._verifier(None)

    def _verifier(self, audiences: tuple[str, ...] | None, *, bound: bool = True) -> Verifier:
        wanted = frozenset(audiences) if audiences else self._default_audiences
        return self._keyring.verifier(
            self.config.source,
            name=SOURCE_OWNER,
            audiences=wanted,
            max_ttl=self.config.max_token_ttl,
            keep=wanted == self._default_audiences,  # caller-named sets must not push it out
            bound=bound,
        )

    async def check_caller(self, authorization: str | None, record: dict[str, Any]) -> None:
        """With `reviewers` set, the caller's own token must be valid and allowed. The refusal
        says nothing of why the caller's token failed (the audit log does): it is no oracle.

        The rule is applied to the verified claims before the live binding looks the caller's
        pod up: a caller the rule refuses costs no request to the API server."""
        reviewers = self.config.reviewers
        if reviewers is None:
            return
        token = bearer_token(authorization)
        if token is None:
            record["caller_error"] = "no bearer token"
            raise _unauthorized()
        try:
            caller = await self._verifier(None, bound=False).verify(token)  # keys, signature, claims
            if not any(rule.matches(caller.namespace, caller.service_account.name) for rule in reviewers):
                raise _forbidden(caller, record, None)
            binding = self._keyring.binding_for(self.config.source, SOURCE_OWNER)
            if binding is not None and not binding.check_cached(caller):
                await binding.check(caller)
            refusals = decide(
                reviewers,
                caller.namespace,
                caller.service_account.name,
                claims=claims_reader(reviewers, caller, token),
                objects=self._objects.lookup(self.config.source, caller),
            )
            if refusals is not None:  # a rule on labels or an expression said no
                raise _forbidden(caller, record, refusals)
        except VerificationError as exc:
            record["caller_error"] = f"{exc.code}: {exc.message}"
            if exc.code in RETRY_LATER:
                # An outage, not bad credentials: a 401 would tell Vault & co. their token is wrong.
                message = "the caller's token cannot be checked now (keys or cluster unreachable); retry shortly"
                raise CallerError.of(JoinError(exc.code, message)) from None
            raise _unauthorized() from None
        record["caller"] = caller.username

    async def judge(self, request: ReviewRequest, record: dict[str, Any]) -> Verdict:
        """Verifies the reviewed token; puts who it speaks for into the record."""
        try:
            identity = await self._verifier(request.audiences).verify(request.token)
        except VerificationError as exc:
            return Verdict({"authenticated": False, "user": {}, "error": f"{exc.code}: {exc.message}"}, exc.code)
        record.update(user=identity.username, pod=identity.pod.name, node=identity.node.name if identity.node else None)
        user = user_info(identity)
        if self.cluster is not None:
            user["extra"][CLUSTER] = [self.cluster]
        if identity.warn_after is not None and self._clock() > identity.warn_after:
            # kube-apiserver accepts these too, and counts them: kubelet failed to rotate the token.
            self._metrics.stale_tokens.inc()
            record["stale"] = True
        asked = frozenset(request.audiences) if request.audiences else self._default_audiences
        status = {
            "authenticated": True,
            "user": user,
            "audiences": [audience for audience in identity.audiences if audience in asked],
        }
        return Verdict(status, "ok")

    async def review(self, version: str, body: bytes, record: dict[str, Any], started: float) -> dict[str, Any]:
        """The answer (201) to the body of an admitted caller's review, counted and logged. Raises
        CallerError, not yet counted, for a body that is no TokenReview."""
        request = parse_review(body, version)
        verdict = await self.judge(request, record)
        # spec.token comes back empty, never echoed: the official Python client cannot read an
        # answer without it. spec.audiences comes back as kube-apiserver gives it: bounded by the body.
        spec: dict[str, Any] = {"token": ""}
        if request.audiences is not None:
            spec["audiences"] = list(request.audiences)
        if verdict.reason != "ok":
            record["message"] = verdict.status["error"]
        self.finish(record, verdict.reason, started)
        return {
            "kind": "TokenReview",
            "apiVersion": f"{API_GROUP}/{version}",
            "metadata": {"creationTimestamp": None},
            "spec": spec,
            "status": verdict.status,
        }

    def finish(self, record: dict[str, Any], reason: str, started: float) -> None:
        """Counts one review and logs it."""
        self._metrics.token_reviewed(reason)
        record.update(result="success" if reason == "ok" else "failure", reason=reason)
        record["duration_ms"] = round((time.perf_counter() - started) * 1000, 3)
        # What anybody can send for free (no valid caller token, or junk from an anonymous caller)
        # is bounded in the log like junk joins; an authenticated reviewer's lines never are.
        unverified = reason == "unauthorized" or (record["caller"] is None and reason in UNVERIFIED_REFUSALS)
        if self._audit.admit(reason, unverified=unverified):
            self._audit.write(record)


def review_record(version: str, remote: str | None) -> dict[str, Any]:
    """A review's line of the audit log, before anything is known."""
    return {
        "event": "token_review",
        "version": version,
        "user": None,
        "pod": None,
        "node": None,
        "caller": None,
        "remote": remote,
    }


def _unauthorized() -> CallerError:
    return CallerError(
        401,
        "unauthorized",
        "Unauthorized: a valid ServiceAccount token of an allowed reviewer is required (Authorization: Bearer)",
    )


class _Review:
    """One TokenReview request in the pipeline (pipeline.Exchange), in the order of concern above."""

    __slots__ = ("_record", "_request", "_reviewer", "_started", "_version")

    def __init__(self, reviewer: TokenReviewer, request: web.Request) -> None:
        self._reviewer = reviewer
        self._request = request
        self._started = time.perf_counter()
        self._version = request.match_info["version"]
        self._record = review_record(self._version, request.remote)
        if reviewer.cluster is not None:
            self._record["cluster"] = reviewer.cluster

    async def admit(self) -> web.Response | None:
        try:
            await self._reviewer.check_caller(self._request.headers.get("Authorization"), self._record)
        except CallerError as exc:
            return self._refused(exc)
        return None

    async def answer(self, body: bytes) -> web.Response:
        try:
            answer = await self._reviewer.review(self._version, body, self._record, self._started)
        except CallerError as exc:
            return self._refused(exc)
        return web.json_response(answer, status=201)

    def refuse(self, error: JoinError) -> web.Response:
        return self._refused(CallerError.of(error))

    def _refused(self, exc: CallerError) -> web.Response:
        self._record["message"] = exc.message
        self._reviewer.finish(self._record, exc.label, self._started)
        return kube_status(exc.code, exc.message, retry_after(exc.label))


def _forbidden(caller: Identity, record: dict[str, Any], refusals: list[str] | None) -> CallerError:
    """The 403 kube-apiserver gives a user RBAC refuses. Why the rules refused goes to the log
    only: the answer is no oracle for which labels a reviewer must have."""
    record["caller"] = caller.username
    if refusals:
        record["caller_error"] = "; ".join(refusals)
    return CallerError(
        403,
        "forbidden",
        f'tokenreviews.authentication.k8s.io is forbidden: User "{caller.username}" cannot create '
        'resource "tokenreviews" in API group "authentication.k8s.io" at the cluster scope: '
        "not in token_review.reviewers",
    )


REVIEWER: Final = web.AppKey("token_reviewer", TokenReviewer)


async def handle_token_review(request: web.Request) -> web.Response:
    """POST .../tokenreviews: JSON with or without a Content-Type, possibly chunked."""
    return await serve_review(request.app[REVIEWER], request)


async def serve_review(reviewer: TokenReviewer, request: web.Request) -> web.Response:
    """One review by `reviewer` through the request pipeline (the route has a `version`)."""
    return await reviewer.pipeline.run(request, _Review(reviewer, request))
