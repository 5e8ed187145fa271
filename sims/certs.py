"""Certificates for simulated HTTPS devices (KME, QRNG) and their tests, made with `cryptography`.

One call writes a small PKI into a folder: a CA, a server certificate for 127.0.0.1 and
localhost, a client certificate (its key optionally encrypted), and a second, unrelated CA with
a client certificate of its own, to show that a server (or a client) trusting only the first
CA refuses it.
"""

from __future__ import annotations

import datetime
import ipaddress
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

VALIDITY = datetime.timedelta(days=2)
"""Short on purpose: these certificates exist for a test run or a demo."""


@dataclass(frozen=True)
class Identity:
    """A certificate and its private key, as PEM files."""

    cert: Path
    key: Path


@dataclass(frozen=True)
class TestPki:
    """Everything `make_pki` wrote."""

    ca: Path
    server: Identity
    client: Identity
    other_ca: Path
    other_client: Identity
    """A client certificate signed by `other_ca`: the server does not trust it."""
    other_server: Identity
    """A server certificate signed by `other_ca`: a client trusting only `ca` refuses it."""


def _name(common_name: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "qkdtel simulated network"),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )


def _builder(subject: str, issuer: x509.Name, key: ec.EllipticCurvePrivateKey):
    now = datetime.datetime.now(datetime.UTC)
    return (
        x509.CertificateBuilder()
        .subject_name(_name(subject))
        .issuer_name(issuer)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + VALIDITY)
    )


def _write_key(path: Path, key: ec.EllipticCurvePrivateKey, password: str | None) -> None:
    encryption = (
        serialization.BestAvailableEncryption(password.encode())
        if password
        else serialization.NoEncryption()
    )
    path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption)
    )
    path.chmod(0o600)


def _ca(folder: Path, stem: str) -> tuple[Path, x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        _builder(f"{stem} CA", _name(f"{stem} CA"), key)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(False, False, False, False, False, True, True, False, False),
            critical=True,
        )
        .sign(key, hashes.SHA256())
    )
    path = folder / f"{stem}-ca.pem"
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return path, cert, key


def _leaf(
    folder: Path,
    stem: str,
    ca: tuple[Path, x509.Certificate, ec.EllipticCurvePrivateKey],
    server: bool,
    password: str | None = None,
) -> Identity:
    _, ca_cert, ca_key = ca
    key = ec.generate_private_key(ec.SECP256R1())
    usage = ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH
    builder = (
        _builder(stem, ca_cert.subject, key)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
    )
    if server:
        names = [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
        builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
    cert = builder.sign(ca_key, hashes.SHA256())
    identity = Identity(folder / f"{stem}.pem", folder / f"{stem}-key.pem")
    identity.cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    _write_key(identity.key, key, password)
    return identity


def make_pki(folder: Path, client_key_password: str | None = None) -> TestPki:
    """Write a test PKI into `folder` (created if needed); see the module."""
    folder.mkdir(parents=True, exist_ok=True)
    ca = _ca(folder, "network")
    other = _ca(folder, "other")
    return TestPki(
        ca=ca[0],
        server=_leaf(folder, "server", ca, server=True),
        client=_leaf(folder, "client", ca, server=False, password=client_key_password),
        other_ca=other[0],
        other_client=_leaf(folder, "other-client", other, server=False),
        other_server=_leaf(folder, "other-server", other, server=True),
    )
