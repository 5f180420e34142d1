"""How every hostgate process connects to Kafka: bootstrap servers plus TLS or SASL.

One place reads the connection settings, so a worker, a CLI reader and the agent all honour the
same environment (the contract in ``deploy/README.md``)::

    HOSTGATE_KAFKA_SECURITY_PROTOCOL   PLAINTEXT (default), SSL, SASL_PLAINTEXT or SASL_SSL
    HOSTGATE_KAFKA_SSL_CAFILE          CA bundle that signed the brokers' certificates
    HOSTGATE_KAFKA_SSL_CERTFILE        client certificate (mutual TLS; a Strimzi KafkaUser's user.crt)
    HOSTGATE_KAFKA_SSL_KEYFILE         its private key (user.key)
    HOSTGATE_KAFKA_SASL_MECHANISM      PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512
    HOSTGATE_KAFKA_SASL_USERNAME       SASL user
    HOSTGATE_KAFKA_SASL_PASSWORD       SASL password (never logged)

``client_kwargs(bootstrap)`` returns the keyword arguments every aiokafka client takes for this.
The bootstrap servers themselves come from ``HOSTGATE_BOOTSTRAP`` (:data:`BOOTSTRAP_ENV`), by
default :data:`DEFAULT_BOOTSTRAP` (the local broker of ``hostgate kafka up``): :func:`env_bootstrap`.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from services.errors import ConfigError

BOOTSTRAP_ENV = "HOSTGATE_BOOTSTRAP"
DEFAULT_BOOTSTRAP = "127.0.0.1:19092"
PROTOCOLS = ("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL")
SASL_MECHANISMS = ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512")


def env_bootstrap(env: Mapping[str, str] | None = None) -> str:
    """``HOSTGATE_BOOTSTRAP`` if set, else :data:`DEFAULT_BOOTSTRAP`."""
    return (os.environ if env is None else env).get(BOOTSTRAP_ENV, DEFAULT_BOOTSTRAP)


def client_kwargs(bootstrap: str, env: Mapping[str, str] | None = None) -> dict[str, Any]:
    """aiokafka keyword arguments for ``bootstrap`` with the configured security settings."""
    env = os.environ if env is None else env
    protocol = env.get("HOSTGATE_KAFKA_SECURITY_PROTOCOL", "PLAINTEXT").upper()
    if protocol not in PROTOCOLS:
        raise ConfigError(
            f"HOSTGATE_KAFKA_SECURITY_PROTOCOL={protocol!r}: expected one of {', '.join(PROTOCOLS)}"
        )
    kwargs: dict[str, Any] = {"bootstrap_servers": bootstrap, "security_protocol": protocol}
    if protocol in ("SSL", "SASL_SSL"):
        kwargs["ssl_context"] = _ssl_context(env)
    if protocol.startswith("SASL_"):
        mechanism = env.get("HOSTGATE_KAFKA_SASL_MECHANISM", "SCRAM-SHA-512").upper()
        if mechanism not in SASL_MECHANISMS:
            raise ConfigError(f"HOSTGATE_KAFKA_SASL_MECHANISM={mechanism!r}: expected one of "
                              f"{', '.join(SASL_MECHANISMS)}")
        user = env.get("HOSTGATE_KAFKA_SASL_USERNAME")
        password = env.get("HOSTGATE_KAFKA_SASL_PASSWORD")
        if not user or password is None:
            raise ConfigError(f"security protocol {protocol} needs HOSTGATE_KAFKA_SASL_USERNAME "
                              "and HOSTGATE_KAFKA_SASL_PASSWORD")
        kwargs.update(sasl_mechanism=mechanism, sasl_plain_username=user,
                      sasl_plain_password=password)
    return kwargs


def _ssl_context(env: Mapping[str, str]) -> Any:
    from aiokafka.helpers import create_ssl_context

    def existing(var: str) -> str | None:
        value = env.get(var)
        if value and not Path(value).is_file():
            raise ConfigError(f"{var}={value}: no such file")
        return value or None

    cafile = existing("HOSTGATE_KAFKA_SSL_CAFILE")
    certfile = existing("HOSTGATE_KAFKA_SSL_CERTFILE")
    keyfile = existing("HOSTGATE_KAFKA_SSL_KEYFILE")
    if (certfile is None) != (keyfile is None):
        raise ConfigError("HOSTGATE_KAFKA_SSL_CERTFILE and HOSTGATE_KAFKA_SSL_KEYFILE go together")
    return create_ssl_context(cafile=cafile, certfile=certfile, keyfile=keyfile)
