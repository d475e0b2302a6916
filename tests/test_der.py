"""The workload certificate encoder against cryptography's CertificateBuilder, the reference:
identical to-be-signed bytes for every CA key type and workload key type, and valid signatures."""

from __future__ import annotations

import datetime
import uuid
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from auth.service.der import WorkloadCertificates, spki_der

CLUSTER = "example.teleport.sh"


def make_ca(kind: str) -> tuple[x509.Certificate, Any]:
    key: Any = {
        "EC": lambda: ec.generate_private_key(ec.SECP256R1()),
        "Ed25519": ed25519.Ed25519PrivateKey.generate,
        "RSA": lambda: rsa.generate_private_key(public_exponent=65537, key_size=2048),
    }[kind]()
    name = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, CLUSTER),
            x509.NameAttribute(NameOID.COMMON_NAME, "kubejoin CA é"),
        ]
    )
    now = datetime.datetime(2026, 1, 1, tzinfo=datetime.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(now)
        .not_valid_after(now + datetime.timedelta(days=3650))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .sign(key, None if kind == "Ed25519" else hashes.SHA256())
    )
    return certificate, key


def workload_key(kind: str) -> Any:
    return {
        "P-256": lambda: ec.generate_private_key(ec.SECP256R1()),
        "P-384": lambda: ec.generate_private_key(ec.SECP384R1()),
        "Ed25519": ed25519.Ed25519PrivateKey.generate,
        "RSA": lambda: rsa.generate_private_key(public_exponent=65537, key_size=2048),
    }[kind]().public_key()


def reference(
    ca: x509.Certificate,
    ca_key: Any,
    public_key: Any,
    serial: int,
    role: str,
    cn: str,
    ns: str,
    sa: str,
    not_before: datetime.datetime,
    not_after: datetime.datetime,
) -> x509.Certificate:
    """The certificate as CertificateBuilder makes it: the specification the encoder must match."""
    return (
        x509.CertificateBuilder()
        .subject_name(
            x509.Name(
                [
                    x509.NameAttribute(NameOID.ORGANIZATION_NAME, CLUSTER),
                    x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, role),
                    x509.NameAttribute(NameOID.COMMON_NAME, cn),
                ]
            )
        )
        .issuer_name(ca.subject)
        .public_key(public_key)
        .serial_number(serial)
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=isinstance(public_key, rsa.RSAPublicKey),
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH, ExtendedKeyUsageOID.SERVER_AUTH]), critical=False
        )
        .add_extension(
            x509.SubjectAlternativeName([x509.UniformResourceIdentifier(f"spiffe://{CLUSTER}/ns/{ns}/sa/{sa}")]),
            critical=False,
        )
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, None if isinstance(ca_key, ed25519.Ed25519PrivateKey) else hashes.SHA256())
    )


TIMES = [
    (
        datetime.datetime(2026, 11, 26, 6, 0, 0, tzinfo=datetime.UTC),
        datetime.datetime(2026, 11, 26, 7, 1, 0, tzinfo=datetime.UTC),
    ),
    (
        datetime.datetime(2049, 12, 31, 23, 0, 0, tzinfo=datetime.UTC),
        datetime.datetime(2050, 1, 1, 0, 0, 0, tzinfo=datetime.UTC),
    ),
]


@pytest.mark.parametrize("ca_kind", ["EC", "Ed25519", "RSA"])
@pytest.mark.parametrize("key_kind", ["P-256", "P-384", "Ed25519", "RSA"])
@pytest.mark.parametrize("times", TIMES, ids=["utctime", "generalizedtime-from-2050"])
def test_encoding_is_the_builders(
    ca_kind: str, key_kind: str, times: tuple[datetime.datetime, datetime.datetime]
) -> None:
    ca, ca_key = make_ca(ca_kind)
    public_key = workload_key(key_kind)
    serial = (1 << 158) + 12345 if key_kind != "RSA" else 0x7F  # a long serial, and one of a single byte
    host_id = str(uuid.uuid4())
    ns, sa, role = "team-a" * 30, "agent-" + "x" * 200, "WindowsDesktop"  # long enough for multi-byte lengths
    expected = reference(ca, ca_key, public_key, serial, role, host_id, ns, sa, *times)
    encoder = WorkloadCertificates(ca, ca_key, CLUSTER)
    tbs = encoder.tbs(
        serial=serial,
        spki=spki_der(public_key),
        rsa_key=key_kind == "RSA",
        role=role,
        common_name=host_id,
        namespace=ns,
        service_account=sa,
        not_before=times[0],
        not_after=times[1],
    )
    assert tbs == expected.tbs_certificate_bytes
    certificate = x509.load_der_x509_certificate(encoder.sign(tbs))
    certificate.verify_directly_issued_by(ca)
    assert certificate.tbs_certificate_bytes == expected.tbs_certificate_bytes
    assert certificate.signature_algorithm_oid == expected.signature_algorithm_oid
