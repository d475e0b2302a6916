"""The seam between the token core and the objects a token names: the core owns this interface,
the Kubernetes room (verifier.k8s.binding.LiveBinding) implements it, and tests can too."""

from __future__ import annotations

from typing import Protocol

from .identity import Identity


class BindingCheck(Protocol):
    """Checks that the objects a verified token names are still there. The verifier calls
    `check_cached` first; only when that returns False does it await `check`. Both raise
    `errors.BindingRefusal` (with the identity) for a token the binding refuses."""

    def check_cached(self, identity: Identity) -> bool:
        """True when memory says the binding holds; False when the API server must be asked.
        Raises BindingRefusal when memory already says no. Never does I/O."""

    async def check(self, identity: Identity) -> None:
        """The whole check, asking the API server where needed; raises BindingRefusal."""
