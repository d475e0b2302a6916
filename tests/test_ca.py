"""The certificate authority: generation, loading, and what it refuses."""

from __future__ import annotations

import datetime
import os
import stat
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from prometheus_client import CollectorRegistry

from auth.cli import main
from auth.service.ca import (
    CA_LIFETIME,
    CertificateAuthority,
    PublicKeyCache,
    PublicKeyError,
    parse_public_key,
    prepare_public_key,
)
from auth.service.files import ConfigError
from auth.service.server import SERVICE, create_app
from tests.service import AuditLog, make_config, public_key_pem

SPKI = (serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


def test_generated_at_first_start_with_private_key_file(tmp_path: Path) -> None:
    cert, key = tmp_path / "ca.pem", tmp_path / "ca-key.pem"
    ca = CertificateAuthority.load_or_create(str(cert), str(key), "example.teleport.sh")
    assert stat.S_IMODE(os.stat(key).st_mode) == 0o600
    again = CertificateAuthority.load_or_create(str(cert), str(key), "example.teleport.sh")
    assert again.certificate == ca.certificate


def test_one_file_missing_is_refused(tmp_path: Path) -> None:
    cert, key = tmp_path / "ca.pem", tmp_path / "ca-key.pem"
    CertificateAuthority.load_or_create(str(cert), str(key), "c")
    key.unlink()
    with pytest.raises(ConfigError, match="is missing"):
        CertificateAuthority.load_or_create(str(cert), str(key), "c")


def test_mismatched_pair_is_refused(tmp_path: Path) -> None:
    first, second = tmp_path / "a", tmp_path / "b"
    first.mkdir()
    second.mkdir()
    CertificateAuthority.load_or_create(str(first / "ca.pem"), str(first / "key.pem"), "c")
    CertificateAuthority.load_or_create(str(second / "ca.pem"), str(second / "key.pem"), "c")
    with pytest.raises(ConfigError, match="does not belong"):
        CertificateAuthority.load_or_create(str(first / "ca.pem"), str(second / "key.pem"), "c")


def test_world_readable_key_is_refused(tmp_path: Path) -> None:
    cert, key = tmp_path / "ca.pem", tmp_path / "ca-key.pem"
    CertificateAuthority.load_or_create(str(cert), str(key), "c")
    key.chmod(0o644)
    with pytest.raises(ConfigError, match="readable by all users"):
        CertificateAuthority.load_or_create(str(cert), str(key), "c")


def test_a_leaf_certificate_is_not_a_ca(tmp_path: Path) -> None:
    from auth.devtools.devtls import make_loopback_tls

    tls = make_loopback_tls(tmp_path)
    tls.key_file.chmod(0o600)
    with pytest.raises(ConfigError, match="not a CA"):
        CertificateAuthority.load(str(tls.cert_file), str(tls.key_file), "c")


@pytest.mark.parametrize("kind", ["RSA1024", "P-521"])
def test_weak_or_unusual_workload_keys_are_refused(kind: str) -> None:
    with pytest.raises(PublicKeyError):
        parse_public_key(public_key_pem(kind))


@pytest.mark.parametrize("kind", ["P-256", "Ed25519", "RSA2048"])
def test_a_remembered_key_is_the_key_its_pem_says(kind: str) -> None:
    cache, pem = PublicKeyCache(size=2), public_key_pem(kind)
    first, again, fresh = cache.prepare(pem), cache.prepare(pem), prepare_public_key(pem)
    assert again is first  # remembered, not parsed again
    assert (first.spki, first.rsa) == (fresh.spki, fresh.rsa) == (fresh.spki, kind.startswith("RSA"))
    assert first.key.public_bytes(*SPKI) == parse_public_key(pem).public_bytes(*SPKI) == fresh.spki
    for other in (public_key_pem(), public_key_pem()):  # pushed out by newer keys, then parsed again
        cache.prepare(other)
    assert cache.prepare(pem) is not first


@pytest.mark.parametrize("kind", ["RSA1024", "P-521"])
def test_a_refused_key_is_refused_every_time(kind: str) -> None:
    cache, pem = PublicKeyCache(), public_key_pem(kind)
    for _ in range(2):
        with pytest.raises(PublicKeyError):
            cache.prepare(pem)


def test_an_oversized_pem_is_parsed_but_not_remembered() -> None:
    cache = PublicKeyCache()
    pem = public_key_pem() + " " * PublicKeyCache.MAX_CACHED_PEM  # trailing text after the PEM block
    assert cache.prepare(pem).spki == prepare_public_key(pem).spki
    assert cache.prepare(pem) is not cache.prepare(pem)


@pytest.mark.parametrize("kind", ["P-384", "RSA2048"])
def test_a_prepared_key_gets_the_certificate_a_plain_key_gets(kind: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("auth.service.ca.random_serial", lambda: 0x1234)  # the one random field
    ca = CertificateAuthority.generate("example.teleport.sh")
    pem = public_key_pem(kind)
    now = datetime.datetime(2026, 11, 26, 6, 0, 0, 250000, tzinfo=datetime.UTC)
    fields = dict(host_id="h", role="App", namespace="ns", service_account="sa", now=now, not_after=now)
    prepared = ca.issue(prepare_public_key(pem), **fields)  # type: ignore[arg-type]
    plain = ca.issue(parse_public_key(pem), **fields)  # type: ignore[arg-type]
    tbs = [x509.load_pem_x509_certificate(issued.pem.encode()).tbs_certificate_bytes for issued in (prepared, plain)]
    assert tbs[0] == tbs[1]
    assert x509.load_pem_x509_certificate(plain.pem.encode()).public_key().public_bytes(*SPKI) == (
        prepare_public_key(pem).spki
    )
    assert prepared.not_after == plain.not_after == now.replace(microsecond=0)


# -- issue 12, item 7: the CA's own validity ------------------------------------------------------

NOW = datetime.datetime(2030, 6, 1, tzinfo=datetime.UTC)


def _ca_files(tmp_path: Path, generated_at: datetime.datetime) -> tuple[str, str]:
    cert, key = str(tmp_path / "ca.pem"), str(tmp_path / "ca-key.pem")
    CertificateAuthority.generate("example.teleport.sh", generated_at).save(cert, key)
    return cert, key


@pytest.mark.parametrize(
    ("generated_at", "message"),
    [
        (NOW - CA_LIFETIME - datetime.timedelta(days=1), "the CA certificate expired at 2030-05-31T"),
        (NOW + datetime.timedelta(days=1), "the CA certificate is not valid before 2030-06-01T23:59:00Z"),
    ],
    ids=["expired", "not-yet-valid"],
)
def test_a_ca_outside_its_validity_is_refused(tmp_path: Path, generated_at: datetime.datetime, message: str) -> None:
    """Before: served without a word."""
    cert, key = _ca_files(tmp_path, generated_at)
    with pytest.raises(ConfigError, match=message):
        CertificateAuthority.load_or_create(cert, key, "example.teleport.sh", NOW)


def test_serve_refuses_an_expired_ca_with_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _ca_files(tmp_path, datetime.datetime.now(datetime.UTC) - CA_LIFETIME - datetime.timedelta(days=1))
    (tmp_path / "tokens.yaml").write_text("")
    (tmp_path / "config.yaml").write_text("cluster_name: example.teleport.sh\n")
    assert main(["serve", "--config", str(tmp_path / "config.yaml")]) == 2
    assert "ca.cert_file: the CA certificate expired at" in capsys.readouterr().err


def test_no_leaf_outlives_the_ca(tmp_path: Path) -> None:
    ca = CertificateAuthority.generate("example.teleport.sh", NOW - CA_LIFETIME + datetime.timedelta(minutes=10))
    issued = ca.issue(
        parse_public_key(public_key_pem()),
        host_id="h",
        role="App",
        namespace="ns",
        service_account="sa",
        now=NOW,
        not_after=NOW + datetime.timedelta(hours=1),
    )
    leaf = x509.load_pem_x509_certificate(issued.pem.encode())
    assert leaf.not_valid_after_utc == ca.not_after == issued.not_after
    assert ca.not_after < NOW + datetime.timedelta(hours=1)


def test_a_ca_close_to_expiry_is_warned_of_and_measured(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    now = datetime.datetime.now(datetime.UTC)
    _ca_files(tmp_path, now - CA_LIFETIME + datetime.timedelta(days=10))
    (tmp_path / "tokens.yaml").write_text("")
    app = create_app(make_config(tmp_path), registry=CollectorRegistry(), audit=AuditLog())
    ca = app[SERVICE].ca
    expiry = app[SERVICE].metrics.registry.get_sample_value("kubejoin_ca_expiry_timestamp_seconds")
    assert expiry == ca.not_after.timestamp()
    [warning] = [r.getMessage() for r in caplog.records if "the CA expires" in r.getMessage()]
    assert warning.startswith("the CA expires in 10.0 days")
