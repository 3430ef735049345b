"""Certificates for DICOM TLS tests, made with `cryptography`: a CA, certificates it signs for
the node, for a DCMTK or Orthanc peer and for a client (each for localhost and 127.0.0.1), and a
rogue CA with a client certificate the node must not trust. PEM files, unencrypted keys."""

from __future__ import annotations

import datetime as dt
import ipaddress
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID


@dataclass(frozen=True, kw_only=True, slots=True)
class KeyPair:
    cert: Path
    key: Path


@dataclass(frozen=True, kw_only=True, slots=True)
class Pki:
    ca: Path
    node: KeyPair
    peer: KeyPair
    client: KeyPair
    rogue_ca: Path
    rogue_client: KeyPair


def _key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def _name(common_name: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "dicom-node tests"),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )


def _write(path: Path, key: rsa.RSAPrivateKey, cert: x509.Certificate) -> KeyPair:
    key_path, cert_path = path.with_suffix(".key"), path.with_suffix(".crt")
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.TraditionalOpenSSL,
            serialization.NoEncryption(),
        )
    )
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return KeyPair(cert=cert_path, key=key_path)


def _ca(folder: Path, name: str) -> tuple[rsa.RSAPrivateKey, x509.Certificate, Path]:
    key = _key()
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(name))
        .issuer_name(_name(name))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=1))
        .not_valid_after(now + dt.timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(True, False, False, False, False, True, True, False, False), critical=True
        )
        .sign(key, hashes.SHA256())
    )
    pair = _write(folder / name, key, cert)
    return key, cert, pair.cert


def _leaf(folder: Path, name: str, ca_key: rsa.RSAPrivateKey, ca_cert: x509.Certificate) -> KeyPair:
    key = _key()
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(name))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=1))
        .not_valid_after(now + dt.timedelta(days=30))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
        .add_extension(
            x509.ExtendedKeyUsage(
                [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
            ),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    return _write(folder / name, key, cert)


def make_pki(folder: Path) -> Pki:
    """All the files, in `folder`."""
    folder.mkdir(parents=True, exist_ok=True)
    ca_key, ca_cert, ca_path = _ca(folder, "test-ca")
    rogue_key, rogue_cert, rogue_path = _ca(folder, "rogue-ca")
    return Pki(
        ca=ca_path,
        node=_leaf(folder, "node", ca_key, ca_cert),
        peer=_leaf(folder, "peer", ca_key, ca_cert),
        client=_leaf(folder, "modality", ca_key, ca_cert),
        rogue_ca=rogue_path,
        rogue_client=_leaf(folder, "rogue-modality", rogue_key, rogue_cert),
    )
