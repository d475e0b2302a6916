"""A DER writer for the one certificate kubejoin issues on every join.

cryptography's CertificateBuilder takes about 120 us per certificate, four times the CA's
signature itself (measured with bench/http.py and a profile: the builder's checks and object
conversions dominate). The workload certificate always has the same shape, so its fixed parts are
encoded once and each join only encodes serial, validity, subject, key and SAN, then signs;
the role's part of the subject and the validity (shared by the joins of one second) are
remembered too.
tests/test_der.py holds the builder's output as the reference: the to-be-signed bytes must be
identical for every CA and workload key type.
"""

from __future__ import annotations

import binascii
import datetime
import os
from collections.abc import Callable
from typing import Final

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID

_OID_ORGANIZATION: Final = bytes.fromhex("060355040a")
_OID_ORGANIZATIONAL_UNIT: Final = bytes.fromhex("060355040b")
_OID_COMMON_NAME: Final = bytes.fromhex("0603550403")
_OID_BASIC_CONSTRAINTS: Final = bytes.fromhex("0603551d13")
_OID_KEY_USAGE: Final = bytes.fromhex("0603551d0f")
_OID_EXTENDED_KEY_USAGE: Final = bytes.fromhex("0603551d25")
_OID_SUBJECT_ALT_NAME: Final = bytes.fromhex("0603551d11")
_OID_AUTHORITY_KEY_ID: Final = bytes.fromhex("0603551d23")
_VERSION_3: Final = bytes.fromhex("a003020102")
_CRITICAL: Final = bytes.fromhex("0101ff")
# AlgorithmIdentifier of the CA's signature, by CA key type (SHA-256 for ECDSA and RSA).
_ECDSA_SHA256: Final = bytes.fromhex("300a06082a8648ce3d040302")
_ED25519: Final = bytes.fromhex("300506032b6570")
_RSA_SHA256: Final = bytes.fromhex("300d06092a864886f70d01010b0500")


def tlv(tag: int, content: bytes) -> bytes:
    length = len(content)
    if length < 0x80:
        return bytes((tag, length)) + content
    # the long forms a certificate needs, without the general arithmetic
    if length < 0x100:
        return bytes((tag, 0x81, length)) + content
    if length < 0x10000:
        return bytes((tag, 0x82, length >> 8, length & 0xFF)) + content
    size = (length.bit_length() + 7) // 8
    return bytes((tag, 0x80 | size)) + length.to_bytes(size, "big") + content


def sequence(*parts: bytes) -> bytes:
    return tlv(0x30, b"".join(parts))


def positive_integer(value: int) -> bytes:
    return tlv(0x02, value.to_bytes(value.bit_length() // 8 + 1, "big"))


def _time(moment: datetime.datetime) -> bytes:
    """UTCTime before 2050 and GeneralizedTime from then on (RFC 5280, 4.1.2.5). A naive datetime
    is read as UTC, as CertificateBuilder reads it (astimezone would take it for local time)."""
    m = moment.astimezone(datetime.UTC) if moment.tzinfo is not None else moment
    # f-strings rather than strftime, which costs three times as much on this path
    clock = f"{m.month:02d}{m.day:02d}{m.hour:02d}{m.minute:02d}{m.second:02d}Z".encode("ascii")
    if 1950 <= m.year < 2050:
        return tlv(0x17, f"{m.year % 100:02d}".encode("ascii") + clock)
    return tlv(0x18, f"{m.year:04d}".encode("ascii") + clock)


def _attribute(oid: bytes, value: str) -> bytes:
    return tlv(0x31, sequence(oid, tlv(0x0C, value.encode("utf-8"))))


def _extension(oid: bytes, value: bytes, *, critical: bool = False) -> bytes:
    return sequence(oid, _CRITICAL if critical else b"", tlv(0x04, value))


def _key_usage(key_encipherment: bool) -> bytes:
    usage = x509.KeyUsage(
        digital_signature=True,
        content_commitment=False,
        key_encipherment=key_encipherment,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=False,
        crl_sign=False,
        encipher_only=False,
        decipher_only=False,
    )
    return _extension(_OID_KEY_USAGE, usage.public_bytes(), critical=True)


SigningKey = ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey | rsa.RSAPrivateKey
# Roles are a handful of names; the cache of their encoded subject prefixes stays this small even
# if a caller passes others.
_ROLE_CACHE_SIZE: Final = 64


class WorkloadCertificates:
    """Encodes and signs workload certificates for one CA and cluster."""

    def __init__(self, ca_certificate: x509.Certificate, ca_key: SigningKey, cluster_name: str) -> None:
        if isinstance(ca_key, ec.EllipticCurvePrivateKey):
            self._algorithm = _ECDSA_SHA256
        elif isinstance(ca_key, ed25519.Ed25519PrivateKey):
            self._algorithm = _ED25519
        else:
            self._algorithm = _RSA_SHA256
        self._issuer = ca_certificate.subject.public_bytes()
        self._organization = _attribute(_OID_ORGANIZATION, cluster_name)
        self._spiffe_prefix = f"spiffe://{cluster_name}/ns/"
        authority = x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key())
        eku = x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH, ExtendedKeyUsageOID.SERVER_AUTH])
        basic = _extension(
            _OID_BASIC_CONSTRAINTS, x509.BasicConstraints(ca=False, path_length=None).public_bytes(), critical=True
        )
        self._before_san = {
            rsa_key: basic + _key_usage(rsa_key) + _extension(_OID_EXTENDED_KEY_USAGE, eku.public_bytes())
            for rsa_key in (False, True)
        }
        self._after_san = _extension(_OID_AUTHORITY_KEY_ID, authority.public_bytes())
        self._after_serial = self._algorithm + self._issuer  # the fields between serial and validity
        self._subject_heads: dict[str, bytes] = {}  # role -> O and OU attributes, encoded
        # The validity of the last certificate, as both ends are whole seconds: joins within one
        # second share it. Only UTC datetimes are remembered (see _validity_der).
        self._validity_of: tuple[datetime.datetime, datetime.datetime] | None = None
        self._validity = b""
        self._sign = _signer(ca_key)

    def tbs(
        self,
        *,
        serial: int,
        spki: bytes,
        rsa_key: bool,
        role: str,
        common_name: str,
        namespace: str,
        service_account: str,
        not_before: datetime.datetime,
        not_after: datetime.datetime,
    ) -> bytes:
        """The TBSCertificate, in exactly the encoding CertificateBuilder produces."""
        head = self._subject_heads.get(role)
        if head is None:
            head = self._organization + _attribute(_OID_ORGANIZATIONAL_UNIT, role)
            if len(self._subject_heads) < _ROLE_CACHE_SIZE:
                self._subject_heads[role] = head
        subject = tlv(0x30, head + _attribute(_OID_COMMON_NAME, common_name))
        uri = f"{self._spiffe_prefix}{namespace}/sa/{service_account}".encode("ascii")
        san = _extension(_OID_SUBJECT_ALT_NAME, sequence(tlv(0x86, uri)))
        extensions = tlv(0xA3, sequence(self._before_san[rsa_key], san, self._after_san))
        return sequence(
            _VERSION_3,
            positive_integer(serial),
            self._after_serial,
            self._validity_der(not_before, not_after),
            subject,
            spki,
            extensions,
        )

    def _validity_der(self, not_before: datetime.datetime, not_after: datetime.datetime) -> bytes:
        # Remembered only for datetimes in datetime.UTC: equal UTC datetimes are the same instant,
        # so they encode alike. (Equal datetimes of one other zone may differ in `fold`, and so in
        # instant; naive ones are rare here.)
        times = (not_before, not_after)
        if times == self._validity_of:
            return self._validity
        validity = sequence(_time(not_before), _time(not_after))
        if not_before.tzinfo is datetime.UTC and not_after.tzinfo is datetime.UTC:
            self._validity_of, self._validity = times, validity
        return validity

    def sign(self, tbs: bytes) -> bytes:
        """The Certificate DER: tbs, the algorithm, and the CA's signature over tbs."""
        return sequence(tbs, self._algorithm, tlv(0x03, b"\x00" + self._sign(tbs)))


def _signer(key: SigningKey) -> Callable[[bytes], bytes]:
    """The CA key's signing function, its algorithm objects built once rather than per join."""
    if isinstance(key, ec.EllipticCurvePrivateKey):
        ecdsa = ec.ECDSA(hashes.SHA256())
        return lambda data: key.sign(data, ecdsa)
    if isinstance(key, ed25519.Ed25519PrivateKey):
        return key.sign
    pkcs1, sha256 = padding.PKCS1v15(), hashes.SHA256()
    return lambda data: key.sign(data, pkcs1, sha256)


def random_serial() -> int:
    """A positive serial of at most 159 bits, as x509.random_serial_number makes them."""
    return int.from_bytes(os.urandom(20), "big") >> 1


def spki_der(public_key: ec.EllipticCurvePublicKey | ed25519.Ed25519PublicKey | rsa.RSAPublicKey) -> bytes:
    return public_key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


def pem_certificate(der: bytes) -> str:
    # b2a_base64 of 48 bytes is one 64-character PEM line with its newline
    lines = b"".join([binascii.b2a_base64(der[i : i + 48]) for i in range(0, len(der), 48)])
    return f"-----BEGIN CERTIFICATE-----\n{lines.decode('ascii')}-----END CERTIFICATE-----\n"
