"""The Kubernetes room of the verifier: the API client (keys from the API server, GET, list,
watch), the watch-fed cache and the live binding check. The token core (jose, claims, keys,
sources, verify) never imports this package (an import-linter contract says so): `kubejoin verify`
and a join token with static keys load no Kubernetes client code."""

from .api import KubeAPI, KubeKeySource
from .binding import BindingStats, LiveBinding

__all__ = ["BindingStats", "KubeAPI", "KubeKeySource", "LiveBinding"]
