"""Offline verification of Kubernetes ServiceAccount tokens: key sources and the verifier."""

from .claims import ObjectRef
from .errors import KeySourceError, VerificationError
from .keys import KeySet, VerifyingKey, parse_jwks
from .sources import InClusterKeySource, KeySource, OIDCKeySource, RemoteKeySource, StaticKeySource
from .verify import Identity, Verifier

__all__ = [
    "Identity",
    "InClusterKeySource",
    "KeySet",
    "KeySource",
    "KeySourceError",
    "OIDCKeySource",
    "ObjectRef",
    "RemoteKeySource",
    "StaticKeySource",
    "VerificationError",
    "Verifier",
    "VerifyingKey",
    "parse_jwks",
]
