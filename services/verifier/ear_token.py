"""The EAR as a signed JWT: a compact JWS (RFC 7515), ES256, over the EAR claims' JSON.

Built on PyJWT (``jwt.api_jws.PyJWS``, ``jwt.PyJWKSet``). The payload is *exactly* the bytes of
the canonical claims JSON the verifier computes (``services.verifier.ear``), so the unsigned
EAR and the signed one carry the same text, and audit replay compares the two without the
signing key (:func:`untrusted_claims_text`). Header: ``{"alg":"ES256","kid":<RFC 7638
thumbprint>,"typ":"JWT"}``.

Where it lives: a verifier with a signing key puts the compact JWS in ``hostgate.Verdict``'s
``ear_json`` (one without puts the claims' JSON there, as before): the record schema does not
change, so every record ever written and every reader already deployed keep working. A JSON
value starts with ``{``, a JWS with ``eyJ``: :func:`is_compact_jws` tells them apart.

Verifying (:func:`verify_token`, ``hostgate ear verify``): the header's ``alg`` must be ES256
(``none`` and every other one are refused before any key is used), the ``kid`` must name a key
given, the signature must verify, ``iat`` and ``exp`` must be integers with ``iat`` <= ``now`` +
leeway < ``exp`` + leeway and ``exp`` > ``iat``, the profile must be the EAR one, and with an
expected nonce ``eat_nonce`` must be it. Any failure is one :class:`EarTokenInvalid`.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

import jwt
from cryptography.hazmat.primitives.asymmetric import ec

from services.errors import ExitCode, HostgateError
from services.verifier import ear
from services.verifier.ear_key import EarSigningKey, jwk_thumbprint

ALG: Final = "ES256"
TYP: Final = "JWT"
LEEWAY_S: Final = 60
"""Clock skew allowed between the verifier that signed and whoever verifies."""
MAX_TOKEN_CHARS: Final = 256 * 1024


class EarTokenInvalid(HostgateError):
    """The token is not a valid hostgate EAR; ``reason`` is one of :data:`REASONS`."""

    exit_code = ExitCode.CHECK_FAILED

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


REASONS: Final = ("malformed", "alg", "kid", "signature", "time", "expired", "profile", "nonce")


def sign_claims(key: EarSigningKey, claims_text: str) -> str:
    """The compact JWS of ``claims_text`` (the canonical EAR claims JSON) under ``key``."""
    return jwt.api_jws.PyJWS().encode(claims_text.encode("ascii"), key.signer, algorithm=ALG,
                                      headers={"kid": key.kid, "typ": TYP})


def is_compact_jws(text: str) -> bool:
    """Whether ``text`` has the shape of a compact JWS (three base64url parts), not JSON."""
    return not text.startswith("{") and text.count(".") == 2


def _b64decode(part: str) -> bytes:
    try:
        return base64.urlsafe_b64decode(part + "=" * (-len(part) % 4))
    except (binascii.Error, ValueError):
        raise EarTokenInvalid("malformed", "the token is not base64url") from None


def untrusted_claims_text(ear_json: str) -> str:
    """The EAR claims' JSON text of a verdict's ``ear_json``: itself when unsigned, the payload
    when a compact JWS. **Untrusted**: the signature is not checked (:func:`verify_token`
    does); audit replay compares this with the claims it recomputes. A value that is neither
    is returned as it is (it then differs from any recomputed claims)."""
    if not is_compact_jws(ear_json):
        return ear_json
    try:
        return _b64decode(ear_json.split(".")[1]).decode("utf-8")
    except (EarTokenInvalid, UnicodeDecodeError):
        return ear_json


def untrusted_header(token: str) -> dict[str, Any]:
    """The JOSE header of ``token``, unverified."""
    if len(token) > MAX_TOKEN_CHARS or not is_compact_jws(token):
        raise EarTokenInvalid("malformed", "the token is not a compact JWS (three base64url "
                              "parts separated by '.')")
    try:
        header = json.loads(_b64decode(token.split(".")[0]))
    except (ValueError, UnicodeDecodeError):
        raise EarTokenInvalid("malformed", "the token's header is not JSON") from None
    if not isinstance(header, dict):
        raise EarTokenInvalid("malformed", "the token's header is not a JSON object")
    return header


@dataclass(frozen=True)
class VerificationKey:
    """A public key a relying party trusts, with its ``kid``."""

    kid: str
    public_key: ec.EllipticCurvePublicKey

    @classmethod
    def of(cls, public_key: ec.EllipticCurvePublicKey) -> VerificationKey:
        """The key with its RFC 7638 thumbprint as ``kid``."""
        return cls(jwk_thumbprint(public_key), public_key)


def keys_from_jwks(jwks: Mapping[str, Any]) -> tuple[VerificationKey, ...]:
    """The P-256 signing keys of a JWK Set (others are skipped); ValueError if none."""
    try:
        found = jwt.PyJWKSet.from_dict(dict(jwks)).keys
    except jwt.PyJWKSetError as exc:
        raise ValueError(f"not a usable JWK Set: {exc}") from None
    out = []
    for k in found:
        pub = k.key
        if isinstance(pub, ec.EllipticCurvePrivateKey):
            pub = pub.public_key()
        if isinstance(pub, ec.EllipticCurvePublicKey) and pub.curve.name == "secp256r1":
            out.append(VerificationKey(k.key_id or jwk_thumbprint(pub), pub))
    if not out:
        raise ValueError("the JWK Set holds no P-256 (ES256) key")
    return tuple(out)


@dataclass(frozen=True)
class VerifiedEar:
    """A token :func:`verify_token` accepted: its header's ``kid`` and its claims."""

    kid: str
    claims: Mapping[str, Any]

    @property
    def status(self) -> str:
        """``ear.status`` of the one submod."""
        sub = self.claims.get("submods", {}).get(ear.SUBMOD, {})
        return str(sub.get("ear.status", ""))


def _pick_key(header: Mapping[str, Any], keys: Sequence[VerificationKey]) -> VerificationKey:
    kid = header.get("kid")
    if kid is None and len(keys) == 1:
        return keys[0]
    match = [k for k in keys if k.kid == kid]
    if not match:
        raise EarTokenInvalid("kid", f"the token's kid {str(kid)[:64]!r} names none of the "
                              f"{len(keys)} key(s) given")
    return match[0]


def _check_time(claims: Mapping[str, Any], now_s: int) -> None:
    iat, exp = claims.get("iat"), claims.get("exp")
    if not (type(iat) is int and type(exp) is int):
        raise EarTokenInvalid("time", "the token's iat and exp must both be integers")
    if exp <= iat:
        raise EarTokenInvalid("time", f"the token expires (exp {exp}) before it was issued "
                              f"(iat {iat})")
    if iat > now_s + LEEWAY_S:
        raise EarTokenInvalid("time", f"the token was issued in the future (iat {iat}, now "
                              f"{now_s})")
    if exp + LEEWAY_S <= now_s:
        raise EarTokenInvalid("expired", f"the token expired at {exp} (now {now_s})")


def verify_token(token: str, keys: Sequence[VerificationKey], *, now_s: int,
                 nonce: bytes | None = None) -> VerifiedEar:
    """Verify a hostgate EAR token (module docstring) at ``now_s`` (seconds since the epoch);
    ``nonce``: the challenge nonce it must answer (``eat_nonce``), None to not check it."""
    token = token.strip()
    header = untrusted_header(token)
    if header.get("alg") != ALG:
        raise EarTokenInvalid("alg", f"the token's alg is {str(header.get('alg'))[:32]!r}; "
                              f"only {ALG} is accepted")
    key = _pick_key(header, keys)
    try:
        payload = jwt.api_jws.PyJWS().decode(token, key.public_key, algorithms=[ALG])
    except jwt.InvalidSignatureError:
        raise EarTokenInvalid("signature", "the token's signature does not verify with key "
                              f"{key.kid}") from None
    except jwt.InvalidTokenError as exc:
        raise EarTokenInvalid("malformed", f"the token cannot be read: {exc}") from None
    try:
        claims = json.loads(payload)
    except (ValueError, UnicodeDecodeError):
        raise EarTokenInvalid("malformed", "the token's payload is not JSON") from None
    if not isinstance(claims, dict):
        raise EarTokenInvalid("malformed", "the token's payload is not a JSON object")
    if claims.get("eat_profile") != ear.EAT_PROFILE:
        raise EarTokenInvalid("profile", f"the token's eat_profile is not {ear.EAT_PROFILE}")
    _check_time(claims, now_s)
    if nonce is not None and claims.get("eat_nonce") != ear.eat_nonce(nonce):
        raise EarTokenInvalid("nonce", "the token's eat_nonce is not the expected nonce")
    return VerifiedEar(key.kid, claims)


__all__ = [
    "ALG",
    "LEEWAY_S",
    "REASONS",
    "EarTokenInvalid",
    "VerificationKey",
    "VerifiedEar",
    "is_compact_jws",
    "keys_from_jwks",
    "sign_claims",
    "untrusted_claims_text",
    "untrusted_header",
    "verify_token",
]
