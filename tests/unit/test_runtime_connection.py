"""Kafka connection settings: one reading of the TLS/SASL environment for every client."""

from __future__ import annotations

import ssl
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from services.errors import ConfigError
from services.runtime.connection import client_kwargs


def test_plaintext_is_the_default() -> None:
    assert client_kwargs("b:9092", {}) == {"bootstrap_servers": "b:9092",
                                          "security_protocol": "PLAINTEXT"}


def test_unknown_protocol_is_named() -> None:
    with pytest.raises(ConfigError, match="HOSTGATE_KAFKA_SECURITY_PROTOCOL='TLS'"):
        client_kwargs("b:9092", {"HOSTGATE_KAFKA_SECURITY_PROTOCOL": "TLS"})


def test_sasl_needs_user_and_password_and_never_echoes_the_password() -> None:
    env = {"HOSTGATE_KAFKA_SECURITY_PROTOCOL": "SASL_PLAINTEXT",
           "HOSTGATE_KAFKA_SASL_PASSWORD": "hunter2"}
    with pytest.raises(ConfigError) as err:
        client_kwargs("b:9092", env)
    assert "HOSTGATE_KAFKA_SASL_USERNAME" in str(err.value) and "hunter2" not in str(err.value)
    env["HOSTGATE_KAFKA_SASL_USERNAME"] = "verifier"
    kw = client_kwargs("b:9092", env)
    assert kw["sasl_mechanism"] == "SCRAM-SHA-512" and kw["sasl_plain_username"] == "verifier"
    with pytest.raises(ConfigError, match="MECHANISM"):
        client_kwargs("b:9092", {**env, "HOSTGATE_KAFKA_SASL_MECHANISM": "GSSAPI"})


def _self_signed(tmp: Path) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "test")])
    import datetime as dt

    now = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(1).not_valid_before(now)
            .not_valid_after(now + dt.timedelta(days=3650)).sign(key, hashes.SHA256()))
    cert_path, key_path = tmp / "user.crt", tmp / "user.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_path, key_path


def test_mutual_tls_builds_an_ssl_context(tmp_path: Path) -> None:
    cert, key = _self_signed(tmp_path)
    env = {"HOSTGATE_KAFKA_SECURITY_PROTOCOL": "SSL", "HOSTGATE_KAFKA_SSL_CAFILE": str(cert),
           "HOSTGATE_KAFKA_SSL_CERTFILE": str(cert), "HOSTGATE_KAFKA_SSL_KEYFILE": str(key)}
    kw = client_kwargs("b:9093", env)
    assert isinstance(kw["ssl_context"], ssl.SSLContext)
    with pytest.raises(ConfigError, match="go together"):
        client_kwargs("b:9093", {**env, "HOSTGATE_KAFKA_SSL_KEYFILE": ""})
    with pytest.raises(ConfigError, match="no such file"):
        client_kwargs("b:9093", {**env, "HOSTGATE_KAFKA_SSL_CAFILE": str(tmp_path / "nope.pem")})
