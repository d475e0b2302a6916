"""The workload side of a join: make a key, present the pod's token, write the certificate.

The agent stands alone (an import-linter contract): it imports nothing from the service, so it
keeps its own small copies of what the service has helpers for: reading the error shape
`{"error": {"code", "message"}}` (auth.service.errors.error_body writes it) and writing the key
file 0600 (here atomically by rename, since a renewal replaces the previous key).
"""

from __future__ import annotations

import datetime
import json
import os
import random
import ssl
import tempfile
from dataclasses import dataclass
from typing import Any

import aiohttp
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec


class JoinRefused(Exception):
    """The server refused the join: its reason code, message and HTTP status, so `kubejoin join`
    can print the code and a caller can branch on it."""

    def __init__(self, code: str, message: str, status: int) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        self.status = status


@dataclass(frozen=True)
class Joined:
    """A successful join: the host id and role the certificate carries, when it expires (the
    renewal loop schedules the next join from it), and the server's whole answer."""

    host_id: str
    role: str
    expires_at: datetime.datetime
    response: dict[str, Any]


def renewal_delay(remaining: float, rng: random.Random) -> float:
    """Seconds to wait before renewing a certificate valid `remaining` seconds more: a random
    point between half and four fifths of that, so that a fleet started together (a rollout, a
    node reboot) spreads its renewals instead of renewing in one wave."""
    return max(1.0, remaining * rng.uniform(0.5, 0.8))


def retry_delay(backoff: float, rng: random.Random) -> float:
    """A retry after `backoff` seconds of exponential backoff, with "equal jitter": between half
    the backoff and all of it, so retries of many clients do not stay in step."""
    return backoff / 2 + rng.uniform(0, backoff / 2)


def write_atomically(path: str, data: bytes, mode: int) -> None:
    """Writes via a temporary file in the same directory and a rename, so a reader never sees a
    half-written file."""
    directory = os.path.dirname(os.path.abspath(path))
    descriptor, temporary = tempfile.mkstemp(dir=directory, prefix=".kubejoin-")
    try:
        os.fchmod(descriptor, mode)
        with os.fdopen(descriptor, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    except BaseException:
        if os.path.exists(temporary):
            os.unlink(temporary)
        raise


async def join_once(
    server: str,
    *,
    token_name: str,
    sa_token: str,
    role: str,
    out_dir: str,
    ca_file: str | None = None,
    host_name: str | None = None,
    request_timeout: float = 30.0,
) -> Joined:
    """One join. Raises JoinRefused with the server's reason, or aiohttp/OS errors."""
    key = ec.generate_private_key(ec.SECP256R1())
    public_pem = (
        key.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode("ascii")
    )
    body: dict[str, Any] = {"token_name": token_name, "id_token": sa_token, "role": role, "public_key": public_pem}
    if host_name:
        body["host_name"] = host_name
    context = ssl.create_default_context(cafile=ca_file) if ca_file else None
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=request_timeout)) as session:
        kwargs: dict[str, Any] = {"json": body}
        if context is not None:
            kwargs["ssl"] = context
        async with session.post(server.rstrip("/") + "/v1/join", **kwargs) as response:
            text = await response.text()
            try:
                answer = json.loads(text)
            except ValueError:
                raise JoinRefused(
                    "bad_response", f"the server answered {response.status} without JSON", response.status
                ) from None
            if response.status != 200:
                error = answer.get("error", {}) if isinstance(answer, dict) else {}
                raise JoinRefused(
                    str(error.get("code", "unknown")), str(error.get("message", text[:200])), response.status
                )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    os.makedirs(out_dir, exist_ok=True)
    write_atomically(os.path.join(out_dir, "key.pem"), key_pem, 0o600)
    write_atomically(os.path.join(out_dir, "cert.pem"), answer["certificate"].encode("ascii"), 0o644)
    write_atomically(os.path.join(out_dir, "ca.pem"), "".join(answer["ca_certificates"]).encode("ascii"), 0o644)
    expires = datetime.datetime.fromisoformat(answer["expires_at"].replace("Z", "+00:00"))
    return Joined(answer["host_id"], answer["role"], expires, answer)
