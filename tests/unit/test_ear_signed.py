"""Issue 18, item 2: the EAR as a signed JWT (ES256) with ``eat_nonce``.

Signed by ``services.verifier.ear_token`` (PyJWT) and checked here also with a second,
independent JOSE library, jwcrypto (the ``[test]`` extra): its JWS verification, its JWK Set
import and its RFC 7638 thumbprint. Evidence is the soft-signed corpus evidence of
``tests.support.soft_evidence`` (a fixed P-256 AK, RFC 6979), read in place from the corpus.
"""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from jwcrypto import jwk as jwc_jwk
from jwcrypto import jws as jwc_jws

from services.errors import ConfigError
from services.runtime.codec import Codec
from services.verifier import ear
from services.verifier.audit_replay import compare_verdicts
from services.verifier.config import VerifierConfig
from services.verifier.core import appraise, error_verdict
from services.verifier.ear_key import (
    ENV_EAR_KEY,
    ENV_EAR_PASSPHRASE_FILE,
    ENV_PKCS11_MODULE,
    EarSigningKey,
    load_ear_key_from_env,
    load_pem_key,
)
from services.verifier.ear_token import (
    LEEWAY_S,
    EarTokenInvalid,
    VerificationKey,
    is_compact_jws,
    keys_from_jwks,
    sign_claims,
    untrusted_claims_text,
    verify_token,
)
from tests.conftest import corpus_path
from tests.support.soft_evidence import NONCE, RECEIVED_AT_MS, collected

PASSPHRASE = b"ear test passphrase"
ENTRY = "A40"
NOW_S = RECEIVED_AT_MS // 1000 + 3600
"""An hour after the evidence was received: the token is fresh."""


def _pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.BestAvailableEncryption(PASSPHRASE))


FIXED = ec.derive_private_key(0x1D2C3B4A5968778695A4B3C2D1E0F00112233445566778899AABBCCDDEEFF00,
                              ec.SECP256R1())
"""A fixed verifier key, so the determinism test compares across runs too."""
OTHER = ec.derive_private_key(0x5A5A5A5A11112222333344445555666677778888999900001111222233334444,
                              ec.SECP256R1())


@pytest.fixture(scope="module")
def key() -> EarSigningKey:
    return load_pem_key(_pem(FIXED), PASSPHRASE, where="test-key.pem")


@pytest.fixture(scope="module")
def evidence() -> dict[str, Any]:
    manifest = json.loads((corpus_path() / "manifest.json").read_text())
    entry = next(e for e in manifest["entries"] if e["id"] == ENTRY)
    return collected(ENTRY, (corpus_path() / entry["file"]).read_bytes(), range(24))


@pytest.fixture(scope="module")
def token(key: EarSigningKey, evidence: dict[str, Any]) -> str:
    return appraise(evidence, None, ear_key=key).verdict.ear_json


def _keys(k: EarSigningKey) -> tuple[VerificationKey, ...]:
    return keys_from_jwks(k.jwks())


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _reason(token: str, keys: tuple[VerificationKey, ...], **kw: Any) -> str:
    with pytest.raises(EarTokenInvalid) as err:
        verify_token(token, keys, **{"now_s": NOW_S, **kw})
    return err.value.reason


# -- the token -------------------------------------------------------------------------------

def test_good_token_verifies_with_the_nonce_and_carries_the_unsigned_claims(
        key: EarSigningKey, evidence: dict[str, Any], token: str) -> None:
    assert is_compact_jws(token) and token.startswith("eyJ")
    result = verify_token(token, _keys(key), now_s=NOW_S, nonce=NONCE)
    unsigned = appraise(evidence, None).verdict.ear_json
    assert untrusted_claims_text(token) == unsigned  # the payload is the claims' bytes
    assert result.claims == json.loads(unsigned) and result.kid == key.kid
    assert result.claims["eat_nonce"] == _b64(NONCE)
    assert result.claims["exp"] - result.claims["iat"] == ear.EAR_VALIDITY_S
    header = json.loads(base64.urlsafe_b64decode(token.split(".")[0] + "=="))
    assert header == {"alg": "ES256", "kid": key.kid, "typ": "JWT"}


def test_signed_verdicts_are_reproducible_byte_for_byte(evidence: dict[str, Any]) -> None:
    # RFC 6979: a fresh load of the same key signs the same claims with the same bytes
    codec = Codec.load()
    a = appraise(evidence, None, ear_key=load_pem_key(_pem(FIXED), PASSPHRASE))
    b = appraise(evidence, None, ear_key=load_pem_key(_pem(FIXED), PASSPHRASE))
    assert codec.encode("hostgate.Verdict", a.record) == codec.encode("hostgate.Verdict", b.record)


def test_wrong_key_is_refused(token: str) -> None:
    other = load_pem_key(_pem(OTHER), PASSPHRASE)
    assert _reason(token, _keys(other)) == "kid"  # its kid names a key not given
    forged = (VerificationKey(load_pem_key(_pem(FIXED), PASSPHRASE).kid, other.public_key),)
    assert _reason(token, forged) == "signature"  # same kid, other key: the signature fails


def test_wrong_nonce_is_refused(key: EarSigningKey, token: str) -> None:
    assert _reason(token, _keys(key), nonce=b"\x00" * 32) == "nonce"


@pytest.mark.parametrize("alg", ["none", "HS256", "ES384", "RS256"])
def test_any_alg_but_es256_is_refused(key: EarSigningKey, token: str, alg: str) -> None:
    _, payload, signature = token.split(".")
    header = _b64(json.dumps({"alg": alg, "kid": key.kid, "typ": "JWT"}).encode())
    assert _reason(f"{header}.{payload}.", _keys(key)) == "alg"
    assert _reason(f"{header}.{payload}.{signature}", _keys(key)) == "alg"


def test_tampered_payload_is_refused(key: EarSigningKey, token: str) -> None:
    header, payload, signature = token.split(".")
    claims = json.loads(base64.urlsafe_b64decode(payload + "=="))
    claims["submods"][ear.SUBMOD]["ear.status"] = "affirming"
    claims["exp"] += 10 * 365 * 86400
    forged = _b64(ear.canonical(claims).encode())
    assert _reason(f"{header}.{forged}.{signature}", _keys(key)) == "signature"
    assert _reason(f"{header}.{payload}.{signature[:-4]}AAAA", _keys(key)) == "signature"


def test_expired_and_future_tokens_are_refused(key: EarSigningKey, token: str) -> None:
    claims = json.loads(untrusted_claims_text(token))
    assert _reason(token, _keys(key), now_s=claims["exp"] + LEEWAY_S) == "expired"
    verify_token(token, _keys(key), now_s=claims["exp"] + LEEWAY_S - 1)  # within the leeway
    assert _reason(token, _keys(key), now_s=claims["iat"] - LEEWAY_S - 1) == "time"
    backwards = ear.canonical({**claims, "exp": claims["iat"]})
    assert _reason(sign_claims(key, backwards), _keys(key)) == "time"


def test_malformed_tokens_are_refused(key: EarSigningKey) -> None:
    for bad in ("", "not a token", "a.b", "{\"iat\":1}", "eyJ.eyJ.x.y", "!!.!!.!!"):
        assert _reason(bad, _keys(key)) == "malformed", bad
    not_ear = sign_claims(key, ear.canonical({"iat": NOW_S, "exp": NOW_S + 60}))
    assert _reason(not_ear, _keys(key)) == "profile"


def test_error_verdicts_are_signed_too(key: EarSigningKey, evidence: dict[str, Any]) -> None:
    v = error_verdict(evidence, "verifier.internal_error", "boom", ear_key=key).verdict
    result = verify_token(v.ear_json, _keys(key), now_s=NOW_S, nonce=NONCE)
    assert result.claims["submods"][ear.SUBMOD]["ear.trustworthiness-vector"][
        "instance-identity"] == ear.VERIFIER_MALFUNCTION


# -- a second, independent JOSE library: jwcrypto --------------------------------------------

def test_jwcrypto_verifies_the_token_with_the_published_jwks(
        key: EarSigningKey, evidence: dict[str, Any], token: str) -> None:
    keyset = jwc_jwk.JWKSet.from_json(json.dumps(key.jwks()))
    public = keyset.get_key(key.kid)
    assert public is not None and public.thumbprint() == key.kid  # RFC 7638, independently
    checked = jwc_jws.JWS()
    checked.deserialize(token)
    checked.verify(public, alg="ES256")
    assert checked.jose_header["alg"] == "ES256"
    assert checked.payload.decode() == appraise(evidence, None).verdict.ear_json


def test_jwcrypto_refuses_a_tampered_token_and_another_key(key: EarSigningKey, token: str
                                                            ) -> None:
    header, payload, signature = token.split(".")
    other = jwc_jwk.JWK.from_pyca(OTHER.public_key())
    for bad, with_key in ((f"{header}.{payload[:-2]}AA.{signature}", key.jwk()),
                          (token, json.loads(other.export_public()))):
        checked = jwc_jws.JWS()
        checked.deserialize(bad)
        with pytest.raises(jwc_jws.InvalidJWSSignature):
            checked.verify(jwc_jwk.JWK(**with_key), alg="ES256")


def test_a_jwcrypto_signed_ear_verifies_here(key: EarSigningKey, token: str) -> None:
    signer = jwc_jwk.JWK.from_pyca(FIXED)
    other = jwc_jws.JWS(untrusted_claims_text(token).encode())
    other.add_signature(signer, alg="ES256",
                        protected=json.dumps({"alg": "ES256", "kid": key.kid}))
    result = verify_token(other.serialize(compact=True), _keys(key), now_s=NOW_S, nonce=NONCE)
    assert result.claims == json.loads(untrusted_claims_text(token))


# -- audit replay compares the signed claims, not the signature ------------------------------

def test_audit_replay_reproduces_a_signed_verdict_without_the_key(
        key: EarSigningKey, evidence: dict[str, Any]) -> None:
    recorded = appraise(evidence, None, ear_key=key).record
    assert compare_verdicts(recorded, appraise(evidence, None).record) == ()
    header, payload, signature = recorded["ear_json"].split(".")
    claims = json.loads(base64.urlsafe_b64decode(payload + "=="))
    claims["submods"][ear.SUBMOD]["ear.status"] = "none"
    edited = {**recorded, "ear_json": f"{header}.{_b64(ear.canonical(claims).encode())}."
              f"{signature}"}
    diffs = compare_verdicts(edited, appraise(evidence, None).record)
    assert [d.field for d in diffs] == ["ear_json"]


# -- the key from the environment ------------------------------------------------------------

def _env(tmp_path: Path, pem: bytes, passphrase: bytes = PASSPHRASE) -> dict[str, str]:
    where = tmp_path / f"case{len(list(tmp_path.iterdir()))}"
    where.mkdir()
    (where / "ear.pem").write_bytes(pem)
    (where / "pass").write_bytes(passphrase + b"\n")
    return {"HOSTGATE_POLICY_ID": "p", ENV_EAR_KEY: str(where / "ear.pem"),
            ENV_EAR_PASSPHRASE_FILE: str(where / "pass")}


def test_config_carries_the_key_from_the_environment(tmp_path: Path) -> None:
    cfg = VerifierConfig.from_env(_env(tmp_path, _pem(FIXED)))
    assert cfg.ear_key is not None and cfg.ear_key.deterministic
    assert cfg.ear_key.kid == load_pem_key(_pem(FIXED), PASSPHRASE).kid
    assert "PRIVATE" not in repr(cfg) and PASSPHRASE.decode() not in repr(cfg.ear_key)
    assert VerifierConfig.from_env({"HOSTGATE_POLICY_ID": "p"}).ear_key is None


def test_config_refuses_bad_keys_naming_files_not_secrets(tmp_path: Path) -> None:
    clear = FIXED.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    p384 = ec.generate_private_key(ec.SECP384R1()).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(PASSPHRASE))
    cases = [(_env(tmp_path, clear), "not an encrypted PEM key"),
             (_env(tmp_path, _pem(FIXED), b"wrong"), "wrong passphrase"),
             (_env(tmp_path, p384), "not a P-256"),
             ({**_env(tmp_path, _pem(FIXED)), ENV_PKCS11_MODULE: "x.so"}, "choose one")]
    for env, message in cases:
        with pytest.raises(ConfigError) as err:
            load_ear_key_from_env(env)
        assert message in str(err.value)
        assert PASSPHRASE.decode() not in str(err.value) and "wrong\n" not in str(err.value)
