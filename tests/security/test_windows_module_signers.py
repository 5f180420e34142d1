"""Approving Windows modules by signer never admits what the digests would refuse (issue 19).

A Windows module (a ``SIPAEVENT_LOADEDMODULE_AGGREGATION``) names its signer (publisher and
issuer) inside SIPA data bound to PCR 13. That name only says who signed the image if the
Windows loader validated it (``ImageValidated``), code integrity was on (it refuses unsigned
images) and Secure Boot was on (otherwise nothing verified the boot manager that wrote the
record, and anything may have written it). So a drivers allow-list of signers approves a
module only then; otherwise only its Authenticode hash can.

A module is one record merged by hash across every block and PCR it is measured in. When the
measurements disagree on who signed it (two publishers, or one record with a publisher and one
without), no signer approves it: it needs its digest, so the merge can never make a module pass
that its separate measurements would have failed.

Attacks: (a) a host with Secure Boot off, or code integrity off or unmeasured, or an image the
loader did not validate, presents modules whose records name approved publishers; (b) a host
measures an image under the hash of an approved module with another signer, or with none.
The (a) cases passed on the code before issue 19 (signer approval asked nothing of Secure Boot,
code integrity or validation); the (b) cases are guards for the merge.
"""

from __future__ import annotations

import dataclasses
import hashlib

from services.tpm.claims import Claims
from services.tpm.eventlog import EventType, parse_event_log
from services.verifier.policy import ids
from services.verifier.policy.derive import Golden, derive_policy, golden_from_log
from services.verifier.policy.evaluate import evaluate, prepare, subject
from services.verifier.policy.loader import load_policy
from services.verifier.policy.results import Outcome
from services.verifier.policy.rules import DRIVER_PCR, code_in
from tests.unit.policy_helpers import CORPUS, golden, manifest, rule_policy_text

CONFLICT = "tpm.sipa.module_conflict"


def _u16(text: str) -> bytes:
    return text.encode("utf-16-le")


def variant_log(entry_id: str, edits: list[tuple[bytes, bytes]]) -> bytes:
    """``entry_id``'s log (single-bank SHA-256) with each byte string replaced, same length, in
    every EV_EVENT_TAG's data and the event's digest recomputed: a host whose Windows loader
    measured exactly that (its log replays to its own quote)."""
    raw = (CORPUS / manifest()[entry_id]["file"]).read_bytes()
    log = parse_event_log(raw)
    assert log.banks == ("sha256",)
    out = bytearray(raw)
    changed = 0
    for ev in log.events:
        if ev.event_type != EventType.EV_EVENT_TAG:
            continue
        data = ev.data
        for old, new in edits:
            assert len(old) == len(new)
            data = data.replace(old, new)
        if data == ev.data:
            continue
        changed += 1
        out[ev.data_offset:ev.data_offset + len(data)] = data
        at = ev.data_offset - 4 - 32  # TCG_PCR_EVENT2: ... digest (32), eventSize u32, event
        assert out[at:at + 32] == ev.digests["sha256"]
        out[at:at + 32] = hashlib.sha256(data).digest()
    assert changed, "the edit matched nothing"
    return bytes(out)


def _modules_by_publisher(g: Golden, publisher: str) -> list[bytes]:
    assert g.claims.windows is not None
    return [m.authenticode_hash for m in g.claims.windows.loaded_modules
            if m.authority_publisher == publisher]


def _signers_policy(g: Golden, *, extra: str = "") -> str:
    """A drivers allow-list: every publisher W03's modules name, and the UEFI driver's digest."""
    assert g.claims.windows is not None
    pubs = sorted({m.authority_publisher for m in g.claims.windows.loaded_modules
                   if m.authority_publisher})
    (uefi,) = code_in(g.claims, DRIVER_PCR)
    signers = "".join(f"        - {p!r}\n" for p in pubs)
    return rule_policy_text(
        "  codeIntegrity:\n    drivers:\n      allowedSigners:\n" + signers
        + f"      allowedDigests: [{{sha256: '{uefi.digests['sha256'].hex()}'}}]\n" + extra)


def _drivers(claims: Claims, g: Golden, policy: str) -> Outcome:
    v = evaluate(prepare(load_policy(policy)), subject(claims, g.events))
    r = v.result(ids.CI_DRIVERS)
    assert r is not None
    return r.outcome


def _signed_only(g: Golden) -> Claims:
    """W03's claims with only the module records that name a signer (so that a record without
    one, which needs its digest, cannot be why a case fails)."""
    w = g.claims.windows
    assert w is not None
    kept = tuple(m for m in w.loaded_modules if m.authority_publisher)
    return dataclasses.replace(g.claims, windows=dataclasses.replace(w, loaded_modules=kept))


def test_signer_approval_of_windows_modules_needs_secure_boot_on() -> None:
    g = golden("W03")
    policy = _signers_policy(g)
    claims = _signed_only(g)
    assert _drivers(claims, g, policy) is Outcome.PASS  # the honest boot: SB and CI on
    off = dataclasses.replace(claims, secure_boot=False)
    assert _drivers(off, g, policy) is Outcome.FAIL, (
        "Windows modules were approved by the signer their records name on a boot with Secure "
        "Boot off, where nothing verified the boot manager that wrote those records")
    unknown = dataclasses.replace(claims, secure_boot=None)
    assert _drivers(unknown, g, policy) is Outcome.FAIL


def test_signer_approval_of_windows_modules_needs_code_integrity_on() -> None:
    g = golden("W03")
    policy = _signers_policy(g)
    claims = _signed_only(g)
    w = claims.windows
    assert w is not None and w.code_integrity is True
    for ci in (False, None):  # off, or never measured: absence of evidence is a failure
        weak = dataclasses.replace(claims, windows=dataclasses.replace(w, code_integrity=ci))
        assert _drivers(weak, g, policy) is Outcome.FAIL, (
            f"Windows modules approved by signer with code integrity {ci}")


def test_signer_approval_needs_the_image_validated() -> None:
    g = golden("W03")
    policy = _signers_policy(g)
    claims = _signed_only(g)
    w = claims.windows
    assert w is not None
    first, *rest = w.loaded_modules
    for validated in (False, None):
        mods = (dataclasses.replace(first, image_validated=validated), *rest)
        weak = dataclasses.replace(claims, windows=dataclasses.replace(w, loaded_modules=mods))
        assert _drivers(weak, g, policy) is Outcome.FAIL, (
            f"a module the loader did not validate ({validated}) was approved by signer")


def test_an_image_under_an_approved_hash_with_another_signer_is_not_approved_by_signer() -> None:
    g = golden("W03")
    ms = _modules_by_publisher(g, "Microsoft Windows")
    hcp = _modules_by_publisher(g, "Microsoft Windows Hardware Compatibility Publisher")
    # every measurement of one HCP-signed module now carries a Microsoft Windows module's hash
    forged = golden_from_log(variant_log("W03", [(hcp[0], ms[0])]), "W03-conflict")
    assert forged.claims.windows is not None
    (merged,) = [m for m in forged.claims.windows.loaded_modules if m.authenticode_hash == ms[0]]
    assert any(a.reason == CONFLICT and not a.fatal for a in forged.claims.anomalies)
    # both publishers approved: still not approved by signer (who signed it is in dispute)
    policy = _signers_policy(g, extra=f"  evidence:\n    allowedAnomalies: [{CONFLICT}]\n")
    assert _drivers(g.claims, g, policy) is Outcome.PASS
    assert _drivers(forged.claims, forged, policy) is Outcome.FAIL
    # and the policy from-log derives from the honest log refuses it too, on the drivers rule
    derived = derive_policy([g]).policy
    v = evaluate(prepare(derived), forged.subject())
    r = v.result(ids.CI_DRIVERS)
    assert not v.passed and r is not None and r.outcome is Outcome.FAIL
    assert merged.file_path is None  # two paths were measured for one hash: neither is taken


def test_a_signed_and_an_unsigned_record_of_one_hash_are_not_approved_by_signer() -> None:
    g = golden("W03")
    ms = _modules_by_publisher(g, "Microsoft Windows")
    acronis = _modules_by_publisher(g, "Acronis International GMBH")
    assert len(ms[0]) == 32 and len(acronis[0]) == 20
    hcp = _modules_by_publisher(g, "Microsoft Windows Hardware Compatibility Publisher")
    # the HCP module's record, re-typed so that it names no publisher or issuer (unknown SIPA
    # leaf types are kept, not read), under a Microsoft Windows module's hash
    raw = (CORPUS / manifest()["W03"]["file"]).read_bytes()
    log = parse_event_log(raw)
    blob = next(ev.data for ev in log.events
                if ev.event_type == EventType.EV_EVENT_TAG and hcp[0] in ev.data and ev.pcr == 13)
    at = blob.index(hcp[0]) - 8  # SIPAEVENT_AUTHENTICODE_HASH header
    record_end = blob.index((0x00070009).to_bytes(4, "little"), at)  # its SHA-1 thumbprint
    old = blob[at:record_end]
    new = (old.replace((0x00070005).to_bytes(4, "little"), (0x000B0005).to_bytes(4, "little"))
              .replace((0x00070008).to_bytes(4, "little"), (0x000B0008).to_bytes(4, "little"))
              .replace(hcp[0], ms[0]))
    assert new != old
    forged = golden_from_log(variant_log("W03", [(old, new), (hcp[0], ms[0])]), "W03-unsigned")
    policy = _signers_policy(g, extra=f"  evidence:\n    allowedAnomalies: [{CONFLICT}]\n")
    assert _drivers(forged.claims, forged, policy) is Outcome.FAIL, (
        "a hash measured once without a signer was approved by the signer another record names")


def test_a_denied_signer_on_any_record_of_a_hash_fails() -> None:
    g = golden("W03")
    ms = _modules_by_publisher(g, "Microsoft Windows")
    hcp = _modules_by_publisher(g, "Microsoft Windows Hardware Compatibility Publisher")
    forged = golden_from_log(variant_log("W03", [(hcp[0], ms[0])]), "W03-denied")
    (uefi,) = code_in(g.claims, DRIVER_PCR)
    digests = "".join(f"        - {{sha256: '{d.hex()}'}}\n"
                      for d in (ms[0], uefi.digests["sha256"]))
    policy = rule_policy_text(
        "  codeIntegrity:\n    drivers:\n"
        "      deniedSigners: ['Microsoft Windows Hardware Compatibility Publisher']\n"
        "      allowedDigests:\n" + digests)
    v = evaluate(prepare(load_policy(policy)), subject(forged.claims, forged.events))
    r = v.result(ids.CI_DRIVERS)
    assert r is not None and r.outcome is Outcome.FAIL and "denied signer" in r.message, (
        "a signer measured for a hash, then disputed by another record of it, escaped the deny "
        "list")
