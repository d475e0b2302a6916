"""The certificate authority: generation, loading, and what it refuses."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from auth.service.ca import CertificateAuthority, PublicKeyError, parse_public_key
from auth.service.config import ConfigError
from tests.service import public_key_pem


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
