"""Offline verification of Kubernetes ServiceAccount tokens: key sources and the verifier."""

from .binding import BindingCheck
from .errors import BindingRefusal, KeySourceError, VerificationError
from .identity import Identity, ObjectRef
from .keys import KeySet, VerifyingKey, parse_jwks
from .sources import InClusterKeySource, KeySource, OIDCKeySource, RemoteKeySource, StaticKeySource
from .verify import Verifier

__all__ = [
    "BindingCheck",
    "BindingRefusal",
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
