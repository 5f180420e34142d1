"""Issue 18, item 2: AR4SI values corrected (draft-ietf-rats-ar4si section 2.3; the same values
as veraison's EAR implementations).

* executables: a boot application the policy does not approve is 33 *unrecognized run-time*
  (warning tier), not 96 *contraindicated run-time*; a contraindication from another rule of
  the same claim still wins.
* storage-opaque: not claimed (0). The AK being fixedTPM is instance identity; the host key the
  issuer delivers ends up in a file on the host, so 2 *hw-keys-encrypted-secrets* was false.
"""

from __future__ import annotations

import json
from typing import Any

from services.verifier import ear, reasons
from services.verifier.core import appraise
from services.verifier.policy.ids import CI_BOOT_APPLICATIONS
from tests.conftest import corpus_path
from tests.support.soft_evidence import collected

BOOT_APPS = "policy.codeintegrity.boot_applications"


def _vector(*outcomes: tuple[str, bool], failed: tuple[str, ...] = ()) -> ear.TrustVector:
    return ear.trust_vector(ear.AppraisalFacts(True, True, failed, outcomes))


def test_values_are_the_drafts() -> None:
    assert (ear.APPROVED_BOOT, ear.UNRECOGNIZED_RUNTIME, ear.CONTRAINDICATED_RUNTIME) == \
        (3, 33, 96)
    assert ear.tier_of(ear.UNRECOGNIZED_RUNTIME) is ear.Tier.WARNING
    assert BOOT_APPS == CI_BOOT_APPLICATIONS


def test_unrecognised_boot_application_scores_33() -> None:
    v = _vector((BOOT_APPS, False), ("policy.bootchain.applications", True))
    assert v.executables == ear.UNRECOGNIZED_RUNTIME and v.status is ear.Tier.WARNING
    assert v.values()["executables"] == 33


def test_a_contraindication_of_the_same_claim_still_wins() -> None:
    v = _vector((BOOT_APPS, False), ("policy.bootchain.applications", False))
    assert v.executables == ear.CONTRAINDICATED_RUNTIME
    assert _vector((BOOT_APPS, False),
                   failed=(reasons.REPLAY_PCR_MISMATCH,)).executables == 96
    assert _vector(("policy.codeintegrity.drivers", False)).executables == 96


def test_approved_boot_applications_affirm() -> None:
    assert _vector((BOOT_APPS, True)).executables == ear.APPROVED_BOOT


def test_storage_opaque_is_not_claimed_for_a_verified_quote() -> None:
    v = _vector()
    assert v.instance_identity == ear.TRUSTWORTHY_INSTANCE and v.storage_opaque == ear.NO_CLAIM
    assert not hasattr(ear, "HW_KEYS_ENCRYPTED_SECRETS")


def test_a_corpus_verdict_claims_no_storage_opacity() -> None:
    manifest = json.loads((corpus_path() / "manifest.json").read_text())
    entry: dict[str, Any] = next(e for e in manifest["entries"] if e["id"] == "A40")
    rec = collected("A40", (corpus_path() / entry["file"]).read_bytes(), range(24))
    v = appraise(rec, None).verdict
    vector = json.loads(v.ear_json)["submods"][ear.SUBMOD]["ear.trustworthiness-vector"]
    assert vector["instance-identity"] == 2 and vector["storage-opaque"] == 0
    assert v.trustworthiness["storage_opaque"] == "NONE"
