"""Shared test parts: a controllable clock, the shared fixtures, and a real local issuer on HTTP."""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import NoReturn

import hypothesis
import pytest
from aiohttp.test_utils import TestServer

from auth.devtools.issuer import IssuerKey, LocalIssuer

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = ROOT.parent / "shared" / "fixtures"
if not FIXTURES.is_dir():  # a checkout without shared/ beside it uses the copies in tests/data
    FIXTURES = ROOT / "tests" / "data"
KUBE_FIXTURES = FIXTURES / "kubernetes-apiserver"
EKS_FIXTURES = FIXTURES / "eks-real"
AUDIENCE = "kubejoin.example"

# Differential tests (Hypothesis): in CI the same examples every run and no example database, so
# a red build is reproducible from its log; locally new examples each run, failures remembered.
hypothesis.settings.register_profile("ci", derandomize=True, database=None, print_blob=True)
hypothesis.settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci" if os.environ.get("CI") else "default"))


@pytest.fixture(autouse=True)
def _processes_only_in_slow_tests(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    """`make quick` leaves out the tests marked slow, and every test that starts a process (kubejoin
    serve, kubectl, Prometheus, a bench script: subprocess and asyncio's subprocesses alike) must
    be one of them: here the others fail at once, saying so, instead of making the loop slow."""
    if request.node.get_closest_marker("slow") is not None:
        return

    def refuse(*args: object, **kwargs: object) -> NoReturn:
        command = args[0] if args else kwargs.get("args")
        raise AssertionError(f"this test starts a process ({command!r}): mark it @pytest.mark.slow")

    monkeypatch.setattr(subprocess, "Popen", refuse)


class Clock:
    """A clock the test moves by hand, so expiry and rate limits are tested without sleeping."""

    def __init__(self, now: float | None = None) -> None:
        self.now = time.time() if now is None else now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock() -> Clock:
    return Clock()


def kube_test_keys() -> list[IssuerKey]:
    return [
        IssuerKey.from_pem((KUBE_FIXTURES / "rsa-private.pem").read_bytes()),
        IssuerKey.from_pem((KUBE_FIXTURES / "ecdsa-private.pem").read_bytes()),
    ]


@pytest.fixture(scope="session")
def rsa_key() -> IssuerKey:
    return kube_test_keys()[0]


@pytest.fixture(scope="session")
def ec_key() -> IssuerKey:
    return kube_test_keys()[1]


ServeIssuer = Callable[..., Awaitable[LocalIssuer]]


@pytest.fixture
async def serve_issuer(aiohttp_server: Callable[..., Awaitable[TestServer]]) -> ServeIssuer:
    """Starts a LocalIssuer on a loopback port; its issuer URL is that server's http:// address."""

    async def start(keys: list[IssuerKey] | None = None) -> LocalIssuer:
        issuer = LocalIssuer("http://placeholder", keys or kube_test_keys())
        server = await aiohttp_server(issuer.app())
        issuer.issuer = str(server.make_url("")).rstrip("/")
        issuer.jwks_uri = issuer.issuer + "/openid/v1/jwks"
        return issuer

    return start
