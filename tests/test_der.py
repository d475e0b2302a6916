"""The workload certificate encoder against cryptography's CertificateBuilder, the reference:
identical to-be-signed bytes for every CA key type and workload key type, and valid signatures."""

from __future__ import annotations

import contextlib
import datetime
import functools
import os
import time
import uuid
from collections.abc import Callable, Iterator

import hypothesis
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from hypothesis import strategies as st

from auth.service.ca import SigningKey, WorkloadKey
from auth.service.der import WorkloadCertificates, spki_der
from auth.service.tokens import ROLES
from verifier.claims import NAME_SYNTAX, NAMESPACE_SYNTAX

CLUSTER = "example.teleport.sh"


KEY_MAKERS: dict[str, Callable[[], SigningKey]] = {
    "EC": lambda: ec.generate_private_key(ec.SECP256R1()),
    "P-256": lambda: ec.generate_private_key(ec.SECP256R1()),
    "P-384": lambda: ec.generate_private_key(ec.SECP384R1()),
    "Ed25519": ed25519.Ed25519PrivateKey.generate,
    "RSA": lambda: rsa.generate_private_key(public_exponent=65537, key_size=2048),
}


def make_ca(kind: str) -> tuple[x509.Certificate, SigningKey]:
    key = KEY_MAKERS[kind]()
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


def workload_key(kind: str) -> WorkloadKey:
    return KEY_MAKERS[kind]().public_key()


def reference(
    ca: x509.Certificate,
    ca_key: SigningKey,
    public_key: WorkloadKey,
    serial: int,
    role: str,
    cn: str,
    ns: str,
    sa: str,
    not_before: datetime.datetime,
    not_after: datetime.datetime,
    *,
    cluster: str = CLUSTER,
) -> x509.Certificate:
    """The certificate as CertificateBuilder makes it: the specification the encoder must match."""
    return (
        x509.CertificateBuilder()
        .subject_name(
            x509.Name(
                [
                    x509.NameAttribute(NameOID.ORGANIZATION_NAME, cluster),
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
            x509.SubjectAlternativeName([x509.UniformResourceIdentifier(f"spiffe://{cluster}/ns/{ns}/sa/{sa}")]),
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


# Differential test: over random names, roles, serials, key types and validity, the encoder's
# bytes are the builder's bytes. Keys are made once (RSA generation is slow); Hypothesis draws
# which ones to use.
@functools.cache
def key_pool() -> dict[str, SigningKey]:
    return {
        "P-256": ec.generate_private_key(ec.SECP256R1()),
        "P-384": ec.generate_private_key(ec.SECP384R1()),
        "P-521": ec.generate_private_key(ec.SECP521R1()),
        "Ed25519": ed25519.Ed25519PrivateKey.generate(),
        "RSA-2048": rsa.generate_private_key(public_exponent=65537, key_size=2048),
        "RSA-3072": rsa.generate_private_key(public_exponent=65537, key_size=3072),
    }


# A zone that is not UTC, written the POSIX way so that it needs no tz database: local time is
# 3 h 30 min behind UTC, so a naive datetime read as local time would be off.
NOT_UTC_TZ = "KJT+03:30"


@contextlib.contextmanager
def local_time_zone(tz: str) -> Iterator[None]:
    saved = os.environ.get("TZ")
    os.environ["TZ"] = tz
    time.tzset()
    try:
        yield
    finally:
        if saved is None:
            del os.environ["TZ"]
        else:
            os.environ["TZ"] = saved
        time.tzset()


# Instants the builder accepts (from 1950; GeneralizedTime has four year digits), a day inside
# the ends so that any UTC offset can express them.
INSTANTS = st.datetimes(
    min_value=datetime.datetime(1950, 1, 2), max_value=datetime.datetime(9999, 12, 30), timezones=st.just(datetime.UTC)
)
OFFSETS = st.integers(min_value=-(24 * 60 - 1), max_value=24 * 60 - 1).map(
    lambda minutes: datetime.timezone(datetime.timedelta(minutes=minutes))
)


@st.composite
def spelled(draw: st.DrawFn, instant: datetime.datetime) -> datetime.datetime:
    """One instant, as an aware UTC, an aware non-UTC or a naive (meaning UTC) datetime."""
    how = draw(st.sampled_from(["utc", "offset", "naive"]))
    if how == "naive":
        return instant.replace(tzinfo=None)
    if how == "offset":
        return instant.astimezone(draw(OFFSETS))
    return instant


@st.composite
def validity(draw: st.DrawFn) -> tuple[datetime.datetime, datetime.datetime]:
    not_before = draw(INSTANTS)
    latest = datetime.datetime(9999, 12, 30, tzinfo=datetime.UTC) - not_before
    not_after = not_before + draw(st.timedeltas(min_value=datetime.timedelta(0), max_value=latest))
    return draw(spelled(not_before)), draw(spelled(not_after))


KUBE_NAMESPACES = st.from_regex(NAMESPACE_SYNTAX, fullmatch=True)
KUBE_NAMES = st.from_regex(NAME_SYNTAX, fullmatch=True)
DNS_NAMES = st.from_regex(r"[a-z0-9]([-a-z0-9.]{0,60}[a-z0-9])?", fullmatch=True)
ROLE_NAMES = st.sampled_from(list(ROLES.values())) | st.text(min_size=1, max_size=80)
# The builder refuses a common name over 64 UTF-8 bytes (RFC 5280's ub-common-name); kubejoin's is
# the host id, a UUID.
COMMON_NAMES = st.text(min_size=1, max_size=64).filter(lambda name: len(name.encode("utf-8")) <= 64)


@hypothesis.settings(max_examples=150, deadline=None)
@hypothesis.given(
    ca_kind=st.sampled_from(["P-256", "P-384", "Ed25519", "RSA-2048"]),
    key_kind=st.sampled_from(["P-256", "P-384", "P-521", "Ed25519", "RSA-2048", "RSA-3072"]),
    cluster=DNS_NAMES,
    ca_common_name=COMMON_NAMES,
    serial=st.integers(min_value=1, max_value=2**159 - 1),
    role=ROLE_NAMES,
    common_name=COMMON_NAMES,
    namespace=KUBE_NAMESPACES,
    service_account=KUBE_NAMES,
    times=validity(),
)
def test_encoding_is_the_builders_for_any_input(
    ca_kind: str,
    key_kind: str,
    cluster: str,
    ca_common_name: str,
    serial: int,
    role: str,
    common_name: str,
    namespace: str,
    service_account: str,
    times: tuple[datetime.datetime, datetime.datetime],
) -> None:
    ca_key, public_key = key_pool()[ca_kind], key_pool()[key_kind].public_key()
    ca_name = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, cluster),
            x509.NameAttribute(NameOID.COMMON_NAME, ca_common_name),
        ]
    )
    start = datetime.datetime(2026, 1, 1, tzinfo=datetime.UTC)
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(1)
        .not_valid_before(start)
        .not_valid_after(start + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .sign(ca_key, None if ca_kind == "Ed25519" else hashes.SHA256())
    )
    with local_time_zone(NOT_UTC_TZ):
        expected = reference(
            ca, ca_key, public_key, serial, role, common_name, namespace, service_account, *times, cluster=cluster
        )
        encoder = WorkloadCertificates(ca, ca_key, cluster)
        tbs = encoder.tbs(
            serial=serial,
            spki=spki_der(public_key),
            rsa_key=key_kind.startswith("RSA"),
            role=role,
            common_name=common_name,
            namespace=namespace,
            service_account=service_account,
            not_before=times[0],
            not_after=times[1],
        )
    assert tbs == expected.tbs_certificate_bytes
    x509.load_der_x509_certificate(encoder.sign(tbs)).verify_directly_issued_by(ca)


def test_the_time_zone_used_above_is_not_utc() -> None:
    """Without this, the naive datetimes above would prove nothing on a machine whose zone is UTC."""
    with local_time_zone(NOT_UTC_TZ):
        assert datetime.datetime(2026, 1, 1).astimezone().utcoffset() == -datetime.timedelta(hours=3, minutes=30)


# One encoder for many certificates, as the service uses it: it remembers the last validity and
# each role's subject prefix, and what it remembers must never leak into the next certificate.
# A fresh encoder per certificate is the reference (the tests above hold it to the builder).
# Instants come from a small pool, spelled in UTC, another zone or naive, so that consecutive
# certificates often share an instant in one or another spelling.
POOLED_INSTANTS = st.sampled_from(
    [datetime.datetime(2026, 11, 26, 6, 0, s, m, tzinfo=datetime.UTC) for s in (0, 1) for m in (0, 500000)]
    + [datetime.datetime(2049, 12, 31, 23, 59, 59, tzinfo=datetime.UTC)]
).flatmap(spelled)


@hypothesis.settings(max_examples=60, deadline=None)
@hypothesis.given(
    certificates=st.lists(
        st.tuples(POOLED_INSTANTS, POOLED_INSTANTS, st.sampled_from(["App", "Db", "Node", "x" * 70])),
        min_size=2,
        max_size=12,
    )
)
def test_an_encoder_used_again_encodes_like_a_fresh_one(
    certificates: list[tuple[datetime.datetime, datetime.datetime, str]],
) -> None:
    ca_key, public_key = key_pool()["P-256"], key_pool()["P-384"].public_key()
    ca = make_ca_certificate(ca_key)
    reused = WorkloadCertificates(ca, ca_key, CLUSTER)
    for not_before, not_after, role in certificates:
        fields = dict(
            serial=12345,
            spki=spki_der(public_key),
            rsa_key=False,
            role=role,
            common_name="host",
            namespace="ns",
            service_account="sa",
            not_before=not_before,
            not_after=not_after,
        )
        assert reused.tbs(**fields) == WorkloadCertificates(ca, ca_key, CLUSTER).tbs(**fields)  # type: ignore[arg-type]


def test_roles_beyond_the_cache_are_still_encoded() -> None:
    ca_key = key_pool()["P-256"]
    ca = make_ca_certificate(ca_key)
    encoder = WorkloadCertificates(ca, ca_key, CLUSTER)
    now = datetime.datetime(2026, 11, 26, 6, 0, 0, tzinfo=datetime.UTC)
    spki = spki_der(key_pool()["Ed25519"].public_key())
    for n in range(100):  # more roles than the encoder remembers
        role = f"role-{n}"
        tbs = encoder.tbs(
            serial=1,
            spki=spki,
            rsa_key=False,
            role=role,
            common_name="host",
            namespace="ns",
            service_account="sa",
            not_before=now,
            not_after=now,
        )
        expected = reference(ca, ca_key, key_pool()["Ed25519"].public_key(), 1, role, "host", "ns", "sa", now, now)
        assert tbs == expected.tbs_certificate_bytes


def make_ca_certificate(ca_key: SigningKey) -> x509.Certificate:
    name = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, CLUSTER)])
    start = datetime.datetime(2026, 1, 1, tzinfo=datetime.UTC)
    return (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(ca_key.public_key())
        .serial_number(1)
        .not_valid_before(start)
        .not_valid_after(start + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .sign(ca_key, None if isinstance(ca_key, ed25519.Ed25519PrivateKey) else hashes.SHA256())
    )
