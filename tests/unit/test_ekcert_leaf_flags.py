"""Leaves without the CA flag still verify as EK certificates (the guard beside
``tests/security/test_ekcert_ca_leaf.py``: refusing CA leaves must not refuse real EKs)."""

from __future__ import annotations

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec

from services.tpm.ekcert import verify_ek_certificate
from tests.security.test_ekcert_ca_leaf import NOW, _cert


def test_leaves_without_ca_flag_still_verify() -> None:
    root_key = ec.generate_private_key(ec.SECP256R1())
    root: x509.Certificate = _cert("Root", root_key, "Root", root_key, ca=True)
    for ca in (False, None):  # cA=FALSE, and no basicConstraints at all (TCG allows both)
        leaf = _cert("EK", ec.generate_private_key(ec.SECP256R1()), "Root", root_key, ca=ca)
        assert verify_ek_certificate(leaf, trusted=[root], now=NOW).chain[-1] == root
