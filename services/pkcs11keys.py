"""EC signing keys that stay in a PKCS#11 token (SoftHSM2, a real HSM), for the issuer's CA and
the verifier's EAR key alike.

``cryptography``'s builders and signers call ``sign(data, ECDSA(hash))`` on whatever
``EllipticCurvePrivateKey`` they are given, so a token key is plugged in through an adapter
(:class:`Pkcs11EcKey`) that hashes locally and has the token do a raw CKM_ECDSA; nothing else is
possible (the key is not extractable). :func:`open_token_key` logs in and finds the key;
:func:`parse_pkcs11_uri` reads the RFC 7512 URI an operator configures. A PIN is passed in as
bytes and never appears in an error: errors name the module, token and label only.

Each caller names the error class it raises (``error=``): the issuer's ``CaKeyError``, the
verifier's ``EarKeyError``, so an operator reads which key failed.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import unquote

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import Prehashed, encode_dss_signature

from services.errors import ConfigError, HostgateError

__all__ = ["Pkcs11EcKey", "TokenKey", "open_token_key", "parse_pkcs11_uri"]

ErrorClass = type[HostgateError]


class Pkcs11EcKey(ec.EllipticCurvePrivateKey):
    """An EC private key that lives in a PKCS#11 token: ``sign`` hashes here and has the token
    do raw CKM_ECDSA; exchange and export raise ``error``."""

    def __init__(self, key: Any, public: ec.EllipticCurvePublicKey, label: str,
                 error: ErrorClass) -> None:
        self._key = key
        self._public = public
        self._label = label
        self._error = error

    def sign(self, data: bytes | bytearray | memoryview,
             signature_algorithm: ec.EllipticCurveSignatureAlgorithm) -> bytes:
        import pkcs11

        if not isinstance(signature_algorithm, ec.ECDSA):
            raise self._error(f"PKCS#11 key {self._label} signs ECDSA only")
        algorithm = signature_algorithm.algorithm
        if isinstance(algorithm, Prehashed):
            digest = bytes(data)
        else:
            h = hashes.Hash(algorithm)
            h.update(bytes(data))
            digest = h.finalize()
        raw = bytes(self._key.sign(digest, mechanism=pkcs11.Mechanism.ECDSA))
        half = len(raw) // 2
        return encode_dss_signature(int.from_bytes(raw[:half], "big"),
                                    int.from_bytes(raw[half:], "big"))

    def public_key(self) -> ec.EllipticCurvePublicKey:
        return self._public

    @property
    def curve(self) -> ec.EllipticCurve:
        return self._public.curve

    @property
    def key_size(self) -> int:
        return self._public.curve.key_size

    def exchange(self, algorithm: ec.ECDH, peer_public_key: ec.EllipticCurvePublicKey) -> bytes:
        raise self._error(f"PKCS#11 key {self._label} is for signing only")

    def private_numbers(self) -> ec.EllipticCurvePrivateNumbers:
        raise self._error(f"PKCS#11 key {self._label} is not extractable")

    def private_bytes(self, encoding: serialization.Encoding,
                      format: serialization.PrivateFormat,
                      encryption_algorithm: serialization.KeySerializationEncryption) -> bytes:
        raise self._error(f"PKCS#11 key {self._label} is not extractable")

    def __copy__(self) -> Pkcs11EcKey:
        return self

    def __deepcopy__(self, memo: dict[int, object]) -> Pkcs11EcKey:
        return self

    def __repr__(self) -> str:
        return f"Pkcs11EcKey(label={self._label!r})"


@dataclass(frozen=True)
class TokenKey:
    """A logged-in session and the private key object found in it (and, when asked for, the
    public-key object of the same label). ``close`` ends the session."""

    private: Any
    public: Any | None
    close: Callable[[], None]


def open_token_key(module: Path, token_label: str, key_label: str, pin: bytes, *,
                   error: ErrorClass, pin_source: str = "", with_public: bool = False
                   ) -> TokenKey:
    """Log in to ``token_label`` of the PKCS#11 ``module`` with ``pin`` and find the EC private
    key labelled ``key_label`` (and its public key object with ``with_public``). Every failure
    is one ``error`` naming what was not found or refused (``pin_source``: where the PIN came
    from, for a wrong-PIN message)."""
    import pkcs11
    from pkcs11 import exceptions as p11e

    try:
        lib = pkcs11.lib(str(module))
    except (RuntimeError, OSError) as exc:
        raise error(f"cannot load the PKCS#11 module {module}: {type(exc).__name__}") from None
    try:  # apart: python-pkcs11's errors are RuntimeErrors too
        token = lib.get_token(token_label=token_label)
    except (p11e.NoSuchToken, p11e.MultipleTokensReturned):
        raise error(f"PKCS#11 token {token_label!r} not found (or not unique) in {module}"
                    ) from None
    try:
        session = token.open(user_pin=pin.decode())
    except (p11e.PinIncorrect, p11e.PinInvalid, p11e.PinLenRange):
        where = f" (from {pin_source})" if pin_source else ""
        raise error(f"PKCS#11 login to token {token_label!r} failed: wrong PIN{where}"
                    ) from None
    except p11e.PinLocked:
        raise error(f"PKCS#11 token {token_label!r}: the user PIN is locked") from None
    except (p11e.PKCS11Error, UnicodeDecodeError) as exc:
        raise error(f"PKCS#11 login to token {token_label!r} failed: {type(exc).__name__}"
                    ) from None
    try:
        private = session.get_key(pkcs11.ObjectClass.PRIVATE_KEY, pkcs11.KeyType.EC,
                                  label=key_label)
        public = session.get_key(pkcs11.ObjectClass.PUBLIC_KEY, pkcs11.KeyType.EC,
                                 label=key_label) if with_public else None
    except (p11e.NoSuchKey, p11e.MultipleObjectsReturned):
        session.close()
        what = "EC key pair" if with_public else "EC private key"
        raise error(f"no unique {what} labelled {key_label!r} in token {token_label!r}"
                    ) from None
    return TokenKey(private, public, session.close)


def parse_pkcs11_uri(uri: str, *, uri_env: str, pin_env: str) -> tuple[str, str]:
    """``(token label, object label)`` from an RFC 7512 ``pkcs11:`` URI (path attributes
    ``token`` and ``object``, percent-decoded). A ``pin-value`` is refused: the PIN comes from
    its file (``pin_env``) only. Errors name ``uri_env``."""
    if not uri.startswith("pkcs11:"):
        raise ConfigError(f"{uri_env} does not start with 'pkcs11:'")
    path, _, query = uri[len("pkcs11:"):].partition("?")
    if "pin-value" in query:
        raise ConfigError(f"{uri_env} carries a pin-value; give the PIN in {pin_env} instead")
    attrs: dict[str, str] = {}
    for part in filter(None, path.split(";")):
        name, eq, value = part.partition("=")
        if not eq:
            raise ConfigError(f"{uri_env}: path attribute {name[:40]!r} has no value")
        attrs[name] = unquote(value)
    missing = [a for a in ("token", "object") if not attrs.get(a)]
    if missing:
        raise ConfigError(f"{uri_env} names no {' and no '.join(missing)}")
    return attrs["token"], attrs["object"]
