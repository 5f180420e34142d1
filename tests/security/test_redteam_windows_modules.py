"""Red team of issue 19: Windows modules merged by hash, approved by signer (W03/W04).

The attacker is a Windows host with a genuine TPM and root after a bad boot: it controls every
byte of its log except what the TPM extended (a SIPA block in PCRs 12-14 must hash to its
digest), the labels and the order; it can extend PCRs 12-14 after the Windows loader has closed
them with the WBCL separator. Also a careless policy author. Each test is built from the real
logs of the corpus: SIPA bytes edited in place (the digests recomputed, so the log replays), or
whole SIPA blocks inserted (before a PCR's separator: as if the loader itself had measured them,
a stronger attacker than the real one) or appended (after it: what root can really do).

Three attacks succeeded on the code of 0fa5fad and are fixed: a module record appended after the
WBCL separator gave a signer to a hash the loader had measured without one
(``tpm.sipa.after_separator``, fatal); test signing on let the loader validate an image signed by
any certificate and name any publisher, which the drivers rule then approved; ``policy
from-log``'s comment on an approved "Microsoft Windows Hardware Compatibility Publisher" did not
say that it signs every vendor's drivers.
"""

from __future__ import annotations

import hashlib
import struct
from typing import Final

from services.tpm import sipa
from services.tpm.eventlog import EventType, parse_event_log
from services.verifier.policy import ids
from services.verifier.policy.derive import Golden, derive_policy, golden_from_log
from services.verifier.policy.evaluate import evaluate, prepare, subject
from services.verifier.policy.loader import load_policy
from services.verifier.policy.results import Outcome
from tests.security.test_windows_module_signers import _signers_policy, variant_log
from tests.unit.policy_helpers import CORPUS, golden, manifest, rule_policy_text

CONFLICT = "tpm.sipa.module_conflict"
AFTER = "tpm.sipa.after_separator"
HCP = "Microsoft Windows Hardware Compatibility Publisher"
MS = "Microsoft Windows"
ACCEPT_CONFLICT = f"  evidence:\n    allowedAnomalies: [{CONFLICT}]\n"


def _u16(text: str) -> bytes:
    return text.encode("utf-16-le") + b"\x00\x00"


def _leaf(t: int, payload: bytes) -> bytes:
    return struct.pack("<II", t, len(payload)) + payload


def _container(t: int, *children: bytes) -> bytes:
    body = b"".join(children)
    return struct.pack("<II", t, len(body)) + body


def _record(digest: bytes, *, path: str = "\\Windows\\System32\\drivers\\rogue.sys",
            validated: bool | None = True, publisher: str | None = MS,
            issuer: str | None = "Microsoft Windows Production PCA 2011") -> bytes:
    """A ``SIPAEVENT_LOADEDMODULE_AGGREGATION`` as the loader writes one (empty hash: none)."""
    parts = [_leaf(sipa.FILE_PATH, _u16(path)), _leaf(sipa.IMAGE_SIZE, struct.pack("<Q", 4096)),
             _leaf(sipa.HASH_ALGORITHM_ID, struct.pack("<I", 0x800C))]
    if digest:
        parts.append(_leaf(sipa.AUTHENTICODE_HASH, digest))
    if validated is not None:
        parts.append(_leaf(sipa.IMAGE_VALIDATED, b"\x01" if validated else b"\x00"))
    if issuer is not None:
        parts.append(_leaf(sipa.AUTHORITY_ISSUER, _u16(issuer)))
    if publisher is not None:
        parts.append(_leaf(sipa.AUTHORITY_PUBLISHER, _u16(publisher)))
    return _container(sipa.LOADED_MODULE_AGGREGATION, *parts)


def _boundary(*children: bytes) -> bytes:
    return _container(sipa.TRUST_BOUNDARY, *children)


_BANK: Final = {"sha1": (0x0004, hashlib.sha1), "sha256": (0x000B, hashlib.sha256)}


def _event(pcr: int, etype: int, data: bytes, bank: str = "sha256",
           legacy: bool = False) -> bytes:
    """A TCG_PCR_EVENT2 in the log's one bank (a TCG_PCR_EVENT for a SHA-1 log in the legacy
    format, as W04), its digest over its data (bound)."""
    alg, h = _BANK[bank]
    head = struct.pack("<II", pcr, etype)
    if not legacy:
        head += struct.pack("<IH", 1, alg)
    return head + h(data).digest() + struct.pack("<I", len(data)) + data


def _raw(entry_id: str) -> bytes:
    return (CORPUS / manifest()[entry_id]["file"]).read_bytes()


def _format(raw: bytes) -> tuple[str, bool]:
    """The log's one bank and whether its events are the legacy SHA-1 TCG_PCR_EVENT."""
    log = parse_event_log(raw)
    (bank,) = log.banks
    ev = log.events[-1]
    legacy = bank == "sha1" and struct.unpack_from("<I", raw, ev.data_offset - 32)[0] == ev.pcr
    return bank, legacy


def insert_before_separator(raw: bytes, pcr: int, data: bytes) -> bytes:
    """``raw`` with a bound EV_EVENT_TAG in ``pcr`` just before its WBCL separator: a block the
    Windows loader itself measured."""
    bank, legacy = _format(raw)
    (sep,) = [ev for ev in parse_event_log(raw).events
              if ev.pcr == pcr and ev.event_type == EventType.EV_SEPARATOR]
    at = sep.data_offset - 4 - len(sep.digests[bank]) - (8 if legacy else 14)
    assert struct.unpack_from("<I", raw, at)[0] == pcr
    return raw[:at] + _event(pcr, EventType.EV_EVENT_TAG, data, bank, legacy) + raw[at:]


def append(raw: bytes, pcr: int, etype: int, data: bytes) -> bytes:
    """``raw`` with a bound event appended at the end (after every separator): root extending
    ``pcr`` after boot."""
    return raw + _event(pcr, etype, data, *_format(raw))


def _hashes(g: Golden, publisher: str) -> list[bytes]:
    assert g.claims.windows is not None
    return [m.authenticode_hash for m in g.claims.windows.loaded_modules
            if m.authority_publisher == publisher]


def _aggregation(raw: bytes, pcr: int, digest: bytes) -> bytes:
    """The raw bytes of the describing module record of ``digest`` in ``pcr``."""
    for ev in parse_event_log(raw).events:
        if ev.pcr != pcr or ev.event_type != EventType.EV_EVENT_TAG:
            continue
        for top in sipa.decode_sipa_events(ev.data):
            for e in top.walk():
                if e.type == sipa.LOADED_MODULE_AGGREGATION and any(
                        c.type == sipa.AUTHENTICODE_HASH and c.payload == digest
                        for c in e.children):
                    (size,) = struct.unpack_from("<I", ev.data, e.offset - 4)
                    return ev.data[e.offset - 8:e.offset + size]
    raise AssertionError("no such record")


def _drivers(g: Golden, policy: str) -> tuple[Outcome, str]:
    v = evaluate(prepare(load_policy(policy)), subject(g.claims, g.events))
    r = v.result(ids.CI_DRIVERS)
    assert r is not None
    return r.outcome, r.message


def _verdict_fails(g: Golden, policy: str) -> bool:
    return not evaluate(prepare(load_policy(policy)), subject(g.claims, g.events)).passed


# -- signer attributes where the loader did not put them ------------------------------------


def test_validation_and_signer_outside_the_module_record_sign_nothing() -> None:
    """A loader record of a new image with no validation and no signer; ImageValidated and an
    approved publisher in a sibling container, in an ELAM aggregation naming the same hash,
    and in a container nested inside the record. None of them is the record's."""
    g = golden("W03")
    rogue = hashlib.sha256(b"rogue driver").digest()
    bare = _record(rogue, validated=None, publisher=None, issuer=None)
    elsewhere = _container(0x40010004, _leaf(sipa.IMAGE_VALIDATED, b"\x01"),
                           _leaf(sipa.AUTHORITY_PUBLISHER, _u16(MS)))
    elam = _container(sipa.ELAM_AGGREGATION, _leaf(sipa.AUTHENTICODE_HASH, rogue),
                      _leaf(sipa.IMAGE_VALIDATED, b"\x01"),
                      _leaf(sipa.AUTHORITY_PUBLISHER, _u16(MS)))
    nested = _container(sipa.LOADED_MODULE_AGGREGATION,
                        bare[8:], _container(0x40010004, _leaf(sipa.IMAGE_VALIDATED, b"\x01"),
                                             _leaf(sipa.AUTHORITY_PUBLISHER, _u16(MS))))
    for block in (_boundary(bare, elsewhere), _boundary(bare, elam), _boundary(nested)):
        forged = golden_from_log(insert_before_separator(_raw("W03"), 13, block), "W03-x")
        assert forged.claims.windows is not None
        (m,) = [m for m in forged.claims.windows.loaded_modules
                if m.authenticode_hash == rogue]
        assert m.signer is None
        outcome, message = _drivers(forged, _signers_policy(g))
        assert outcome is Outcome.FAIL and "rogue.sys" in message


def test_a_second_record_claiming_validation_does_not_sign_the_hash() -> None:
    """The loader measured an HCP module unvalidated; a second record of the hash (even one the
    loader wrote) says validated: disputed, so no signer, even with the conflict accepted."""
    g = golden("W03")
    (h, *_) = _hashes(g, HCP)
    raw = _raw("W03")
    record = _aggregation(raw, 13, h)
    flag = _leaf(sipa.IMAGE_VALIDATED, b"\x01")
    assert record.count(flag) == 1
    unvalidated = record.replace(flag, _leaf(sipa.IMAGE_VALIDATED, b"\x00"))
    honest = golden_from_log(variant_log("W03", [(record, unvalidated)]), "W03-unvalidated")
    policy = _signers_policy(g, extra=ACCEPT_CONFLICT)
    assert _drivers(honest, policy)[0] is Outcome.FAIL  # the baseline: not validated
    forged_raw = insert_before_separator(variant_log("W03", [(record, unvalidated)]), 13,
                                         _boundary(record))
    forged = golden_from_log(forged_raw, "W03-revalidated")
    assert any(a.reason == CONFLICT for a in forged.claims.anomalies)
    outcome, message = _drivers(forged, policy)
    assert outcome is Outcome.FAIL and "image_validated" in message


# -- hash spoofing and merging ---------------------------------------------------------------


def test_a_rogue_record_under_an_approved_hash_approves_neither_image() -> None:
    """A rogue driver's PCR 13 record names a Microsoft module's hash (its PCR 12 record keeps
    its own) and an unknown publisher: the Microsoft hash is then disputed, and the rogue hash
    has no signer."""
    g = golden("W03")
    (ms, *_) = _hashes(g, MS)
    (h, *_) = _hashes(g, HCP)
    raw = _raw("W03")
    record = _aggregation(raw, 13, h)
    rogue = record.replace(h, ms).replace(HCP.encode("utf-16-le"),
                                          HCP.replace("Microsoft", "Nefarious").encode(
                                              "utf-16-le"))
    forged = golden_from_log(variant_log("W03", [(record, rogue)]), "W03-spoof")
    assert forged.claims.windows is not None
    merged = {m.authenticode_hash: m for m in forged.claims.windows.loaded_modules}
    assert merged[ms].signer is None and merged[h].signer is None
    for policy in (derive_policy([g]).policy, load_policy(_signers_policy(
            g, extra=ACCEPT_CONFLICT))):
        v = evaluate(prepare(policy), forged.subject())
        r = v.result(ids.CI_DRIVERS)
        assert not v.passed and r is not None and r.outcome is Outcome.FAIL


def test_a_path_conflict_keeps_the_signer_but_never_the_harmless_path() -> None:
    """W04 loads one Intel driver under two names: it keeps its signer (path is not who signed
    it) but takes neither name, so a report cannot show the harmless one."""
    g = golden("W04")
    assert g.claims.windows is not None
    (m,) = [m for m in g.claims.windows.loaded_modules if m.conflicts]
    assert m.file_path is None and m.signer is not None
    assert [c.attribute for c in m.conflicts] == ["file_path"]


# -- records the loader did not write ----------------------------------------------------------


def test_a_record_appended_after_the_wbcl_separator_signs_nothing() -> None:
    """The loader measured an HCP module's hash in PCR 12 only (its PCR 13 record re-typed, so
    no record describes it: it needs its digest). Root then extends PCR 13 with a record of
    that hash naming a validated Microsoft signer. Before the fix the merge took that record's
    signer and the drivers rule passed."""
    g = golden("W03")
    (h, *_) = _hashes(g, HCP)
    raw = _raw("W03")
    record = _aggregation(raw, 13, h)
    agg = struct.pack("<I", sipa.LOADED_MODULE_AGGREGATION)
    hidden = struct.pack("<I", 0x40010009) + record[4:]  # an unknown container: not a record
    assert record.startswith(agg)
    honest_raw = variant_log("W03", [(record, hidden)])
    honest = golden_from_log(honest_raw, "W03-hash-only")
    policy = _signers_policy(g)
    outcome, message = _drivers(honest, policy)
    assert outcome is Outcome.FAIL and "no signer was measured" in message
    for pcr in (12, 13, 14):
        forged = golden_from_log(append(honest_raw, pcr, EventType.EV_EVENT_TAG,
                                        _boundary(record)), f"W03-appended-{pcr}")
        assert any(a.reason == AFTER and a.fatal for a in forged.claims.anomalies)
        assert forged.claims.failed_closed
        assert _verdict_fails(forged, policy)


def test_code_integrity_on_appended_after_off_stays_off() -> None:
    """Code integrity measured off in the first block, on in every later one (and once more
    after the separator): it latches off, and no module is approved by signer."""
    g = golden("W03")
    raw = _raw("W03")
    log = parse_event_log(raw)
    first = next(ev for ev in log.events if ev.event_type == EventType.EV_EVENT_TAG
                 and ev.pcr == 12)
    on = _leaf(sipa.CODE_INTEGRITY, b"\x01")
    assert on in first.data
    edited = first.data.replace(on, _leaf(sipa.CODE_INTEGRITY, b"\x00"))
    off = golden_from_log(variant_log("W03", [(first.data, edited)]), "W03-ci-off")
    assert off.claims.windows is not None and off.claims.windows.code_integrity is False
    outcome, message = _drivers(off, _signers_policy(g))
    assert outcome is Outcome.FAIL and "code integrity was not measured on" in message
    again = golden_from_log(append(variant_log("W03", [(first.data, edited)]), 12,
                                   EventType.EV_EVENT_TAG, _boundary(on)), "W03-ci-again")
    assert again.claims.windows is not None and again.claims.windows.code_integrity is False
    assert _verdict_fails(again, _signers_policy(g))


def test_secure_boot_measured_off_later_fails() -> None:
    """SecureBoot measured on, then a second SecureBoot variable saying off appended to PCR 7:
    never read as on for the modules' signers; the log fails closed."""
    g = golden("W03")
    raw = _raw("W03")
    sb = next(ev for ev in parse_event_log(raw).events
              if ev.pcr == 7 and _u16("SecureBoot")[:-2] in ev.data)
    assert sb.data.endswith(b"\x01")
    forged = golden_from_log(append(raw, 7, EventType.EV_EFI_VARIABLE_DRIVER_CONFIG,
                                    sb.data[:-1] + b"\x00"), "W03-sb-later")
    assert forged.claims.failed_closed
    assert _verdict_fails(forged, _signers_policy(g))


# -- test signing ------------------------------------------------------------------------------


def test_test_signing_on_approves_no_module_by_signer() -> None:
    """With test signing on the loader validates images signed by any certificate, and names
    whatever publisher the certificate says. A policy that approves signers but does not check
    test signing itself (a careless author) passed such a host before the fix."""
    g = golden("W03")
    off = _leaf(sipa.TEST_SIGNING, b"\x00")
    forged = golden_from_log(variant_log("W03", [(off, _leaf(sipa.TEST_SIGNING, b"\x01"))]),
                             "W03-testsigning")
    assert forged.claims.windows is not None and forged.claims.windows.test_signing is True
    policy = _signers_policy(g)
    assert _drivers(g, policy)[0] is Outcome.PASS
    outcome, message = _drivers(forged, policy)
    assert outcome is Outcome.FAIL and "test signing" in message
    derived = derive_policy([forged])
    drivers = derived.policy.spec.code_integrity.drivers  # type: ignore[union-attr]
    assert drivers is not None and drivers.allowed_signers is None
    assert "test signing not off" in derived.text


# -- modules with no hash ----------------------------------------------------------------------


def test_modules_without_a_hash_are_judged() -> None:
    g = golden("W03")
    unsigned = _record(b"", path="\\x\\nohash.sys", validated=None, publisher=None, issuer=None)
    forged = golden_from_log(insert_before_separator(_raw("W03"), 13, _boundary(unsigned)),
                             "W03-nohash")
    outcome, message = _drivers(forged, _signers_policy(g))
    assert outcome is Outcome.FAIL and "nohash.sys" in message
    denied = _record(b"", path="\\x\\evil.sys", publisher="Nefario GmbH", issuer=None)
    forged = golden_from_log(insert_before_separator(_raw("W03"), 13, _boundary(denied)),
                             "W03-nohash-denied")
    policy = rule_policy_text("  codeIntegrity:\n    drivers:\n"
                              "      deniedSigners: ['Nefario GmbH']\n")
    outcome, message = _drivers(forged, policy)
    assert outcome is Outcome.FAIL and "denied signer" in message


# -- a careless author -------------------------------------------------------------------------


def test_a_disputed_signer_fails_with_the_conflict_accepted() -> None:
    """W04: a second record of a CrowdStrike module names Microsoft Windows (both publishers
    approved, the conflict anomaly accepted by the policy): disputed, not approved by signer."""
    g = golden("W04")
    assert g.claims.windows is not None
    (h, *_) = _hashes(g, "CrowdStrike, Inc.")
    forged = golden_from_log(insert_before_separator(_raw("W04"), 13, _boundary(
        _record(h, publisher=MS))), "W04-disputed")
    assert forged.claims.windows is not None
    (m,) = [m for m in forged.claims.windows.loaded_modules if m.authenticode_hash == h]
    assert m.signer is None
    pubs = sorted({x.authority_publisher for x in g.claims.windows.loaded_modules
                   if x.authority_publisher})
    digests = "".join(f"        - {{sha1: '{a.digests['sha1'].hex()}'}}\n"
                      for a in g.claims.boot_applications if a.pcr == 2)
    policy = rule_policy_text(
        "  banks:\n    require: [sha1]\n"
        "  codeIntegrity:\n    drivers:\n      allowedSigners:\n"
        + "".join(f"        - {p!r}\n" for p in pubs)
        + ("      allowedDigests:\n" + digests if digests else "") + ACCEPT_CONFLICT)
    assert _drivers(g, policy)[0] is Outcome.PASS  # W04's own path conflict keeps its signer
    outcome, message = _drivers(forged, policy)
    assert outcome is Outcome.FAIL and "disagree" in message


def test_derived_approval_of_the_hardware_compatibility_publisher_says_it_is_every_vendor() -> None:
    """``policy from-log`` on W03 approves HCP by name (its four modules were validated under
    Secure Boot and code integrity). That approves any vendor's driver Microsoft signed: a
    driver no golden log measured, from nobody the operator chose, passes. The comment must
    say so (it said only "approves any module it signs")."""
    g = golden("W03")
    derived = derive_policy([g])
    line = next(t for t in derived.text.splitlines() if HCP in t)
    assert "other vendors' drivers" in line or "other vendors' drivers" in derived.text.split(
        HCP, 1)[1][:600]
    (h, *_) = _hashes(g, HCP)
    other = golden_from_log(variant_log("W03", [(h, hashlib.sha256(b"any vendor").digest())]),
                            "W03-any-vendor")
    assert evaluate(prepare(derived.policy), other.subject()).passed  # the breadth, documented
