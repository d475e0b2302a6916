"""`kubejoin verify`: JSON out, exit 0/1/2, never a traceback."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from auth.cli import main
from auth.devtools.issuer import LocalIssuer
from tests.conftest import EKS_FIXTURES, KUBE_FIXTURES, ServeIssuer, kube_test_keys

EKS_IAT = 1763969878


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, Any, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, json.loads(out) if out.strip() else None, err


def eks(*extra: str) -> list[str]:
    return [
        "verify",
        "--audience",
        "sts.amazonaws.com",
        "--jwks",
        str(EKS_FIXTURES / "jwks.json"),
        "--token-file",
        str(EKS_FIXTURES / "token.jwt"),
        *extra,
    ]


def test_accepts_the_eks_token_with_its_clock(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(capsys, *eks("--now", str(EKS_IAT + 60), "--max-ttl", "24h"))
    assert code == 0
    assert out["username"] == "system:serviceaccount:hakawai:hakawai-litellm-proxy"
    assert out["service_account"] == {"name": "hakawai-litellm-proxy", "uid": out["service_account"]["uid"]}
    assert set(out) == {
        "username",
        "namespace",
        "service_account",
        "pod",
        "node",
        "issuer",
        "audiences",
        "jti",
        "issued_at",
        "expires_at",
    }
    assert (out["issued_at"], out["expires_at"]) == (EKS_IAT, EKS_IAT + 86400)
    assert "accepted" in err


@pytest.mark.parametrize(
    ("extra", "reason"),
    [
        (["--now", str(EKS_IAT + 60)], "token_ttl_too_long"),
        (["--max-ttl", "24h"], "token_expired"),
        (["--now", str(EKS_IAT + 60), "--max-ttl", "24h", "--expect-issuer", "https://x"], "invalid_issuer"),
    ],
    ids=["default-ttl", "today", "other-issuer"],
)
def test_refusals_exit_1_with_reason(capsys: pytest.CaptureFixture[str], extra: list[str], reason: str) -> None:
    code, out, _ = run(capsys, *eks(*extra))
    assert code == 1
    assert out["error"]["code"] == reason
    assert "eyJ" not in out["error"]["message"]


def test_reads_stdin_and_refuses_non_utf8(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    import io

    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(b"\xff\xfe.\x80.\x81\n")))
    code, out, _ = run(capsys, "verify", "--audience", "a", "--jwks", str(KUBE_FIXTURES / "jwks.json"))
    assert (code, out["error"]["code"]) == (1, "malformed_token")


@pytest.mark.parametrize(
    "argv",
    [
        ["verify", "--audience", "a"],
        ["verify", "--audience", "a", "--jwks", "/nonexistent/jwks.json"],
        ["verify", "--audience", "a", "--jwks", __file__],
        ["verify", "--audience", "a", "--issuer", "http://insecure.example"],
        ["verify", "--audience", "a", "--jwks", str(KUBE_FIXTURES / "jwks.json"), "--max-ttl", "soon"],
        ["verify", "--audience", "a", "--jwks", str(KUBE_FIXTURES / "jwks.json"), "--token-file", "/nonexistent"],
    ],
    ids=["no-keys", "missing-jwks", "jwks-not-json", "http-issuer", "bad-duration", "missing-token-file"],
)
def test_usage_and_configuration_errors_exit_2(capsys: pytest.CaptureFixture[str], argv: list[str]) -> None:
    try:
        code = main(argv)
    except SystemExit as exc:  # argparse's own usage errors
        code = int(exc.code or 0)
    assert code == 2
    assert "Traceback" not in capsys.readouterr().err


@pytest.mark.slow
async def test_issuer_discovery_over_http(serve_issuer: ServeIssuer, tmp_path: Path) -> None:
    issuer = await serve_issuer()
    token_file = tmp_path / "token"
    token_file.write_text(issuer.mint("ns", "sa", audiences=["aud"]))
    # a subprocess, so the test's event loop keeps serving the issuer meanwhile
    process = await _run_cli(
        "verify",
        "--audience",
        "aud",
        "--issuer",
        issuer.issuer,
        "--insecure-allow-http-issuer",
        "--token-file",
        str(token_file),
    )
    assert process[0] == 0, process[2]
    assert json.loads(process[1])["issuer"] == issuer.issuer


@pytest.mark.slow
async def test_unreachable_issuer_is_keys_unavailable(tmp_path: Path) -> None:
    token_file = tmp_path / "token"
    token_file.write_text(LocalIssuer("http://127.0.0.1:9", kube_test_keys()).mint())
    code, out, err = await _run_cli(
        "verify",
        "--audience",
        "kubejoin",
        "--issuer",
        "http://127.0.0.1:9",
        "--insecure-allow-http-issuer",
        "--token-file",
        str(token_file),
    )
    assert code == 2
    assert json.loads(out)["error"]["code"] == "keys_unavailable"
    assert "Traceback" not in err


async def _run_cli(*argv: str) -> tuple[int, str, str]:
    import asyncio

    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "auth", *argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    out, err = await asyncio.wait_for(process.communicate(), 30)
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


def test_an_unexpected_failure_is_one_line_and_exit_2(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from auth.cli import verify as verify_cmd

    def broken(*args: object, **kwargs: object) -> None:
        raise RuntimeError("unexpected")

    monkeypatch.setattr(verify_cmd, "read_token", broken)
    code = main(["verify", "--audience", "a", "--jwks", str(KUBE_FIXTURES / "jwks.json")])
    err = capsys.readouterr().err
    assert code == 2
    assert err.strip() == "kubejoin verify: internal error (RuntimeError: unexpected); please report it"
