"""Who a verified token speaks for: the records every other part of the verifier passes around.

This module imports nothing of kubejoin, so that errors, claims, the verifier and the Kubernetes
room can all name these types without an import cycle."""

from __future__ import annotations

from typing import Any, NamedTuple

# A uid as the binding's cache holds it (claims.uid_key): a 128-bit integer for the API server's
# canonical form, the string itself otherwise.
UidKey = int | str


class ObjectRef(NamedTuple):
    """A Kubernetes object a token is bound to, by name and uid (and the uid's `uid_key`)."""

    name: str
    uid: str
    key: UidKey

    def to_json(self) -> dict[str, str]:
        return {"name": self.name, "uid": self.uid}


class Identity(NamedTuple):
    """Who a verified token speaks for. Immutable (a tuple: cheap to build on the hot path). Not
    what the verified-token cache keeps: the collector tracks a NamedTuple however plain its
    fields, so the cache holds strings (verify._VerifiedTokens)."""

    namespace: str
    service_account: ObjectRef
    pod: ObjectRef
    node: ObjectRef | None
    issuer: str
    audiences: tuple[str, ...]
    jti: str | None
    issued_at: int
    expires_at: int
    not_before: int | None
    warn_after: int | None = None  # kubernetes.io.warnafter: kubelet should have rotated it by then

    @property
    def username(self) -> str:
        return f"system:serviceaccount:{self.namespace}:{self.service_account.name}"

    def to_json(self) -> dict[str, Any]:
        return {
            "username": self.username,
            "namespace": self.namespace,
            "service_account": self.service_account.to_json(),
            "pod": self.pod.to_json(),
            "node": self.node.to_json() if self.node else None,
            "issuer": self.issuer,
            "audiences": list(self.audiences),
            "jti": self.jti,
            "issued_at": self.issued_at,
            "expires_at": self.expires_at,
        }
