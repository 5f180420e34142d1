"""The verifier's EAR signing key: an encrypted PEM file or a PKCS#11 token, like the issuer's CA.

=============================================  ==========================================
environment                                    meaning
=============================================  ==========================================
``HOSTGATE_VERIFIER_EAR_KEY``                  encrypted PEM P-256 private key
``HOSTGATE_VERIFIER_EAR_PASSPHRASE_FILE``      file holding that key's passphrase
``HOSTGATE_VERIFIER_PKCS11_MODULE``            PKCS#11 module: the key on a token instead
``HOSTGATE_VERIFIER_PKCS11_URI``               RFC 7512 URI (``token``, ``object``; no PIN)
``HOSTGATE_VERIFIER_PKCS11_PIN_FILE``          file holding the token PIN
=============================================  ==========================================

None of them set: the verifier writes unsigned EARs (``ear_json`` is then the claims' JSON).
Both sources set is an error. The key is checked (P-256, signs a probe that its public key
verifies) when the config is built, so a bad key fails the worker at start-up.

Trust boundary: the private key, its passphrase and its PIN never leave :class:`EarSigningKey`
(no repr, no error message, no log carries them). Errors name files and variables only.

Determinism: a PEM key signs with RFC 6979 deterministic ECDSA, so the same claims and key give
the same token byte for byte. A token's CKM_ECDSA draws its own randomness: those tokens differ
per signing, which audit replay allows (it compares the signed claims, not the signature:
:mod:`services.verifier.audit_replay`).
"""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from services.errors import ConfigError, HostgateError
from services.pkcs11keys import Pkcs11EcKey, open_token_key
from services.pkcs11keys import parse_pkcs11_uri as parse_token_uri

ENV_EAR_KEY: Final = "HOSTGATE_VERIFIER_EAR_KEY"
ENV_EAR_PASSPHRASE_FILE: Final = "HOSTGATE_VERIFIER_EAR_PASSPHRASE_FILE"
ENV_PKCS11_MODULE: Final = "HOSTGATE_VERIFIER_PKCS11_MODULE"
ENV_PKCS11_URI: Final = "HOSTGATE_VERIFIER_PKCS11_URI"
ENV_PKCS11_PIN_FILE: Final = "HOSTGATE_VERIFIER_PKCS11_PIN_FILE"

MAX_SECRET_BYTES: Final = 1024
MAX_PEM_BYTES: Final = 64 * 1024
CURVE: Final = "secp256r1"
"""ES256 is ECDSA over P-256 with SHA-256 (RFC 7518 section 3.4)."""


class EarKeyError(HostgateError):
    """The EAR signing key cannot be loaded or used (names the file or token, never a secret)."""

    exit_code = ConfigError.exit_code


class _DeterministicEcKey(ec.EllipticCurvePrivateKey):
    """A software P-256 key whose ``sign`` is RFC 6979 deterministic ECDSA, whatever ECDSA the
    caller (the JOSE library) asks for; it cannot be serialised."""

    def __init__(self, key: ec.EllipticCurvePrivateKey) -> None:
        self._key = key

    def sign(self, data: bytes | bytearray | memoryview,
             signature_algorithm: ec.EllipticCurveSignatureAlgorithm) -> bytes:
        if not isinstance(signature_algorithm, ec.ECDSA):
            raise EarKeyError("the EAR key signs ECDSA only")
        algorithm = signature_algorithm.algorithm
        return self._key.sign(data, ec.ECDSA(algorithm, deterministic_signing=True))

    def public_key(self) -> ec.EllipticCurvePublicKey:
        return self._key.public_key()

    @property
    def curve(self) -> ec.EllipticCurve:
        return self._key.curve

    @property
    def key_size(self) -> int:
        return self._key.key_size

    def exchange(self, algorithm: ec.ECDH, peer_public_key: ec.EllipticCurvePublicKey) -> bytes:
        raise EarKeyError("the EAR key is for signing only")

    def private_numbers(self) -> ec.EllipticCurvePrivateNumbers:
        raise EarKeyError("the EAR key is not exported")

    def private_bytes(self, encoding: serialization.Encoding,
                      format: serialization.PrivateFormat,
                      encryption_algorithm: serialization.KeySerializationEncryption) -> bytes:
        raise EarKeyError("the EAR key is not exported")

    def __copy__(self) -> _DeterministicEcKey:
        return self

    def __deepcopy__(self, memo: dict[int, object]) -> _DeterministicEcKey:
        return self

    def __repr__(self) -> str:
        return "_DeterministicEcKey(<redacted>)"


def public_jwk(public: ec.EllipticCurvePublicKey) -> dict[str, str]:
    """The RFC 7517 public JWK of a P-256 key (``kty``, ``crv``, ``x``, ``y``)."""
    numbers = public.public_numbers()
    size = (public.curve.key_size + 7) // 8

    def b64(n: int) -> str:
        return base64.urlsafe_b64encode(n.to_bytes(size, "big")).rstrip(b"=").decode("ascii")

    return {"kty": "EC", "crv": "P-256", "x": b64(numbers.x), "y": b64(numbers.y)}


def jwk_thumbprint(public: ec.EllipticCurvePublicKey) -> str:
    """RFC 7638 JWK thumbprint (SHA-256, base64url): the key's ``kid``."""
    jwk = public_jwk(public)
    members = json.dumps({k: jwk[k] for k in ("crv", "kty", "x", "y")}, sort_keys=True,
                         separators=(",", ":"))
    digest = hashlib.sha256(members.encode("ascii")).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")


@dataclass(frozen=True, eq=False)
class EarSigningKey:
    """The verifier's EAR key: a signer that never shows itself, its public key and ``kid``.

    ``source`` (``pem:<path>`` or ``pkcs11:<token>/<label>``) is safe to log. ``deterministic``
    says whether equal inputs give equal signatures (RFC 6979: PEM keys)."""

    signer: ec.EllipticCurvePrivateKey = field(repr=False)
    source: str
    deterministic: bool
    _close: Callable[[], None] | None = field(default=None, repr=False)

    @property
    def public_key(self) -> ec.EllipticCurvePublicKey:
        """The verification key relying parties get (:meth:`jwks`)."""
        return self.signer.public_key()

    @property
    def kid(self) -> str:
        """The JWS ``kid``: the public key's RFC 7638 thumbprint."""
        return jwk_thumbprint(self.public_key)

    def jwk(self) -> dict[str, str]:
        """The public JWK with ``kid``, ``alg`` and ``use``."""
        return {**public_jwk(self.public_key), "kid": self.kid, "alg": "ES256", "use": "sig"}

    def jwks(self) -> dict[str, Any]:
        """The RFC 7517 JWK Set relying parties verify EARs with."""
        return {"keys": [self.jwk()]}

    def close(self) -> None:
        """Release the token session (PKCS#11); a no-op for a PEM key."""
        if self._close is not None:
            self._close()

    def __repr__(self) -> str:
        return f"EarSigningKey(source={self.source!r}, kid={self.kid!r})"

    __str__ = __repr__


def _check_pair(signer: ec.EllipticCurvePrivateKey, where: str) -> None:
    probe = b"hostgate-ear-key-probe"
    try:
        signer.public_key().verify(signer.sign(probe, ec.ECDSA(hashes.SHA256())), probe,
                                   ec.ECDSA(hashes.SHA256()))
    except InvalidSignature:
        raise EarKeyError(f"EAR key {where} does not match its public key") from None


def _is_encrypted_pem(key_pem: bytes) -> bool:
    return (b"-----BEGIN ENCRYPTED PRIVATE KEY-----" in key_pem
            or b"Proc-Type: 4,ENCRYPTED" in key_pem)


def load_pem_key(key_pem: bytes, passphrase: bytes, *, where: str = "pem") -> EarSigningKey:
    """An :class:`EarSigningKey` from an *encrypted* PEM P-256 key (an unencrypted one is
    refused). ``where`` names the key in errors (a path, never content)."""
    if len(key_pem) > MAX_PEM_BYTES:
        raise EarKeyError(f"EAR key {where} is over {MAX_PEM_BYTES} bytes")
    if not _is_encrypted_pem(key_pem):
        raise EarKeyError(f"EAR key {where} is not an encrypted PEM key; refusing a key stored "
                          "in clear (encrypt it, e.g. `openssl pkcs8 -topk8 -v2 aes-256-cbc`)")
    try:
        key = serialization.load_pem_private_key(key_pem, password=passphrase)
    except (ValueError, TypeError):
        raise EarKeyError(f"cannot decrypt the EAR key {where}: wrong passphrase or corrupt "
                          "key") from None
    except UnsupportedAlgorithm:
        raise EarKeyError(f"EAR key {where} uses an unsupported encryption") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey) or key.curve.name != CURVE:
        raise EarKeyError(f"EAR key {where} is not a P-256 EC key (ES256)")
    signer = _DeterministicEcKey(key)
    _check_pair(signer, where)
    return EarSigningKey(signer, f"pem:{where}", deterministic=True)


def load_pkcs11_key(module: Path, token_label: str, key_label: str, pin: bytes
                    ) -> EarSigningKey:
    """An :class:`EarSigningKey` whose P-256 key stays in a PKCS#11 token; its public key is
    the token's public-key object of the same label. One logged-in session is kept for the
    key's lifetime (:meth:`EarSigningKey.close` ends it)."""
    from pkcs11 import exceptions as p11e
    from pkcs11.util.ec import encode_ec_public_key

    where = f"pkcs11:{token_label}/{key_label}"
    found = open_token_key(module, token_label, key_label, pin, error=EarKeyError,
                           with_public=True)
    try:
        public = serialization.load_der_public_key(
            encode_ec_public_key(found.public))  # type: ignore[arg-type]
    except ValueError:
        found.close()
        raise EarKeyError(f"the public key labelled {key_label!r} in token {token_label!r} "
                          "does not decode") from None
    if not isinstance(public, ec.EllipticCurvePublicKey) or public.curve.name != CURVE:
        found.close()
        raise EarKeyError(f"PKCS#11 key {where} is not a P-256 EC key (ES256)")
    signer = Pkcs11EcKey(found.private, public, where, EarKeyError)
    try:
        _check_pair(signer, where)
    except (EarKeyError, p11e.PKCS11Error) as exc:
        found.close()
        if isinstance(exc, EarKeyError):
            raise
        raise EarKeyError(f"PKCS#11 key {where} cannot sign: {type(exc).__name__}") from None
    return EarSigningKey(signer, where, deterministic=False, _close=found.close)


# --- from the environment -----------------------------------------------------------------
def _path(env: Mapping[str, str], name: str) -> Path:
    value = env.get(name, "").strip()
    if not value:
        raise ConfigError(f"{name} is not set")
    return Path(value)


def read_bounded(path: Path, limit: int, what: str, name: str) -> bytes:
    """At most ``limit`` bytes of ``path``; a larger or unreadable file is a ``ConfigError``
    naming ``name`` (a variable or flag) and the path, never the content."""
    try:
        with path.open("rb") as fh:
            raw = fh.read(limit + 1)
    except OSError as exc:
        raise ConfigError(f"{name}: cannot read {path}: {exc.strerror}") from None
    if len(raw) > limit:
        raise ConfigError(f"{name}: {what} {path} is over {limit} bytes")
    return raw


def _secret(env: Mapping[str, str], name: str) -> bytes:
    value = read_bounded(_path(env, name), MAX_SECRET_BYTES, "file", name)
    value = value.removesuffix(b"\n").removesuffix(b"\r")
    if not value:
        raise ConfigError(f"{name}: the file is empty")
    return value


def parse_pkcs11_uri(uri: str) -> tuple[str, str]:
    """``(token label, object label)`` of ``HOSTGATE_VERIFIER_PKCS11_URI``
    (:func:`services.pkcs11keys.parse_pkcs11_uri`)."""
    return parse_token_uri(uri, uri_env=ENV_PKCS11_URI, pin_env=ENV_PKCS11_PIN_FILE)


def load_ear_key_from_env(env: Mapping[str, str]) -> EarSigningKey | None:
    """The EAR signing key the environment names (module docstring), or None when it names
    none (unsigned EARs)."""
    pem = any(env.get(n) for n in (ENV_EAR_KEY, ENV_EAR_PASSPHRASE_FILE))
    p11 = any(env.get(n) for n in (ENV_PKCS11_MODULE, ENV_PKCS11_URI, ENV_PKCS11_PIN_FILE))
    if pem and p11:
        raise ConfigError(f"both {ENV_EAR_KEY}/{ENV_EAR_PASSPHRASE_FILE} and "
                          f"{ENV_PKCS11_MODULE}/... are set; choose one EAR key source")
    if not pem and not p11:
        return None
    try:
        if pem:
            key_file = _path(env, ENV_EAR_KEY)
            passphrase = _secret(env, ENV_EAR_PASSPHRASE_FILE)
            key_pem = read_bounded(key_file, MAX_PEM_BYTES, "key", ENV_EAR_KEY)
            return load_pem_key(key_pem, passphrase, where=str(key_file))
        token, label = parse_pkcs11_uri(env.get(ENV_PKCS11_URI, ""))
        pin = _secret(env, ENV_PKCS11_PIN_FILE)
        return load_pkcs11_key(_path(env, ENV_PKCS11_MODULE), token, label, pin)
    except EarKeyError as exc:
        raise ConfigError(f"EAR signing key: {exc}") from None


__all__ = [
    "ENV_EAR_KEY",
    "ENV_EAR_PASSPHRASE_FILE",
    "ENV_PKCS11_MODULE",
    "ENV_PKCS11_PIN_FILE",
    "ENV_PKCS11_URI",
    "EarKeyError",
    "EarSigningKey",
    "jwk_thumbprint",
    "load_ear_key_from_env",
    "load_pem_key",
    "load_pkcs11_key",
    "parse_pkcs11_uri",
    "public_jwk",
    "read_bounded",
]
