"""Key sources against a real local issuer over HTTP: discovery, cache policy, outages, in-cluster."""

from __future__ import annotations

import asyncio
import secrets
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from auth.devtools.devtls import make_loopback_tls
from auth.devtools.issuer import IssuerKey, LocalIssuer, sign_token
from tests.conftest import AUDIENCE, Clock, ServeIssuer
from tests.polling import wait_for
from verifier import InClusterKeySource, KeySourceError, OIDCKeySource, VerificationError, Verifier
from verifier.sources import max_age_of


async def start(serve_issuer: ServeIssuer, clock: Clock, **policy: Any) -> tuple[LocalIssuer, OIDCKeySource, Verifier]:
    issuer = await serve_issuer()
    source = OIDCKeySource(issuer.issuer, allow_http=True, clock=clock, **policy)
    return issuer, source, Verifier(source, [AUDIENCE], clock=clock, cache_size=0)


def mint(issuer: LocalIssuer, clock: Clock, **options: Any) -> str:
    return issuer.mint("team-a", "agent", audiences=[AUDIENCE], now=clock.now, **options)


async def code_of(verifier: Verifier, token: str) -> str:
    with pytest.raises(VerificationError) as caught:
        await verifier.verify(token)
    return caught.value.code


async def test_discovery_then_jwks_then_verify(serve_issuer: ServeIssuer, clock: Clock) -> None:
    issuer, source, verifier = await start(serve_issuer, clock)
    identity = await verifier.verify(mint(issuer, clock))
    assert identity.issuer == issuer.issuer
    assert issuer.requests == {"/.well-known/openid-configuration": 1, "/openid/v1/jwks": 1}
    await verifier.verify(mint(issuer, clock))
    assert source.fetch_count == 1
    await source.close()


async def test_discovery_naming_another_issuer_is_refused(serve_issuer: ServeIssuer, clock: Clock) -> None:
    issuer, source, verifier = await start(serve_issuer, clock)
    issuer.issuer += "/"  # the document now says ".../" while the source was configured without it
    assert await code_of(verifier, mint(issuer, clock)) == "keys_unavailable"
    assert "expected" in source.last_error
    await source.close()


def test_http_issuer_needs_explicit_permission() -> None:
    with pytest.raises(KeySourceError, match="https"):
        OIDCKeySource("http://issuer.example.com")


@pytest.mark.parametrize(
    ("header", "ttl"),
    [("public, max-age=3600", 3600), ("max-age=604800", 3600), ("max-age=5", 60), ("no-store", 60), (None, 300)],
    ids=["kube-default", "week-clamped-to-hour", "seconds-raised-to-minute", "no-store", "absent"],
)
async def test_ttl_follows_max_age_clamped(
    serve_issuer: ServeIssuer, clock: Clock, header: str | None, ttl: int
) -> None:
    issuer, source, verifier = await start(serve_issuer, clock)
    issuer.cache_control = header or ""
    await verifier.verify(mint(issuer, clock))
    # the background refresh is due at three quarters of the TTL
    assert source.seconds_until_due() == pytest.approx(0.75 * ttl)
    clock.advance(0.75 * ttl + 1)
    await source.refresh_if_due()
    assert source.fetch_count == 2
    await source.close()


def test_max_age_parsing() -> None:
    assert max_age_of("public, max-age=3600") == 3600
    assert max_age_of('max-age="20", public') == 20
    assert max_age_of("s-maxage=10") is None
    assert max_age_of("no-cache") == 0


async def test_rotation_never_fails_a_verification(serve_issuer: ServeIssuer, clock: Clock) -> None:
    issuer, source, verifier = await start(serve_issuer, clock)
    for _ in range(3):
        await verifier.verify(mint(issuer, clock))
        clock.advance(30)
        issuer.rotate()  # new key published and signing; old tokens stay valid
        await verifier.verify(mint(issuer, clock))
    assert source.fetch_count == 4  # the first fetch and one per rotation
    await source.close()


async def test_concurrent_unknown_kid_share_one_fetch(serve_issuer: ServeIssuer, clock: Clock) -> None:
    issuer, source, verifier = await start(serve_issuer, clock)
    await verifier.verify(mint(issuer, clock))
    clock.advance(30)
    issuer.rotate()
    tokens = [mint(issuer, clock) for _ in range(100)]
    identities = await asyncio.gather(*(verifier.verify(token) for token in tokens))
    assert len(identities) == 100
    assert source.fetch_count == 2
    assert issuer.requests["/openid/v1/jwks"] == 2
    await source.close()


async def test_hundred_made_up_kids_cause_one_fetch(serve_issuer: ServeIssuer, clock: Clock) -> None:
    issuer, source, verifier = await start(serve_issuer, clock)
    await verifier.verify(mint(issuer, clock))
    clock.advance(30)
    strangers = [
        sign_token(
            issuer.signing_key,
            {"alg": "RS256", "kid": secrets.token_hex(8)},
            issuer.claims(audiences=[AUDIENCE], now=clock.now),
        )
        for _ in range(100)
    ]
    results = await asyncio.gather(*(verifier.verify(t) for t in strangers), return_exceptions=True)
    assert {r.code for r in results if isinstance(r, VerificationError)} == {"unknown_key"}
    assert source.fetch_count == 2
    await source.close()


async def test_stream_of_random_kids_is_rate_limited(serve_issuer: ServeIssuer, clock: Clock) -> None:
    issuer, source, verifier = await start(serve_issuer, clock)
    await verifier.verify(mint(issuer, clock))
    for _ in range(200):  # 100 simulated seconds of junk, one token every half second
        clock.advance(0.5)
        token = sign_token(
            issuer.signing_key,
            {"alg": "RS256", "kid": secrets.token_hex(8)},
            issuer.claims(audiences=[AUDIENCE], now=clock.now),
        )
        assert await code_of(verifier, token) == "unknown_key"
    # at most one refresh per 10 s: 100 s of junk makes 10 refreshes, plus the first fetch
    assert source.fetch_count == 11
    await source.close()


async def test_outage_keeps_last_good_keys(serve_issuer: ServeIssuer, clock: Clock) -> None:
    issuer, source, verifier = await start(serve_issuer, clock)
    await verifier.verify(mint(issuer, clock))
    issuer.fail_status = 500
    clock.advance(7200)  # far past the TTL
    assert not await source.refresh()
    assert "500" in source.last_error
    assert (await verifier.verify(mint(issuer, clock))).namespace == "team-a"
    issuer.fail_status = None
    assert await source.refresh()
    await source.close()


async def test_hanging_issuer_times_out_and_keeps_keys(serve_issuer: ServeIssuer, clock: Clock) -> None:
    issuer, source, verifier = await start(serve_issuer, clock, timeout=0.2)
    await verifier.verify(mint(issuer, clock))
    issuer.hang = True
    clock.advance(7200)
    assert not await asyncio.wait_for(source.refresh(), 5)
    assert source.last_error == "timed out after 0.2 s"
    assert (await verifier.verify(mint(issuer, clock))).namespace == "team-a"
    await source.close()


async def test_keys_unavailable_only_when_never_fetched(serve_issuer: ServeIssuer, clock: Clock) -> None:
    issuer, source, verifier = await start(serve_issuer, clock)
    issuer.fail_status = 503
    assert await code_of(verifier, mint(issuer, clock)) == "keys_unavailable"
    # a dead issuer is not hammered: a second join within the second does not fetch again
    assert await code_of(verifier, mint(issuer, clock)) == "keys_unavailable"
    assert source.fetch_count == 1
    issuer.fail_status = None
    clock.advance(2)
    assert (await verifier.verify(mint(issuer, clock))).namespace == "team-a"
    await source.close()


async def test_oversized_jwks_is_refused(aiohttp_server: Any, clock: Clock) -> None:
    async def discovery(request: web.Request) -> web.Response:
        base = str(request.url.origin())
        return web.json_response({"issuer": base, "jwks_uri": base + "/jwks"})

    async def huge(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse()  # chunked: no Content-Length to refuse it early
        await response.prepare(request)
        for _ in range(40):
            await response.write(b" " * 65536)
        await response.write(b'{"keys": []}')
        return response

    app = web.Application()
    app.router.add_get("/.well-known/openid-configuration", discovery)
    app.router.add_get("/jwks", huge)
    server = await aiohttp_server(app)
    source = OIDCKeySource(str(server.make_url("")).rstrip("/"), allow_http=True, clock=clock)
    assert not await source.refresh()
    assert "larger than 1048576" in source.last_error
    await source.close()


async def test_background_refresh_runs_without_any_join(serve_issuer: ServeIssuer) -> None:
    issuer = await serve_issuer()
    source = OIDCKeySource(issuer.issuer, allow_http=True, min_ttl=0.02, max_ttl=0.02)
    source.start()
    await wait_for(lambda: source.fetch_count >= 3, "three background refreshes")
    await source.close()
    assert source.fetch_count >= 3
    assert source.key_count == 2


async def test_jwks_skips_unusable_entries_over_http(serve_issuer: ServeIssuer, clock: Clock) -> None:
    issuer, source, verifier = await start(serve_issuer, clock)
    original = issuer.jwks_document

    def with_junk() -> bytes:
        import json

        document = json.loads(original())
        document["keys"] += [{"kty": "OKP", "crv": "Ed25519", "kid": "ed", "x": "AA"}, {"kty": "oct", "k": "c2VjcmV0"}]
        return json.dumps(document).encode()

    issuer.jwks_document = with_junk  # type: ignore[method-assign]
    await verifier.verify(mint(issuer, clock))
    assert source.key_count == 2
    await source.close()


# -- in-cluster --------------------------------------------------------------------------------
async def test_in_cluster_uses_bearer_and_ca_and_rereads_the_token(
    aiohttp_server: Any, tmp_path: Path, clock: Clock
) -> None:
    tls = make_loopback_tls(tmp_path)
    issuer = LocalIssuer("https://kubernetes.default.svc.cluster.local", [IssuerKey.generate("P-256")])
    issuer.bearer_token = "first-token"
    server = await aiohttp_server(issuer.app(), ssl=tls.server_context())
    token_file = tmp_path / "token"
    token_file.write_text("first-token\n")
    source = InClusterKeySource(
        f"https://127.0.0.1:{server.port}", token_file=str(token_file), ca_file=str(tls.ca_file), clock=clock
    )
    verifier = Verifier(source, [AUDIENCE], clock=clock, cache_size=0)
    identity = await verifier.verify(mint(issuer, clock))
    assert identity.issuer == "https://kubernetes.default.svc.cluster.local"
    assert source.label == identity.issuer
    # kubelet rotates the pod's token: the next fetch must send the new one
    issuer.bearer_token = "second-token"
    token_file.write_text("second-token\n")
    clock.advance(3600)
    assert await source.refresh(), source.last_error
    issuer.bearer_token = "third-token"
    assert not await source.refresh()
    assert "401" in source.last_error
    await source.close()


async def test_in_cluster_refuses_an_unknown_server_certificate(
    aiohttp_server: Any, tmp_path: Path, clock: Clock
) -> None:
    tls = make_loopback_tls(tmp_path)
    (tmp_path / "other").mkdir()
    other = make_loopback_tls(tmp_path / "other")
    server = await aiohttp_server(LocalIssuer("https://k").app(), ssl=tls.server_context())
    token_file = tmp_path / "token"
    token_file.write_text("t")
    source = InClusterKeySource(
        f"https://127.0.0.1:{server.port}", token_file=str(token_file), ca_file=str(other.ca_file), clock=clock
    )
    assert not await source.refresh()
    assert "certificate" in source.last_error.lower()
    await source.close()


async def test_cached_token_is_refused_when_discovery_names_a_new_issuer(
    aiohttp_client: Any, aiohttp_server: Any, tmp_path: Path, clock: Clock
) -> None:
    tls = make_loopback_tls(tmp_path)
    issuer = LocalIssuer("https://old.example", [IssuerKey.generate("P-256")])
    server = await aiohttp_server(issuer.app(), ssl=tls.server_context())
    (tmp_path / "token").write_text("t")
    source = InClusterKeySource(
        f"https://127.0.0.1:{server.port}", token_file=str(tmp_path / "token"), ca_file=str(tls.ca_file), clock=clock
    )
    verifier = Verifier(source, [AUDIENCE], clock=clock)  # with its verified-token cache
    token = mint(issuer, clock)
    await verifier.verify(token)
    issuer.issuer = "https://new.example"  # the cluster's --service-account-issuer changed
    assert await source.refresh()
    assert await code_of(verifier, token) == "invalid_issuer"
    await source.close()


async def test_a_refresh_returning_the_same_keys_keeps_verified_tokens(serve_issuer: ServeIssuer, clock: Clock) -> None:
    """Issue 12, item 8: before, every refresh made new key objects, so one unknown kid (a refresh
    every 10 s) emptied the verified-token cache for everybody."""
    issuer = await serve_issuer()
    source = OIDCKeySource(issuer.issuer, allow_http=True, clock=clock)
    verifier = Verifier(source, [AUDIENCE], clock=clock)
    token = mint(issuer, clock)
    await verifier.verify(token)
    key = source.cached_key(issuer.signing_key.kid)
    for _ in range(3):
        clock.advance(11)
        stranger = LocalIssuer(issuer.issuer, [IssuerKey.generate("P-256")])
        assert await code_of(verifier, mint(stranger, clock)) == "unknown_key"
        await verifier.verify(token)
    assert source.fetch_count == 4  # the first fetch and one per unknown kid
    assert source.cached_key(issuer.signing_key.kid) is key
    assert (verifier.cache_hits, verifier.cache_misses) == (3, 4)  # token verified once, then hits
    await source.close()
