"""``hostgate ear jwks|verify`` through the real entry point: output, ``--json`` and exit codes
(``services.errors.ExitCode``: 0 valid, 1 a bad token, 5 keys that cannot be read, 2 usage)."""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from services.cli import main
from services.errors import ExitCode
from services.verifier import ear
from services.verifier.ear_key import ENV_EAR_KEY, ENV_EAR_PASSPHRASE_FILE, load_pem_key
from services.verifier.ear_token import sign_claims
from tests.support.soft_evidence import NONCE

PASSPHRASE = b"cli passphrase"
KEY = ec.derive_private_key(0x0F1E2D3C4B5A69788796A5B4C3D2E1F00F1E2D3C4B5A69788796A5B4C3D2E1F0,
                            ec.SECP256R1())


def _claims(**over: Any) -> str:
    import time

    now = int(time.time())
    claims = ear.ear_claims(ear.TrustVector(instance_identity=2), iat_seconds=now,
                            policy_id_uri="policy://hostgate/none", nonce=NONCE)
    return ear.canonical({**claims, **over})


@pytest.fixture
def env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    pem = KEY.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.BestAvailableEncryption(PASSPHRASE))
    (tmp_path / "ear.pem").write_bytes(pem)
    (tmp_path / "pass").write_bytes(PASSPHRASE)
    monkeypatch.setenv(ENV_EAR_KEY, str(tmp_path / "ear.pem"))
    monkeypatch.setenv(ENV_EAR_PASSPHRASE_FILE, str(tmp_path / "pass"))
    return tmp_path


@pytest.fixture
def token() -> str:
    return sign_claims(load_pem_key(KEY.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(PASSPHRASE)), PASSPHRASE), _claims())


def test_jwks_prints_the_environment_key(env: Path, capsys: pytest.CaptureFixture[str]
                                         ) -> None:
    assert main(["ear", "jwks"]) == ExitCode.OK
    doc = json.loads(capsys.readouterr().out)
    assert [k["kty"] + k["crv"] + k["alg"] + k["use"] for k in doc["keys"]] == ["ECP-256ES256sig"]
    assert "d" not in doc["keys"][0]  # public only
    (env / "jwks.json").write_text(json.dumps(doc))


def test_jwks_from_a_public_key_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "pub.pem").write_bytes(KEY.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
    assert main(["ear", "jwks", "--key", str(tmp_path / "pub.pem")]) == ExitCode.OK
    assert json.loads(capsys.readouterr().out)["keys"][0]["kid"]


def test_verify_good_token_with_jwks_and_nonce_json(env: Path, token: str,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["ear", "jwks"]) == ExitCode.OK
    (env / "jwks.json").write_text(capsys.readouterr().out)
    argv = ["ear", "verify", token, "--jwks", str(env / "jwks.json"), "--nonce", NONCE.hex()]
    assert main([*argv, "--json"]) == ExitCode.OK
    doc = json.loads(capsys.readouterr().out)
    assert doc["ok"] and doc["valid"] and doc["nonce_checked"]
    assert doc["claims"]["eat_nonce"] == ear.eat_nonce(NONCE)
    assert main(argv) == ExitCode.OK
    assert capsys.readouterr().out.startswith("valid EAR: signed by ")


def test_verify_with_the_environment_key_and_with_a_pem(env: Path, token: str,
                                                        capsys: pytest.CaptureFixture[str]
                                                        ) -> None:
    assert main(["ear", "verify", token]) == ExitCode.OK
    (env / "pub.pem").write_bytes(KEY.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
    assert main(["ear", "verify", token, "--key", str(env / "pub.pem")]) == ExitCode.OK


def test_verify_bad_tokens_exit_check_failed_with_a_reason(
        env: Path, token: str, capsys: pytest.CaptureFixture[str]) -> None:
    header, payload, _ = token.split(".")
    none = base64.urlsafe_b64encode(b'{"alg":"none","typ":"JWT"}').rstrip(b"=").decode()
    cases = {
        "nonce": [token, "--nonce", "00" * 32],
        "alg": [f"{none}.{payload}."],
        "signature": [f"{header}.{payload}.AAAA"],
        "malformed": ["garbage"],
    }
    for reason, argv in cases.items():
        assert main(["ear", "verify", *argv, "--json"]) == ExitCode.CHECK_FAILED, reason
        captured = capsys.readouterr()
        doc = json.loads(captured.out)
        assert doc["ok"] is False and doc["valid"] is False and doc["exit_status"] == 1
        assert doc["reason"] == reason, (reason, doc)
        assert captured.err.startswith("hostgate: error: invalid EAR (")
        assert len(captured.err.splitlines()) == 1


def test_verify_expired_token(env: Path, capsys: pytest.CaptureFixture[str]) -> None:
    old = _claims(iat=1_000_000, exp=1_000_060)
    signed = sign_claims(load_pem_key((env / "ear.pem").read_bytes(), PASSPHRASE), old)
    assert main(["ear", "verify", signed, "--json"]) == ExitCode.CHECK_FAILED
    assert json.loads(capsys.readouterr().out)["reason"] == "expired"


def test_verify_keys_that_cannot_be_read_are_config_errors(
        tmp_path: Path, token: str, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(ENV_EAR_KEY, raising=False)
    monkeypatch.delenv(ENV_EAR_PASSPHRASE_FILE, raising=False)
    (tmp_path / "bad.json").write_text('{"keys": []}')
    assert main(["ear", "verify", token, "--jwks", str(tmp_path / "bad.json")]) == \
        ExitCode.CONFIG
    assert main(["ear", "verify", token, "--jwks", str(tmp_path / "absent.json")]) == \
        ExitCode.CONFIG
    assert main(["ear", "verify", token]) == ExitCode.CONFIG
    assert main(["ear", "verify", token, "--nonce", "xyz"]) == ExitCode.CONFIG
    err = capsys.readouterr().err.splitlines()
    assert all(line.startswith("hostgate: error: ") for line in err) and len(err) == 4


def test_usage_mistakes(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["ear"]) == ExitCode.USAGE
    assert main(["ear", "verify"]) == ExitCode.USAGE
    assert main(["ear", "verify", "t", "--jwks", "a", "--key", "b"]) == ExitCode.USAGE
