"""Tokens nobody listed: thousands of seeded mutations of valid tokens and random junk. The verifier
must answer each with a VerificationError whose code is a REASON (never another exception), and
accept nothing but the untouched tokens."""

from __future__ import annotations

import json
import random
from typing import Any

import pytest

from auth.devtools.issuer import IssuerKey, LocalIssuer, b64url, sign_token
from tests.conftest import AUDIENCE, Clock
from verifier import StaticKeySource, VerificationError, Verifier, parse_jwks
from verifier.errors import VERIFICATION_CODES

ISSUER = "https://issuer.example.com"
WEIRD_VALUES: list[Any] = [
    None,
    True,
    0,
    -1,
    1e400,
    -1e400,
    1e300,
    2**80,
    "",
    "x" * 300,
    [],
    {},
    [None],
    {"a": []},
    "\u0000",
    "é",
    ["a", 1],
    {"name": 1, "uid": None},
]


def _is_json(value: Any) -> bool:
    """False for 1e400, which json.dumps writes as Infinity: not JSON, refused as malformed."""
    try:
        json.dumps(value, allow_nan=False)
    except ValueError:
        return False
    return True


def mutations(rng: random.Random, issuer: LocalIssuer, clock: Clock) -> list[tuple[str, bool]]:
    """(token, whether a correct verifier accepts it)."""
    key = issuer.signing_key
    good = issuer.mint("team-a", "agent", audiences=[AUDIENCE], now=clock.now)
    header, payload, signature = good.split(".")
    out: list[tuple[str, bool]] = []

    def unchanged(tokens: list[str]) -> list[tuple[str, bool]]:
        return [(token, token == good) for token in tokens]  # a mutation may happen to undo itself

    for _ in range(300):  # byte-level damage anywhere in the token
        chars = list(good)
        for _ in range(rng.randint(1, 4)):
            chars[rng.randrange(len(chars))] = rng.choice('AZaz09-_.=+/{}" \x00é')
        out += unchanged(["".join(chars)])
    for _ in range(100):  # truncations and part shuffles
        cut = rng.randrange(len(good))
        out += unchanged([good[:cut], good[cut:], ".".join(rng.sample([header, payload, signature], 3))])
    claims = issuer.claims("team-a", "agent", audiences=[AUDIENCE], now=clock.now)
    paths = [
        ("iss",),
        ("aud",),
        ("exp",),
        ("iat",),
        ("nbf",),
        ("sub",),
        ("jti",),
        ("kubernetes.io",),
        ("kubernetes.io", "namespace"),
        ("kubernetes.io", "pod"),
        ("kubernetes.io", "pod", "uid"),
        ("kubernetes.io", "serviceaccount"),
        ("kubernetes.io", "serviceaccount", "name"),
        ("kubernetes.io", "node"),
        ("kubernetes.io", "node", "name"),
    ]
    for _ in range(400):  # validly signed tokens with claims of every wrong type
        tampered = json.loads(json.dumps(claims))
        path = rng.choice(paths)
        node = tampered
        for part in path[:-1]:
            node = node[part]
        value = node[path[-1]] = rng.choice(WEIRD_VALUES)
        number = isinstance(value, (int, float)) and not isinstance(value, bool) and abs(value) < 1e308
        acceptable = (path == ("jti",) and isinstance(value, str)) or (
            path == ("nbf",) and number and value <= clock.now
        )
        out.append((issuer.sign(tampered), acceptable))
    for _ in range(100):  # validly signed tokens with odd headers
        head: dict[str, Any] = {"alg": "ES256", "kid": key.kid}
        name = rng.choice(["alg", "kid", "typ", "x5c", "jku", "zip", "cty", "b64", "crit"])
        head[name] = rng.choice(WEIRD_VALUES)
        # headers naming other keys are ignored; any other odd value is refused
        out.append((sign_token(key, head, claims), name in ("x5c", "jku") and _is_json(head[name])))
    for _ in range(100):  # junk
        out.append(("".join(rng.choice('abc.-_=eyJ{}":,') for _ in range(rng.randint(0, 200))), False))
        out.append(
            (b64url(rng.randbytes(rng.randint(0, 60))) + "." + b64url(rng.randbytes(40)) + "." + signature, False)
        )
    return out


@pytest.mark.parametrize("seed", [1, 2, 3])
async def test_mutated_and_random_tokens_only_ever_get_a_reason(seed: int, clock: Clock) -> None:
    issuer = LocalIssuer(ISSUER, [IssuerKey.generate("P-256")])
    source = StaticKeySource(parse_jwks(issuer.jwks_document()), label="static:fuzz", issuer=ISSUER)
    verifier = Verifier(source, [AUDIENCE], clock=clock)
    good = issuer.mint("team-a", "agent", audiences=[AUDIENCE], now=clock.now)
    wrong: list[tuple[str, str]] = []
    for token, acceptable in mutations(random.Random(seed), issuer, clock):
        try:
            await verifier.verify(token)
            verdict = "accepted"
        except VerificationError as exc:
            assert exc.code in VERIFICATION_CODES, exc.code  # anything else would be a traceback
            verdict = exc.code
        if (verdict == "accepted") != acceptable:
            wrong.append((verdict, token))
    assert wrong == []
    assert (await verifier.verify(good)).namespace == "team-a"
