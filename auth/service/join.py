"""The join decision, apart from HTTP: request shape, join token, ServiceAccount token, allow
rules, role, certificate. Every attempt ends in one reason code, counted and logged once (a join
cancelled before it ended, at shutdown, has no outcome and is neither)."""

from __future__ import annotations

import datetime
import logging
import os
import time
from collections.abc import Callable, Mapping
from typing import Any, Final, NamedTuple

from metrics import Metrics
from metrics.metrics import UNKNOWN_TOKEN
from verifier import Identity, VerificationError, Verifier
from verifier.errors import BindingRefusal, Reason
from verifier.texts import cut

from .allow import claims_reader, decide
from .auditlog import UNVERIFIED_REFUSALS, AuditLog
from .ca import CertificateAuthority, PublicKeyCache, PublicKeyError
from .clusterobjects import ClusterObjects
from .durations import rfc3339
from .errors import Code, JoinError, JoinReason
from .keyring import Keyring
from .registry import ClusterRegistry
from .tokens import KUBERNETES, ROLES, JoinToken

log = logging.getLogger("kubejoin.join")
_FIELDS: Final = {"token_name", "id_token", "role", "public_key", "host_name"}


class JoinRequest(NamedTuple):  # a tuple: cheap to build on the path of every attempt
    """The body of `POST /v1/join` after its shape was checked, before any policy."""

    token_name: str
    id_token: str
    role: str
    public_key_pem: str  # parsed only once the token is accepted: it is the costlier check
    host_name: str | None


def parse_join_request(body: object) -> JoinRequest:
    if not isinstance(body, dict):
        raise JoinError(JoinReason.BAD_REQUEST, "the body must be a JSON object")
    if not _FIELDS.issuperset(body):
        unknown = sorted(set(body) - _FIELDS)
        raise JoinError(
            JoinReason.BAD_REQUEST, f"unknown field {unknown[0][:40]!r}; expected {', '.join(sorted(_FIELDS))}"
        )
    values: dict[str, str] = {}
    for field in ("token_name", "id_token", "role", "public_key"):
        value = body.get(field)
        if not isinstance(value, str) or not value:
            raise JoinError(JoinReason.BAD_REQUEST, f"field {field!r} is required and must be a non-empty string")
        values[field] = value
    host_name = body.get("host_name")
    if host_name is not None and (not isinstance(host_name, str) or len(host_name) > 253):
        raise JoinError(JoinReason.BAD_REQUEST, "field 'host_name' must be a string of at most 253 characters")
    asked = values["role"].lower()
    role = "Auth" if asked == "auth" else ROLES.get(asked)
    if role is None:
        raise JoinError(JoinReason.BAD_REQUEST, f"field 'role' must be one of {', '.join(ROLES.values())}")
    return JoinRequest(values["token_name"], values["id_token"], role, values["public_key"], host_name)


def new_host_id() -> str:
    """A random (version 4) UUID as text, as str(uuid.uuid4()) writes it, for a third of the cost."""
    raw = bytearray(os.urandom(16))
    raw[6] = raw[6] & 0x0F | 0x40  # version 4
    raw[8] = raw[8] & 0x3F | 0x80  # RFC 4122 variant
    h = raw.hex()
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


class JoinService:
    """Decides joins, apart from HTTP: checks the request, finds the join token, verifies the
    ServiceAccount token with that token's verifier, applies the allow rules and role, and issues
    the certificate. Every attempt, refused or not, ends in exactly one reason code that is counted
    in the metrics and written as one line of the join log, so operators see each refusal once."""

    def __init__(
        self,
        *,
        cluster_name: str,
        ca: CertificateAuthority,
        keyring: Keyring,
        tokens: Callable[[], Mapping[str, JoinToken]],
        metrics: Metrics,
        audit: AuditLog,
        certificate_ttl: float,
        clock: Callable[[], float] = time.time,
        clusters: ClusterRegistry | None = None,
        objects: ClusterObjects,
    ) -> None:
        self.cluster_name = cluster_name
        self._objects = objects  # the watch caches that label and expression rules read
        self.clusters = clusters
        self.ca = ca
        self._ca_expires = ca.not_after.timestamp()  # read on every join: computed once
        self.keyring = keyring
        self._tokens = tokens
        self.metrics = metrics
        self.certificate_ttl = certificate_ttl
        self._clock = clock
        self.audit = audit
        self._public_keys = PublicKeyCache()

    async def join(self, body: object, remote: str | None) -> dict[str, Any]:
        """Answers one join request body, or raises JoinError. Counts and logs the attempt."""
        started = time.perf_counter()
        record: dict[str, Any] = {
            "event": "join",
            "token": None,
            "role": None,
            "service_account": None,
            "pod": None,
            "node": None,
            "issuer": None,
            "remote": remote,
        }
        token_label = UNKNOWN_TOKEN
        try:
            request = parse_join_request(body)
            record["role"] = request.role
            if request.host_name:
                record["host_name"] = request.host_name
            token = self._tokens().get(request.token_name)
            if token is not None and token.public:  # other join methods' names are secrets
                token_label = record["token"] = token.name
            response = await self._join(request, token, record)
        except JoinError as exc:
            record["message"] = exc.message
            self._finish(record, token_label, exc.code, started)
            raise
        except Exception:  # not BaseException: a cancelled join (shutdown) is no error of ours
            self._finish(record, token_label, JoinReason.INTERNAL_ERROR, started)
            raise
        # The certificate leaves only once its line is written: a crash after the answer must
        # not leave a certificate that the log does not show.
        seconds = time.perf_counter() - started
        record.update(result="success", reason="ok", duration_ms=round(seconds * 1000, 3))
        if self.audit.write(record) and await self.audit.sync():
            self.metrics.join_finished(token_label, "ok", seconds)
            return response
        self.metrics.join_finished(token_label, JoinReason.INTERNAL_ERROR, seconds)
        log.error("a join of %s was refused: its join log line could not be written", record["service_account"])
        raise JoinError(
            JoinReason.INTERNAL_ERROR, "the join log cannot be written, so no certificate is issued; retry later"
        )

    def _finish(self, record: dict[str, Any], token_label: str, reason: Code, started: float) -> None:
        """Counts a refused attempt and logs it (unless it is junk beyond its bound)."""
        seconds = time.perf_counter() - started
        self.metrics.join_finished(token_label, reason, seconds)
        if self.audit.admit(reason, unverified=reason in UNVERIFIED_REFUSALS):
            record.update(result="failure", reason=reason, duration_ms=round(seconds * 1000, 3))
            self.audit.write(record)

    def refuse(self, code: Code, message: str, remote: str | None) -> JoinError:
        """Counts and logs an attempt refused before its body could be read; returns the error."""
        self.metrics.join_finished(UNKNOWN_TOKEN, code, 0.0)
        if self.audit.admit(code, unverified=code in UNVERIFIED_REFUSALS):
            self.audit.write(
                {
                    "event": "join",
                    "token": None,
                    "result": "failure",
                    "reason": code,
                    "message": message,
                    "remote": remote,
                }
            )
        return JoinError(code, message)

    async def _join(self, request: JoinRequest, token: JoinToken | None, record: dict[str, Any]) -> dict[str, Any]:
        if token is None:
            raise JoinError(JoinReason.JOIN_TOKEN_NOT_FOUND, "no join token has that name")
        if token.join_method != KUBERNETES:
            raise JoinError(
                JoinReason.WRONG_JOIN_METHOD,
                f"that join token uses join method {cut(token.join_method, 40)}, not kubernetes",
            )
        now = self._clock()
        if token.expires is not None and now >= token.expires:
            raise JoinError(
                JoinReason.JOIN_TOKEN_EXPIRED, f"join token {cut(token.name)} expired at {rfc3339(token.expires)}"
            )
        identity = await self._verify(token, request.id_token, record)
        account = _describe(identity, record)
        if "cluster" not in record:
            record["cluster"] = self._cluster_of(token, identity.issuer)
        self._allow(token, identity, account, request.id_token, record)
        if request.role not in token.roles:
            granted = ", ".join(token.roles)
            raise JoinError(
                JoinReason.ROLE_NOT_ALLOWED,
                f"role {request.role} not granted by join token {cut(token.name)}, which grants {granted}",
            )
        response = self._issue(request, token, identity, now)
        record["host_id"] = response["host_id"]  # the certificate's CN: a log line for each certificate
        return response

    def _allow(self, token: JoinToken, identity: Identity, account: str, id_token: str, record: dict[str, Any]) -> None:
        """Applies the allow rules; a refusal says, rule by rule, the first condition that
        failed, in the answer and the join log (the caller proved who it is: the rules it
        fails are no secret to it, and no other token's name appears)."""
        rules = token.kubernetes
        assert rules is not None  # only kubernetes tokens get this far
        try:
            refusals = decide(
                rules.allow,
                identity.namespace,
                identity.service_account.name,
                claims=claims_reader(rules.allow, identity, id_token),
                objects=self._objects.lookup(rules, identity),
            )
        except VerificationError as exc:  # the watch cache cannot answer now: binding_unavailable
            raise JoinError(exc.code, exc.message) from None
        if refusals is not None:
            record["rules"] = refusals
            raise JoinError(
                JoinReason.NO_MATCHING_ALLOW_RULE,
                f"service account {account} is not allowed by join token {cut(token.name)}: {'; '.join(refusals)}",
            )

    async def _verify(self, token: JoinToken, id_token: str, record: dict[str, Any]) -> Identity:
        rules = token.kubernetes
        verifier: Verifier | None
        if rules is not None and rules.cluster is not None:
            record["cluster"] = rules.cluster
            cluster = self.clusters.get(rules.cluster) if self.clusters is not None else None
            if cluster is None:
                raise JoinError(
                    JoinReason.UNKNOWN_CLUSTER,
                    f"join token {cut(token.name)} names cluster {rules.cluster}, which is not registered",
                )
            verifier = cluster.join_verifier()
        else:
            verifier = self.keyring.verifier_for(token.name)
        if verifier is None:  # a token loaded a moment ago whose sources are being built
            raise JoinError(Reason.KEYS_UNAVAILABLE, f"keys for join token {cut(token.name)} are not loaded yet")
        try:
            identity = await verifier.verify(id_token)
        except VerificationError as exc:
            self.metrics.token_verified(exc.code)
            if isinstance(exc, BindingRefusal):  # a verified token its binding refused: audit who it was
                _describe(exc.identity, record)
            raise JoinError(exc.code, exc.message) from None
        self.metrics.token_verified("ok")
        return identity

    def _cluster_of(self, token: JoinToken, issuer: str) -> str | None:
        """The cluster a verified token came from, for the join log: the one the join token
        names, `local` for in_cluster, else the registered cluster with that issuer, if any."""
        if token.kubernetes is not None and token.kubernetes.type == "in_cluster":
            return "local"
        return self.clusters.cluster_of(issuer) if self.clusters is not None else None

    def _issue(self, request: JoinRequest, token: JoinToken, identity: Identity, now: float) -> dict[str, Any]:
        try:
            public_key = self._public_keys.prepare(request.public_key_pem)
        except PublicKeyError as exc:
            raise JoinError(JoinReason.BAD_REQUEST, str(exc)) from None
        if self._ca_expires <= now:  # it expired while serving: a leaf would be born dead
            raise JoinError(
                JoinReason.INTERNAL_ERROR, "kubejoin's CA has expired, so no certificate can be issued; renew the CA"
            )
        host_id = new_host_id()
        not_after = now + self.certificate_ttl
        if token.expires is not None:
            not_after = min(not_after, token.expires)
        issued = self.ca.issue(
            public_key,
            host_id=host_id,
            role=request.role,
            namespace=identity.namespace,
            service_account=identity.service_account.name,
            now=_utc(now),
            not_after=_utc(not_after),
        )
        self.metrics.certificate_issued(request.role)
        return {
            "host_id": host_id,
            "role": request.role,
            "identity": {
                "username": identity.username,
                "namespace": identity.namespace,
                "service_account": identity.service_account.to_json(),
                "pod": identity.pod.to_json(),
                "node": identity.node.to_json() if identity.node else None,
                "issuer": identity.issuer,
                "jti": identity.jti,
            },
            "certificate": issued.pem,
            "ca_certificates": [self.ca.certificate_pem],
            "expires_at": rfc3339(issued.not_after),
        }


def _describe(identity: Identity, record: dict[str, Any]) -> str:
    """Puts who a verified token speaks for into its join log record; returns namespace:name."""
    account = f"{identity.namespace}:{identity.service_account.name}"
    record.update(
        service_account=account,
        pod=identity.pod.name,
        issuer=identity.issuer,
        node=identity.node.name if identity.node else None,
    )
    return account


def _utc(seconds: float) -> datetime.datetime:
    return datetime.datetime.fromtimestamp(seconds, datetime.UTC)
