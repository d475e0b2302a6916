"""Issue 12, item 6: the name of a join token of another join method (`token`, `iam`, ...) is,
in Teleport, the secret itself. It must not appear in /metrics, /readyz, the join log, the
service's own log, an answer, or `kubejoin tokens check`."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytest
import yaml
from aiohttp import web
from aiohttp.test_utils import TestClient
from prometheus_client import CollectorRegistry

from auth.cli.main import main as cli_main
from auth.devtools.issuer import IssuerKey, LocalIssuer
from auth.service.server import SERVICE, create_app
from tests.polling import wait_for
from tests.service import AuditLog, join_body, make_config, pod_token, token_doc, write_tokens

SECRET = "s3cr3t-7f1c9a0b5e2d4c6a8b0d2f4e6a8c0e1f"
Client = TestClient[web.Request, web.Application]


def secret_token(name: str = SECRET, **spec: Any) -> dict[str, Any]:
    return {
        "kind": "token",
        "version": "v2",
        "metadata": {"name": name},
        "spec": {"roles": ["Node"], "join_method": "token", **spec},
    }


async def test_other_join_methods_names_appear_nowhere(
    tmp_path: Path, aiohttp_client: Any, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    issuer = LocalIssuer("https://kubernetes.default.svc.cluster.local", [IssuerKey.generate("P-256")])
    path = tmp_path / "tokens.yaml"
    write_tokens(path, token_doc(issuer=issuer), secret_token())
    audit = AuditLog()
    app = create_app(make_config(tmp_path), registry=CollectorRegistry(), audit=audit, reload_interval=0.02)
    client: Client = await aiohttp_client(app)
    service = app[SERVICE]
    seen: list[str] = []

    # a join naming it: refused, and the answer does not repeat the name
    response = await client.post("/v1/join", json=join_body(pod_token(issuer), token_name=SECRET))
    assert response.status == 403
    answer = await response.json()
    assert answer["error"]["code"] == "wrong_join_method"
    seen.append(await response.text())

    # a good reload (logged), then broken reloads that concern it (reported in /readyz)
    write_tokens(path, token_doc(issuer=issuer), secret_token(), secret_token("another-secret-name"))
    await wait_for(lambda: len(service.tokens.tokens) == 3)
    for broken in (
        [token_doc(issuer=issuer), secret_token(), secret_token()],  # its name twice
        [token_doc(issuer=issuer), secret_token(roles=["Auth"])],  # a bad field in it
        [token_doc(issuer=issuer), {**secret_token(), "metadata": {"name": SECRET, "oops": 1}}],
    ):
        write_tokens(path, *broken)
        await wait_for(lambda: bool(service.tokens.last_error))
        ready = await client.get("/readyz")
        seen.append(await ready.text())
        assert "last_reload_error" in await ready.json()
        write_tokens(path, token_doc(issuer=issuer), secret_token(), secret_token("another-secret-name"))
        await wait_for(lambda: not service.tokens.last_error)

    seen.append(await (await client.get("/metrics")).text())
    seen.append(audit.getvalue())
    seen.append("\n".join(record.getMessage() for record in caplog.records))
    assert "kubernetes-token" in seen[-3]  # kubernetes tokens are named as before
    assert service.metrics.registry.get_sample_value("kubejoin_join_tokens") == 3
    for text in seen:
        assert SECRET not in text and "another-secret-name" not in text


def test_tokens_check_does_not_print_them(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "tokens.yaml"
    path.write_text(yaml.safe_dump_all([secret_token()]))
    assert cli_main(["tokens", "check", str(path)]) == 0
    path.write_text(yaml.safe_dump_all([secret_token(), secret_token()]))
    assert cli_main(["tokens", "check", str(path)]) == 1
    out, err = capsys.readouterr()
    assert '"join_method": "token"' in out
    assert SECRET not in out + err
