"""``hostgate ear jwks|verify``: the verifier's signed attestation results, for relying parties.

``jwks`` prints the JWK Set of the verifier's EAR key (the one the environment names, as the
verifier stage loads it: :mod:`services.verifier.ear_key`, or the public key in ``--key``).
``verify`` checks one token (:func:`services.verifier.ear_token.verify_token`): exit 0 when
valid, 1 (:attr:`ExitCode.CHECK_FAILED`) when not, 5 (:attr:`ExitCode.CONFIG`) when the keys
given cannot be read.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from services.errors import ConfigError, ExitCode
from services.runtime.cli_errors import error_document
from services.tpm.cli_conventions import add_json_flag, command_group, print_json
from services.verifier.ear_key import (
    MAX_PEM_BYTES,
    jwk_thumbprint,
    load_ear_key_from_env,
    public_jwk,
    read_bounded,
)
from services.verifier.ear_token import (
    MAX_TOKEN_CHARS,
    EarTokenInvalid,
    VerificationKey,
    keys_from_jwks,
    verify_token,
)

__all__ = ["register"]


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Register ``hostgate ear`` and its sub-commands."""
    sub = command_group(
        subparsers, "ear",
        help="publish the EAR key (JWKS) and verify signed attestation results",
        description="The verifier signs each verdict's EAT Attestation Result (EAR) as an "
        "ES256 JWT with eat_nonce. Print the JWK Set relying parties verify it with, or "
        "verify one token.")

    p = sub.add_parser(
        "jwks", help="print the JWK Set of the verifier's EAR key",
        description="Print the JWK Set (RFC 7517) of the EAR signing key the environment "
        "names (HOSTGATE_VERIFIER_EAR_KEY and its passphrase file, or "
        "HOSTGATE_VERIFIER_PKCS11_*), or of the public key in --key.")
    p.add_argument("--key", type=Path, metavar="PEM",
                   help="a PEM public key or certificate instead of the environment's key")
    p.set_defaults(func=_jwks)

    p = sub.add_parser(
        "verify", help="verify a signed EAR (signature, alg, iat/exp, nonce)",
        description="Verify a compact-JWS EAR: alg ES256 only, a kid among the keys given, "
        "the signature, iat and exp (60 s leeway), the EAR profile and, with --nonce, "
        "eat_nonce. Keys: --jwks or --key, else the environment's EAR key. Exit 0 when "
        "valid, 1 when not.")
    p.add_argument("token", metavar="TOKEN", help="the compact JWS, or - to read it from stdin")
    keys = p.add_mutually_exclusive_group()
    keys.add_argument("--jwks", type=Path, metavar="FILE", help="a JWK Set (JSON) to trust")
    keys.add_argument("--key", type=Path, metavar="PEM",
                      help="a PEM public key or certificate to trust")
    p.add_argument("--nonce", metavar="HEX",
                   help="the challenge nonce the EAR must answer (hex)")
    add_json_flag(p, "print the verification result (and the claims) as JSON")
    p.set_defaults(func=_verify)


def _pem_public_key(path: Path) -> ec.EllipticCurvePublicKey:
    raw = read_bounded(path, MAX_PEM_BYTES, "key", "--key")
    try:
        if b"CERTIFICATE" in raw:
            public: Any = x509.load_pem_x509_certificate(raw).public_key()
        else:
            public = serialization.load_pem_public_key(raw)
    except ValueError:
        raise ConfigError(f"--key {path} is not a PEM public key or certificate") from None
    if not isinstance(public, ec.EllipticCurvePublicKey) or public.curve.name != "secp256r1":
        raise ConfigError(f"--key {path} is not a P-256 EC key (ES256)")
    return public


def _env_keys() -> tuple[VerificationKey, ...]:
    key = load_ear_key_from_env(os.environ)
    if key is None:
        raise ConfigError("no EAR key: give --jwks or --key, or set HOSTGATE_VERIFIER_EAR_KEY "
                          "and HOSTGATE_VERIFIER_EAR_PASSPHRASE_FILE (or "
                          "HOSTGATE_VERIFIER_PKCS11_*)")
    try:
        return (VerificationKey(key.kid, key.public_key),)
    finally:
        key.close()


def _jwks(args: argparse.Namespace) -> int:
    if args.key is not None:
        public = _pem_public_key(args.key)
        doc = {"keys": [{**public_jwk(public), "kid": jwk_thumbprint(public), "alg": "ES256",
                         "use": "sig"}]}
    else:
        key = load_ear_key_from_env(os.environ)
        if key is None:
            raise ConfigError("no EAR key: set HOSTGATE_VERIFIER_EAR_KEY and "
                              "HOSTGATE_VERIFIER_EAR_PASSPHRASE_FILE (or "
                              "HOSTGATE_VERIFIER_PKCS11_*), or give --key")
        try:
            doc = key.jwks()
        finally:
            key.close()
    print_json(doc)
    return ExitCode.OK


def _trusted_keys(args: argparse.Namespace) -> tuple[VerificationKey, ...]:
    if args.jwks is not None:
        try:
            return keys_from_jwks(json.loads(read_bounded(args.jwks, MAX_PEM_BYTES, "JWKS", "--jwks")))
        except (ValueError, UnicodeDecodeError, AttributeError, TypeError) as exc:
            raise ConfigError(f"--jwks {args.jwks}: {exc}") from None
    if args.key is not None:
        return (VerificationKey.of(_pem_public_key(args.key)),)
    return _env_keys()


def _nonce(text: str | None) -> bytes | None:
    if text is None:
        return None
    try:
        return bytes.fromhex(text)
    except ValueError:
        raise ConfigError(f"--nonce {text[:40]!r} is not hex") from None


def _token(arg: str) -> str:
    if arg != "-":
        return arg
    return sys.stdin.read(MAX_TOKEN_CHARS + 1)


def _verify(args: argparse.Namespace) -> int:
    keys = _trusted_keys(args)
    nonce = _nonce(args.nonce)
    try:
        result = verify_token(_token(args.token), keys, now_s=int(time.time()), nonce=nonce)
    except EarTokenInvalid as exc:
        if args.json:
            doc = error_document(exc, ExitCode.CHECK_FAILED)
            print_json({**doc, "valid": False, "reason": exc.reason})
        print(f"hostgate: error: invalid EAR ({exc.reason}): {exc}", file=sys.stderr)
        return ExitCode.CHECK_FAILED
    claims = dict(result.claims)
    if args.json:
        print_json({"ok": True, "valid": True, "kid": result.kid,
                    "nonce_checked": nonce is not None, "claims": claims})
    else:
        print(f"valid EAR: signed by {result.kid}; ear.status {result.status}; iat "
              f"{claims['iat']}, exp {claims['exp']}; eat_nonce "
              f"{'matches' if nonce is not None else 'not checked'}")
    return ExitCode.OK
