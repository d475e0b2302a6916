"""The certificate authority that signs joined workloads' certificates.

Loads `ca.cert_file` and `ca.key_file`, or generates an ECDSA P-256 CA when both are missing
(key file mode 0600). Refuses to start on a mismatched pair, a certificate that is not a CA, a CA
that has expired or is not yet valid, or a key file that other users can read. No certificate it
issues outlives the CA.
"""

from __future__ import annotations

import datetime
import functools
import os
import stat
from dataclasses import dataclass
from typing import Final, NamedTuple

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from .config import check_cluster_name
from .der import WorkloadCertificates, pem_certificate, random_serial, spki_der
from .durations import rfc3339
from .files import ConfigError, write_private_file

CA_LIFETIME: Final = datetime.timedelta(days=3650)
BACKDATE: Final = datetime.timedelta(minutes=1)  # tolerate clients whose clocks run a little behind
SigningKey = ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey | rsa.RSAPrivateKey
WorkloadKey = ec.EllipticCurvePublicKey | ed25519.Ed25519PublicKey | rsa.RSAPublicKey
_WORKLOAD_CURVES: Final = ("secp256r1", "secp384r1")


class PublicKeyError(ValueError):
    """A workload's public key is not one we certify."""


def parse_public_key(pem: str) -> WorkloadKey:
    """A PEM SubjectPublicKeyInfo of EC P-256/P-384, Ed25519 or RSA of 2048 bits or more."""
    try:
        key = serialization.load_pem_public_key(pem.encode("utf-8"))
    except (ValueError, TypeError, UnicodeError):
        raise PublicKeyError("public_key is not a PEM public key (-----BEGIN PUBLIC KEY-----)") from None
    if isinstance(key, ec.EllipticCurvePublicKey) and key.curve.name in _WORKLOAD_CURVES:
        return key
    if isinstance(key, ed25519.Ed25519PublicKey):
        return key
    if isinstance(key, rsa.RSAPublicKey):
        if key.key_size < 2048:
            raise PublicKeyError(f"public_key is RSA {key.key_size}; at least 2048 bits required")
        return key
    raise PublicKeyError("public_key must be EC P-256 or P-384, Ed25519, or RSA of 2048 bits or more")


class PreparedKey(NamedTuple):
    """A workload public key with what its certificate needs: the DER SubjectPublicKeyInfo and
    whether it is RSA (which adds keyEncipherment)."""

    key: WorkloadKey
    spki: bytes
    rsa: bool


def prepare_public_key(pem: str) -> PreparedKey:
    """parse_public_key, and the key's encodings for the certificate."""
    key = parse_public_key(pem)
    return PreparedKey(key, spki_der(key), isinstance(key, rsa.RSAPublicKey))


class PublicKeyCache:
    """prepare_public_key, remembered by PEM text: an agent that retries a join sends the same key,
    and parsing and re-encoding it costs a third of the CA's signature. A PEM maps to one key, so
    a remembered answer is the answer; refused keys are not remembered and are refused again.
    Bounded in entries, and only PEMs of up to MAX_CACHED_PEM characters (RSA 4096 is about 800)
    are kept, so a flood of big keys cannot grow it."""

    MAX_CACHED_PEM: Final = 2048

    def __init__(self, size: int = 1024) -> None:
        self._prepare = functools.lru_cache(maxsize=size)(prepare_public_key)

    def prepare(self, pem: str) -> PreparedKey:
        return self._prepare(pem) if len(pem) <= self.MAX_CACHED_PEM else prepare_public_key(pem)


@dataclass(frozen=True)
class IssuedCertificate:
    """A signed workload certificate as PEM and its expiry, which the join answer reports as
    `expires_at`."""

    pem: str
    not_after: datetime.datetime


class CertificateAuthority:
    """kubejoin's CA: loaded from (or generated into) the configured files, it signs a workload
    certificate on every join and the serving certificate for `tls.dns_names`. Workload
    certificates go through the DER writer in der.py, which skips CertificateBuilder's per-call
    cost (about 120 us a certificate) and is tested byte-identical to it; the rare ones use the
    builder."""

    def __init__(self, certificate: x509.Certificate, key: SigningKey, cluster_name: str) -> None:
        # cluster_name ends up in the SPIFFE URI of every certificate: a name that is not a DNS
        # name would make each join fail (non-ASCII) or forge a URI ("a#b").
        check_cluster_name(cluster_name)
        self.certificate = certificate
        self._key = key
        self.cluster_name = cluster_name
        self.certificate_pem = certificate.public_bytes(serialization.Encoding.PEM).decode("ascii")
        self._issuer_name = certificate.subject
        self._authority_key_id = x509.AuthorityKeyIdentifier.from_issuer_public_key(key.public_key())
        self._hash = None if isinstance(key, ed25519.Ed25519PrivateKey) else hashes.SHA256()
        self._workload = WorkloadCertificates(certificate, key, cluster_name)

    @classmethod
    def generate(cls, cluster_name: str, now: datetime.datetime | None = None) -> CertificateAuthority:
        now = now or datetime.datetime.now(datetime.UTC)
        key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name(
            [
                x509.NameAttribute(NameOID.ORGANIZATION_NAME, cluster_name),
                x509.NameAttribute(NameOID.COMMON_NAME, f"kubejoin CA {cluster_name}"),
            ]
        )
        certificate = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - BACKDATE)
            .not_valid_after(now + CA_LIFETIME)
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=True,
                    crl_sign=True,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .sign(key, hashes.SHA256())
        )
        return cls(certificate, key, cluster_name)

    @property
    def not_after(self) -> datetime.datetime:
        return self.certificate.not_valid_after_utc

    @classmethod
    def load_or_create(
        cls, cert_file: str, key_file: str, cluster_name: str, now: datetime.datetime | None = None
    ) -> CertificateAuthority:
        have_cert, have_key = os.path.exists(cert_file), os.path.exists(key_file)
        if not have_cert and not have_key:
            ca = cls.generate(cluster_name, now)
            ca.save(cert_file, key_file)
            return ca
        if have_cert != have_key:
            missing = key_file if have_cert else cert_file
            raise ConfigError(f"ca: {missing} is missing; give both files, or neither to generate a new CA")
        return cls.load(cert_file, key_file, cluster_name, now)

    @classmethod
    def load(
        cls, cert_file: str, key_file: str, cluster_name: str, now: datetime.datetime | None = None
    ) -> CertificateAuthority:
        mode = os.stat(key_file).st_mode
        if mode & stat.S_IROTH:
            raise ConfigError(
                f"ca.key_file: {key_file} is readable by all users (mode {stat.S_IMODE(mode):o}); chmod 600"
            )
        try:
            with open(cert_file, "rb") as handle:
                certificate = x509.load_pem_x509_certificate(handle.read())
            with open(key_file, "rb") as handle:
                key = serialization.load_pem_private_key(handle.read(), password=None)
        except (OSError, ValueError, TypeError) as exc:
            raise ConfigError(f"ca: cannot load {cert_file} / {key_file}: {exc}") from None
        if not isinstance(key, (ec.EllipticCurvePrivateKey, ed25519.Ed25519PrivateKey, rsa.RSAPrivateKey)):
            raise ConfigError("ca.key_file: the CA key must be ECDSA, Ed25519 or RSA")
        public = serialization.PublicFormat.SubjectPublicKeyInfo
        if key.public_key().public_bytes(serialization.Encoding.DER, public) != certificate.public_key().public_bytes(
            serialization.Encoding.DER, public
        ):
            raise ConfigError("ca: the key in ca.key_file does not belong to the certificate in ca.cert_file")
        try:
            is_ca = certificate.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
        except x509.ExtensionNotFound:
            is_ca = False
        if not is_ca:
            raise ConfigError("ca.cert_file: the certificate is not a CA (basicConstraints CA:TRUE)")
        now = now or datetime.datetime.now(datetime.UTC)
        if now >= certificate.not_valid_after_utc:
            expired = rfc3339(certificate.not_valid_after_utc)
            raise ConfigError(f"ca.cert_file: the CA certificate expired at {expired}; replace the CA")
        if now < certificate.not_valid_before_utc:
            start = rfc3339(certificate.not_valid_before_utc)
            raise ConfigError(f"ca.cert_file: the CA certificate is not valid before {start} (check the clock)")
        return cls(certificate, key, cluster_name)

    def save(self, cert_file: str, key_file: str) -> None:
        key_pem = self._key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
        write_private_file(key_file, key_pem)
        with open(cert_file, "w", encoding="ascii") as handle:
            handle.write(self.certificate_pem)

    def issue_server(self, dns_names: tuple[str, ...], lifetime: datetime.timedelta) -> tuple[bytes, bytes]:
        """A serving certificate (PEM chain with the CA, PEM key) for kubejoin's own HTTPS."""
        now = datetime.datetime.now(datetime.UTC)
        key = ec.generate_private_key(ec.SECP256R1())
        not_after = min(now + lifetime, self.certificate.not_valid_after_utc)
        certificate = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, dns_names[0])]))
            .issuer_name(self._issuer_name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - BACKDATE)
            .not_valid_after(not_after)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(name) for name in dns_names]), critical=False)
            .add_extension(self._authority_key_id, critical=False)
            .sign(self._key, self._hash)
        )
        chain = certificate.public_bytes(serialization.Encoding.PEM) + self.certificate_pem.encode("ascii")
        key_pem = key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
        return chain, key_pem

    def issue(
        self,
        public_key: WorkloadKey | PreparedKey,
        *,
        host_id: str,
        role: str,
        namespace: str,
        service_account: str,
        now: datetime.datetime,
        not_after: datetime.datetime,
    ) -> IssuedCertificate:
        """A workload certificate: Subject O cluster, OU role, CN host_id; SAN URI
        spiffe://<cluster>/ns/<ns>/sa/<name>; EKU clientAuth and serverAuth; key usage
        digitalSignature (and keyEncipherment for RSA keys); valid from a minute ago until
        not_after or the CA's own expiry, whichever comes first."""
        not_after = min(not_after, self.not_after)
        if not isinstance(public_key, PreparedKey):
            public_key = PreparedKey(public_key, spki_der(public_key), isinstance(public_key, rsa.RSAPublicKey))
        tbs = self._workload.tbs(
            serial=random_serial(),
            spki=public_key.spki,
            rsa_key=public_key.rsa,
            role=role,
            common_name=host_id,
            namespace=namespace,
            service_account=service_account,
            not_before=(now - BACKDATE).replace(microsecond=0),
            not_after=(not_after := not_after.replace(microsecond=0)),
        )
        return IssuedCertificate(pem_certificate(self._workload.sign(tbs)), not_after)
