"""The EAR key in a PKCS#11 token: SoftHSM2 in a temp dir, the key pair generated inside it.

A token's CKM_ECDSA is randomised, so two signatures of one verdict differ; audit replay
compares the signed claims and still reproduces them (``services.verifier.audit_replay``).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from services.errors import ConfigError
from services.verifier import ear
from services.verifier.config import VerifierConfig
from services.verifier.ear_key import (
    ENV_PKCS11_MODULE,
    ENV_PKCS11_PIN_FILE,
    ENV_PKCS11_URI,
    EarKeyError,
    EarSigningKey,
    load_pkcs11_key,
)
from services.verifier.ear_token import keys_from_jwks, sign_claims, verify_token
from tests.support.softhsm import TOKENS

TOKEN = "hostgate-verifier"
PIN = TOKENS[TOKEN].pin
LABEL = "ear-signing"


@pytest.fixture(scope="module")
def module(softhsm: Path) -> Path:
    """The session's SoftHSM2 module (tests.support.softhsm), with this module's EAR key made
    in its own token."""
    import pkcs11
    from pkcs11.util.ec import encode_named_curve_parameters

    tok = pkcs11.lib(str(softhsm)).get_token(token_label=TOKEN)
    with tok.open(user_pin=PIN, rw=True) as session:
        params = session.create_domain_parameters(
            pkcs11.KeyType.EC,
            {pkcs11.Attribute.EC_PARAMS: encode_named_curve_parameters("secp256r1")},
            local=True)
        params.generate_keypair(store=True, label=LABEL)
    return softhsm


@pytest.fixture
def hsm_key(module: Path) -> Iterator[EarSigningKey]:
    key = load_pkcs11_key(module, TOKEN, LABEL, PIN.encode())
    yield key
    key.close()


def test_token_key_signs_ears_that_verify(hsm_key: EarSigningKey) -> None:
    claims = ear.canonical(ear.ear_claims(ear.TrustVector(), iat_seconds=1000,
                                          policy_id_uri="policy://hostgate/none",
                                          nonce=b"n" * 32))
    a, b = sign_claims(hsm_key, claims), sign_claims(hsm_key, claims)
    assert not hsm_key.deterministic and a.split(".")[:2] == b.split(".")[:2]
    for token in (a, b):
        assert verify_token(token, keys_from_jwks(hsm_key.jwks()), now_s=1001,
                            nonce=b"n" * 32).kid == hsm_key.kid
    assert "ear-signing" in repr(hsm_key) and PIN not in repr(hsm_key)


def test_config_loads_the_token_key_and_refuses_a_wrong_pin(module: Path, tmp_path: Path
                                                             ) -> None:
    (tmp_path / "pin").write_text(PIN + "\n")
    env = {"HOSTGATE_POLICY_ID": "p", ENV_PKCS11_MODULE: str(module),
           ENV_PKCS11_URI: f"pkcs11:token={TOKEN};object={LABEL}",
           ENV_PKCS11_PIN_FILE: str(tmp_path / "pin")}
    cfg = VerifierConfig.from_env(env)
    assert cfg.ear_key is not None and cfg.ear_key.source == f"pkcs11:{TOKEN}/{LABEL}"
    cfg.ear_key.close()
    (tmp_path / "pin").write_text("0000")
    with pytest.raises(ConfigError, match="wrong PIN") as err:
        VerifierConfig.from_env(env)
    assert "0000" not in str(err.value)
    with pytest.raises(ConfigError, match="pin-value"):
        VerifierConfig.from_env({**env, ENV_PKCS11_URI: f"pkcs11:token={TOKEN}?pin-value=1"})


def test_an_unknown_token_or_label_is_named(module: Path) -> None:
    """The module loads; what is missing is the token or the key, and the error says which
    (python-pkcs11's NoSuchToken is a RuntimeError: it must not read as a module failure)."""
    with pytest.raises(EarKeyError, match="token 'nope' not found"):
        load_pkcs11_key(module, "nope", LABEL, PIN.encode())
    with pytest.raises(EarKeyError, match="no unique EC key pair labelled 'other'"):
        load_pkcs11_key(module, TOKEN, "other", PIN.encode())
