"""Issue 12, item 5: reloads of the join tokens file that must not take the service down: an
empty file, a FIFO, /dev/zero, duplicate keys, a quick remove-and-restore, a same-size edit."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
import yaml
from aiohttp import web
from aiohttp.test_utils import TestClient
from prometheus_client import CollectorRegistry

from auth.devtools.issuer import IssuerKey, LocalIssuer
from auth.service.config import load_config
from auth.service.files import ConfigError
from auth.service.server import SERVICE, Service, create_app
from tests.conftest import ServeIssuer
from tests.polling import wait_for
from tests.service import AuditLog, join_body, make_config, pod_token, token_doc, write_tokens

Client = TestClient[web.Request, web.Application]


@pytest.fixture
def issuer() -> LocalIssuer:
    return LocalIssuer("https://kubernetes.default.svc.cluster.local", [IssuerKey.generate("P-256")])


async def start(tmp_path: Path, aiohttp_client: Any, *tokens: dict[str, Any]) -> Client:
    write_tokens(tmp_path / "tokens.yaml", *tokens)
    app = create_app(make_config(tmp_path), registry=CollectorRegistry(), audit=AuditLog(), reload_interval=0.02)
    client: Client = await aiohttp_client(app)
    return client


async def reload_refused(service: Service, containing: str) -> None:
    await wait_for(lambda: containing in service.tokens.last_error)
    registry = service.metrics.registry
    assert registry.get_sample_value("kubejoin_join_tokens_last_reload_successful") == 0
    assert registry.get_sample_value("kubejoin_config_reloads_total", {"result": "failure"}) == 1


async def test_a_file_left_empty_is_refused(tmp_path: Path, aiohttp_client: Any, issuer: LocalIssuer) -> None:
    """Before: 0 tokens applied, every join 403, /readyz still ready."""
    client = await start(tmp_path, aiohttp_client, token_doc(issuer=issuer))
    service = client.app[SERVICE]
    (tmp_path / "tokens.yaml").write_text("")  # a rewrite caught halfway
    await reload_refused(service, "no join tokens")
    assert (await client.post("/v1/join", json=join_body(pod_token(issuer)))).status == 200
    ready = await client.get("/readyz")
    assert ready.status == 200
    assert "no join tokens" in (await ready.json())["last_reload_error"]
    # the edit completes: applied, and the error is gone
    write_tokens(tmp_path / "tokens.yaml", token_doc(issuer=issuer), token_doc("second", issuer=issuer))
    await wait_for(lambda: "second" in service.tokens.tokens)
    assert "last_reload_error" not in await (await client.get("/readyz")).json()
    assert service.metrics.registry.get_sample_value("kubejoin_join_tokens_last_reload_successful") == 1


@pytest.mark.parametrize("kind", ["fifo", "dev-zero", "too-large"])
async def test_only_small_regular_files_are_read(
    tmp_path: Path, aiohttp_client: Any, issuer: LocalIssuer, kind: str
) -> None:
    """Before: a FIFO hung the whole service in open(); /dev/zero was read until memory ran out."""
    client = await start(tmp_path, aiohttp_client, token_doc(issuer=issuer))
    service = client.app[SERVICE]
    path = tmp_path / "tokens.yaml"
    path.unlink()
    if kind == "fifo":
        os.mkfifo(path)
    elif kind == "dev-zero":
        path.symlink_to("/dev/zero")
    else:
        path.write_bytes(b"# padding\n" * 420_000)
    await reload_refused(service, "larger than" if kind == "too-large" else "not a regular file")
    assert (await client.get("/healthz")).status == 200
    assert (await client.post("/v1/join", json=join_body(pod_token(issuer)))).status == 200


async def test_duplicate_keys_are_refused(tmp_path: Path, aiohttp_client: Any, issuer: LocalIssuer) -> None:
    """Before: a second `allow:` silently replaced the first."""
    client = await start(tmp_path, aiohttp_client, token_doc(issuer=issuer))
    service = client.app[SERVICE]
    text = yaml.safe_dump(token_doc(issuer=issuer))
    widened = text.replace(
        "    allow:\n",
        '    allow:\n    - service_account_namespace: "*"\n      service_account_name: "*"\n    allow:\n',
        1,
    )
    assert widened != text
    (tmp_path / "tokens.yaml").write_text(widened)
    await reload_refused(service, "duplicate key 'allow'")
    # the service account outside the rule is still refused
    response = await client.post("/v1/join", json=join_body(pod_token(issuer, "other", "debug")))
    assert response.status == 403


def test_duplicate_keys_in_the_config_file_are_refused(tmp_path: Path) -> None:
    (tmp_path / "config.yaml").write_text("cluster_name: a.example\ncluster_name: b.example\n")
    with pytest.raises(ConfigError, match=r"line 2 not valid YAML \(duplicate key 'cluster_name'\)"):
        load_config(str(tmp_path / "config.yaml"))


async def test_a_same_size_edit_keeping_mtime_is_seen(tmp_path: Path, aiohttp_client: Any, issuer: LocalIssuer) -> None:
    """Before: a change was detected by mtime, size and inode only."""
    client = await start(tmp_path, aiohttp_client, token_doc(issuer=issuer, roles=["Node"]))
    service = client.app[SERVICE]
    path = tmp_path / "tokens.yaml"
    before = path.stat()
    path.write_text(path.read_text().replace("- Node", "- Kube"))  # same length, same inode
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
    after = path.stat()
    assert (after.st_mtime_ns, after.st_size, after.st_ino) == (before.st_mtime_ns, before.st_size, before.st_ino)
    await wait_for(lambda: service.tokens.tokens["kubernetes-token"].roles == ("Kube",))


async def test_a_removed_source_keeps_its_keys_for_a_quick_restore(
    tmp_path: Path, aiohttp_client: Any, serve_issuer: ServeIssuer
) -> None:
    """Before: removing a token threw its OIDC source and keys away; restoring it while the
    issuer was down gave 503 keys_unavailable until the issuer came back."""
    live = await serve_issuer()
    client = await start(tmp_path, aiohttp_client, token_doc(issuer=live, kind="oidc"))
    service = client.app[SERVICE]
    assert (await client.post("/v1/join", json=join_body(pod_token(live)))).status == 200
    path = tmp_path / "tokens.yaml"
    write_tokens(path, token_doc("other", issuer=live))
    await wait_for(lambda: service.keyring.verifier_for("kubernetes-token") is None)
    live.fail_status = 503  # the issuer goes down
    write_tokens(path, token_doc(issuer=live, kind="oidc"))
    await wait_for(lambda: service.keyring.verifier_for("kubernetes-token") is not None)
    response = await client.post("/v1/join", json=join_body(pod_token(live, pod="after-restore")))
    assert response.status == 200
