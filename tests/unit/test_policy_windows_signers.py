"""``policy from-log`` on Windows logs approves modules by signer (issue 19, item 4).

A driver update signed by the same approved publisher passes; one from a publisher the golden
logs never measured fails. Variants of the real W03 log are built by editing its SIPA data in
place and recomputing the event digests (``variant_log``): each is a host whose log replays.
"""

from __future__ import annotations

import dataclasses

from services.verifier.policy import ids
from services.verifier.policy.derive import Golden, derive_policy, golden_from_log
from services.verifier.policy.evaluate import evaluate, prepare
from services.verifier.policy.results import Outcome
from tests.security.test_windows_module_signers import variant_log
from tests.unit.policy_helpers import golden

ACRONIS = "Acronis International GMBH"


def _module(g: Golden, name: str) -> bytes:
    assert g.claims.windows is not None
    return next(m.authenticode_hash for m in g.claims.windows.loaded_modules
                if (m.file_path or "").lower().endswith(name))


def test_derived_windows_policy_approves_modules_by_signer() -> None:
    g = golden("W03")
    derived = derive_policy([g])
    drivers = derived.policy.spec.code_integrity.drivers  # type: ignore[union-attr]
    assert drivers is not None and drivers.allowed_signers is not None
    assert ACRONIS in drivers.allowed_signers and "Microsoft Windows" in drivers.allowed_signers
    listed = {r.hex for r in drivers.allowed_digests or ()}
    assert _module(g, "file_tracker.sys").hex() not in listed  # by its signer, not its digest
    assert len(listed) == 1  # the option-ROM driver of PCR 2 only: every module names a signer
    assert evaluate(prepare(derived.policy), g.subject()).passed


def test_driver_update_from_the_same_publisher_passes() -> None:
    g = golden("W03")
    policy = prepare(derive_policy([g]).policy)
    old = _module(g, "file_tracker.sys")  # Acronis, SHA-1 Authenticode hash
    update = golden_from_log(variant_log("W03", [(old, bytes(b ^ 0x5A for b in old))]),
                             "W03-driver-update")
    assert _module(update, "file_tracker.sys") != old
    v = evaluate(policy, update.subject())
    assert v.passed, [r.message for r in v.failed]


def test_driver_from_an_unknown_publisher_fails() -> None:
    g = golden("W03")
    policy = prepare(derive_policy([g]).policy)
    old = _module(g, "file_tracker.sys")
    rogue = golden_from_log(variant_log("W03", [
        (old, bytes(b ^ 0x5A for b in old)),
        ("Acronis International GMBH".encode("utf-16-le"),
         "Nefario International GMBH".encode("utf-16-le"))]), "W03-unknown-publisher")
    v = evaluate(policy, rogue.subject())
    r = v.result(ids.CI_DRIVERS)
    assert not v.passed and r is not None and r.outcome is Outcome.FAIL
    assert "Nefario International GMBH" in r.message and "not allowed" in r.message
    assert r.event is not None and r.event.pcr == 13 and r.event.seq == 31  # the SIPA record


def test_a_module_without_a_signer_is_approved_by_digest() -> None:
    g = golden("W03")
    w = g.claims.windows
    assert w is not None
    first, *rest = w.loaded_modules
    unsigned = dataclasses.replace(first, authority_publisher=None, authority_issuer=None)
    claims = dataclasses.replace(g.claims, windows=dataclasses.replace(
        w, loaded_modules=(unsigned, *rest)))
    derived = derive_policy([dataclasses.replace(g, claims=claims)]).policy
    drivers = derived.spec.code_integrity.drivers  # type: ignore[union-attr]
    assert drivers is not None
    assert first.authenticode_hash.hex() in {r.hex for r in drivers.allowed_digests or ()}


def test_without_secure_boot_every_module_is_approved_by_digest() -> None:
    g = golden("W03")
    off = dataclasses.replace(g, claims=dataclasses.replace(g.claims, secure_boot=False))
    derived = derive_policy([off])
    drivers = derived.policy.spec.code_integrity.drivers  # type: ignore[union-attr]
    assert drivers is not None and drivers.allowed_signers is None
    assert len(drivers.allowed_digests or ()) == 1 + 92
    assert "Secure Boot or code integrity not on" in derived.text
