"""Red team of issue 20: an event whose data does not hash to its digest no longer always fails.

The attacker is a host with a genuine TPM and root after a bad boot (threat model, attacker
(a)): it writes every byte of its log's data, the event type labels and the order of entries,
and may extend any PCR after boot (the quote then covers what it extended), but it cannot
change a digest the firmware extended. Each test builds one attack from a real corpus log
(``$HOSTGATE_CORPUS``), quotes it honestly (``tests.support.soft_evidence.collected``: the PCR
values its digests replay to) and requires the secure outcome: the verdict fails, or the log is
refused. The attacks that succeeded on the code of 064a094 say so in their docstring.
"""

from __future__ import annotations

import hashlib
import json
import struct
from functools import cache
from pathlib import Path

import pytest

import services.verifier.policy.rules as rules_pkg
from services.tpm.claim_records import UNVERIFIED_DATA, claims_an_unverified_event_may_hold
from services.tpm.decrepit import TPM12_LINE, tpm12_evidence
from services.tpm.eventlog import Event, EventLog, EventType, parse_event_log
from services.tpm.eventlog_builder import BANK_ALG_IDS
from services.tpm.uefi import decode_uefi_variable_data
from services.verifier.core import VerdictRecord, appraise
from services.verifier.policy.derive import derive_policy, golden_from_log
from services.verifier.policy_in_force import PolicyInForce, load_in_force, published_record
from tests.conftest import corpus_path
from tests.support.soft_evidence import RECEIVED_AT_MS, collected

T = EventType
ALL = range(24)
TDX_QUIRK = "tdx-duplicate-separator"
TOLERANT = (0, 1, 3, 5, 6)


# --- the attacker's tools: a real log, edited -----------------------------------------------
@cache
def _files() -> dict[str, str]:
    path = corpus_path() / "manifest.json"
    if not path.is_file():
        pytest.fail(f"event-log corpus not found at {corpus_path()} (set HOSTGATE_CORPUS)")
    return {e["id"]: e["file"] for e in json.loads(path.read_text())["entries"]}


def _log(entry_id: str) -> bytes:
    return (corpus_path() / _files()[entry_id]).read_bytes()


def _parsed(raw: bytes) -> EventLog:
    return parse_event_log(raw)


def _find(raw: bytes, etype: int, pcr: int, needle: bytes = b"") -> Event:
    return next(e for e in _parsed(raw).events
                if e.event_type == etype and e.pcr == pcr and needle in e.data)


def _variable(raw: bytes, pcr: int, name: str, etype: int = T.EV_EFI_VARIABLE_DRIVER_CONFIG
              ) -> Event:
    for e in _parsed(raw).events:
        if e.pcr != pcr or e.event_type != etype:
            continue
        try:
            if decode_uefi_variable_data(e.data).name == name:
                return e
        except Exception:
            continue
    raise LookupError(f"no {name} variable in PCR {pcr}")


def _relabelled(raw: bytes, ev: Event, etype: int, data: bytes | None = None) -> bytes:
    """``raw`` with ``ev``'s type label changed (not covered by its digest) and, if given, its
    data replaced in place (same length; the digests stay what the firmware extended)."""
    out = bytearray(raw)
    assert struct.unpack_from("<I", out, ev.offset + 4)[0] == ev.event_type
    struct.pack_into("<I", out, ev.offset + 4, etype)
    if data is not None:
        assert len(data) == len(ev.data)
        out[ev.data_offset:ev.data_offset + len(data)] = data
    return bytes(out)


def _garbled(ev: Event) -> bytes:
    """``ev``'s data with its last byte changed: it no longer hashes to the digest."""
    return ev.data[:-1] + bytes([ev.data[-1] ^ 0x5A])


def _appended(raw: bytes, *events: tuple[int, int, bytes]) -> bytes:
    """``raw`` with (pcr, type, data) events added after its last one, each extended with the
    hash of its data in every bank of the log: what root extends after boot."""
    log = _parsed(raw)
    last = log.events[-1]
    end = last.data_offset + len(last.data)
    banks = next(e for e in log.events if e.extends).digests
    records = b""
    for pcr, etype, data in events:
        if log.format == "sha1":  # TCG_PCR_EVENT
            body = struct.pack("<II", pcr, etype) + hashlib.sha1(data).digest()
        else:  # TCG_PCR_EVENT2
            body = struct.pack("<III", pcr, etype, len(banks))
            for bank in banks:
                body += struct.pack("<H", BANK_ALG_IDS[bank]) + hashlib.new(bank, data).digest()
        records += body + struct.pack("<I", len(data)) + data
    return raw[:end] + records + raw[end:]


def _in_force(text: str) -> PolicyInForce:
    record = published_record(text, version=1, published_at_ms=RECEIVED_AT_MS,
                              author="redteam-issue-20")
    return load_in_force(record)


def _derived(raw: bytes, source: str, **kwargs: object) -> str:
    return derive_policy([golden_from_log(raw, source, **kwargs)],  # type: ignore[arg-type]
                         policy_id="redteam", version="1").text


def _with_rule(text: str, name: str, expression: str) -> str:
    rule = f"  customRules:\n  - name: {name}\n    expression: '{expression}'\n"
    out = text.replace("\n  evidence:\n", "\n" + rule + "  evidence:\n", 1)
    assert "customRules" in out
    return out


def _accepting_unverified(text: str) -> str:
    """``text`` as derived from a golden log of the issue-20 server (an unbound S-CRTM version):
    it accepts ``tpm.binding.data_unverified``."""
    if UNVERIFIED_DATA in text:
        return text
    out = text.replace("    allowedAnomalies: []\n",
                       f"    allowedAnomalies:\n      - \"{UNVERIFIED_DATA}\"\n", 1)
    assert UNVERIFIED_DATA in out, out[-600:]
    return out


def _appraise(entry_id: str, raw: bytes, text: str) -> VerdictRecord:
    return appraise(collected(entry_id, raw, ALL), _in_force(text))


def _crtm_unbound(entry_id: str) -> bytes:
    """The issue-20 server: ``entry_id`` with its S-CRTM version string not what was hashed."""
    raw = _log(entry_id)
    ev = _find(raw, T.EV_S_CRTM_VERSION, 0)
    return _relabelled(raw, ev, ev.event_type, "X".encode("utf-16-le") + ev.data[2:])


# --- 1. security-relevant events relabelled as informational types -------------------------
RELABEL_CASES = [
    # (log, pcr, type, needle, informational label the attacker gives it)
    ("A42", 7, T.EV_EFI_VARIABLE_DRIVER_CONFIG, "SecureBoot".encode("utf-16-le"),
     T.EV_EFI_VARIABLE_BOOT),
    ("A42", 7, T.EV_EFI_VARIABLE_DRIVER_CONFIG, "dbx".encode("utf-16-le"), T.EV_S_CRTM_VERSION),
    ("A42", 7, T.EV_EFI_VARIABLE_AUTHORITY, b"", T.EV_ACTION),
    ("A42", 4, T.EV_EFI_BOOT_SERVICES_APPLICATION, b"", T.EV_ACTION),
    ("A42", 4, T.EV_EFI_BOOT_SERVICES_APPLICATION, b"", T.EV_EFI_GPT_EVENT),
    ("A42", 8, T.EV_IPL, b"grub_cmd: linux", T.EV_ACTION),
    ("A42", 9, T.EV_IPL, b"", T.EV_EFI_VARIABLE_BOOT),
    ("W03", 12, T.EV_EVENT_TAG, b"", T.EV_S_CRTM_VERSION),
    ("W03", 13, T.EV_EVENT_TAG, b"", T.EV_EFI_VARIABLE_BOOT2),
    ("A42", 0, T.EV_SEPARATOR, b"", T.EV_S_CRTM_VERSION),
    ("A43", 5, T.EV_EFI_ACTION, b"Calling", T.EV_ACTION),
    ("A43", 5, T.EV_EFI_ACTION, b"Calling", T.EV_EFI_GPT_EVENT),
    ("A43", 5, T.EV_SEPARATOR, b"", T.EV_EFI_VARIABLE_BOOT),
    ("A43", 6, T.EV_SEPARATOR, b"", T.EV_ACTION),
]


@pytest.mark.parametrize(("entry_id", "pcr", "etype", "needle", "label"), RELABEL_CASES,
                         ids=[f"{c[0]}-pcr{c[1]}-{T(c[2]).name}-as-{T(c[4]).name}"
                              for c in RELABEL_CASES])
def test_security_relevant_event_relabelled_informational_with_other_data_fails(
        entry_id: str, pcr: int, etype: int, needle: bytes, label: int) -> None:
    """Attack: relabel an event whose data a decision reads as a type whose mismatch is only
    ``data_unverified``, and give it data that does not hash (so nothing of it is read), under
    a policy that accepts ``data_unverified``. In PCRs 2, 4, 7-9 and 11-14 every label is
    security-relevant; elsewhere separators, UEFI variables and EFI actions are, whatever
    their label, because the label is not covered by the digest. Held before the fix in PCRs
    2, 4, 7-9 and 12-14; a separator or an EFI action string in PCRs 0, 5 and 6 under an
    informational label was only ``data_unverified`` and vanished from the fold (SUCCEEDED
    before the fix: the label decided). Their content is fixed, so their digest says what
    they are."""
    raw = _log(entry_id)
    ev = _find(raw, etype, pcr, needle)
    forged = _relabelled(raw, ev, label, _garbled(ev))
    text = _accepting_unverified(_derived(raw, entry_id))
    claims = golden_from_log(forged, entry_id).claims
    assert claims.failed_closed, [a for a in claims.anomalies if a.seq == ev.seq]
    assert not _appraise(entry_id, forged, text).passed


def test_informational_event_is_still_only_unverified() -> None:
    """The tolerance itself is kept: the S-CRTM version of the issue-20 server stays a
    non-fatal ``data_unverified`` (its digest is no separator's or action string's)."""
    raw = _crtm_unbound("A39")
    ev = _find(raw, T.EV_S_CRTM_VERSION, 0)
    claims = golden_from_log(raw, "A39").claims
    assert not claims.failed_closed
    assert [a.reason for a in claims.anomalies if a.seq == ev.seq] == [UNVERIFIED_DATA]


def test_error_separator_relabelled_as_crtm_version_is_still_an_error() -> None:
    """Attack: the firmware reported an error (PCR 0's separator is the error value 1: the
    log fails closed). The host relabels it EV_S_CRTM_VERSION, which PCR 0 allows, with data
    that does not hash: only ``data_unverified``, the error was gone (SUCCEEDED before the
    fix)."""
    raw = _log("A39")
    sep = _find(raw, T.EV_SEPARATOR, 0)
    error = b"\x01\x00\x00\x00"
    honest = bytearray(_relabelled(raw, sep, sep.event_type, error))
    for bank, digest in sep.digests.items():  # firmware that extended the error value
        at = honest.index(bytes(digest), sep.offset)
        honest[at:at + len(digest)] = hashlib.new(bank, error).digest()
    honest_log = bytes(honest)
    text = _accepting_unverified(_derived(raw, "A39"))
    assert not _appraise("A39", honest_log, text).passed
    sep = _find(honest_log, T.EV_SEPARATOR, 0)
    forged = _relabelled(honest_log, sep, T.EV_S_CRTM_VERSION, b"X\x00Y\x00")
    assert golden_from_log(forged, "A39").claims.failed_closed
    assert not _appraise("A39", forged, text).passed


def test_pcr1_variable_relabelled_as_boot_variable_feeds_no_decision() -> None:
    """A PCR 1 driver-config variable relabelled EV_EFI_VARIABLE_BOOT with unbound data is
    only ``data_unverified`` (its preimage cannot be told from a boot variable's). That is
    sound because no decision reads a PCR 1 variable any more: a SecureBoot or key database
    variable there fails closed (below), and the claims built-in rules read are unchanged."""
    raw = _log("A43")
    ev = next(e for e in _parsed(raw).events
              if e.pcr == 1 and e.event_type == T.EV_EFI_VARIABLE_DRIVER_CONFIG)
    forged = _relabelled(raw, ev, T.EV_EFI_VARIABLE_BOOT, _garbled(ev))
    honest, hidden = golden_from_log(raw, "A43").claims, golden_from_log(forged, "A43").claims
    for name in ("secure_boot", "key_databases", "authorities", "boot_applications",
                 "kernel_cmdlines", "uefi_debug_mode", "dma_protection_disabled", "windows"):
        assert getattr(hidden, name) == getattr(honest, name), name
    assert hidden.unverified_claim("key_databases") is not None  # for custom rules


# --- 2. something else believed: a Secure Boot variable outside PCR 7 -----------------------
def test_secure_boot_on_appended_to_pcr1_does_not_turn_secure_boot_on() -> None:
    """Attack: a host booted with Secure Boot off (A39: SecureBoot = 00 in PCR 7). Root extends
    PCR 1, an informational PCR no reference group of a derived policy pins, with a bound
    EV_EFI_VARIABLE_DRIVER_CONFIG ``SecureBoot = 01`` and logs it last. The fold read
    SecureBoot by name wherever measured, last one wins: Secure Boot read as ON and the
    policy requiring it passed (SUCCEEDED before the fix)."""
    raw = _log("A39")
    sb = _variable(raw, 7, "SecureBoot")
    assert sb.data[-1:] == b"\x00"
    forged = _appended(raw, (1, T.EV_EFI_VARIABLE_DRIVER_CONFIG, sb.data[:-1] + b"\x01"))
    text = _derived(raw, "A39").replace("enabled: false", "enabled: true", 1)
    assert "enabled: true" in text
    assert not _appraise("A39", raw, text).passed  # the honest host fails
    verdict = _appraise("A39", forged, text)
    assert not verdict.passed
    assert golden_from_log(forged, "A39").claims.secure_boot is not True


def test_approved_db_appended_to_pcr1_does_not_replace_pcr7s() -> None:
    """Attack: PCR 7's db holds an entry the policy does not approve. Root extends PCR 1 with
    a bound db variable holding no entry at all (a subset of any allow-list), logged last:
    ``Claims.database`` took the last db measured anywhere (SUCCEEDED before the fix)."""
    raw = _log("A39")
    db = _variable(raw, 7, "db")
    lines = _derived(raw, "A39").splitlines()
    at = lines.index("    db:") + 2  # "      allowed:", then the first entry and its name
    assert lines[at].lstrip().startswith("- sha256:") and "name:" in lines[at + 1]
    narrowed = "\n".join(lines[:at] + lines[at + 2:]) + "\n"
    assert not _appraise("A39", raw, narrowed).passed  # PCR 7's db has an unapproved entry
    name = "db".encode("utf-16-le")
    empty_db = db.data[:16] + struct.pack("<QQ", len(name) // 2, 0) + name
    assert decode_uefi_variable_data(empty_db).name == "db"
    forged = _appended(raw, (1, T.EV_EFI_VARIABLE_DRIVER_CONFIG, empty_db))
    assert not _appraise("A39", forged, narrowed).passed


# --- 3. CLAIMS_FROM_DATA is keyed by an untrusted label ------------------------------------
def _boot_option_named(raw: bytes, pcr: int) -> tuple[Event, str]:
    for e in _parsed(raw).events:
        if e.pcr == pcr and e.event_type == T.EV_EFI_VARIABLE_BOOT:
            name = decode_uefi_variable_data(e.data).name
            if name.startswith("Boot") and name != "BootOrder":
                return e, name
    raise LookupError("no Boot#### variable")


@pytest.mark.parametrize("label", [T.EV_EFI_GPT_EVENT, T.EV_ACTION])
def test_boot_option_relabelled_as_gpt_still_makes_boot_options_unverified(label: int) -> None:
    """Attack: a custom rule forbids a boot option (A43 measures its Boot#### variables in
    PCR 5). The host relabels that variable as EV_EFI_GPT_EVENT (or EV_ACTION), which PCR 5
    also allows, with data that does not hash: ``Claims.unverified_claim`` looked the affected
    claims up by the anomaly's *label*, GPT and EV_ACTION feed no claim, so ``boot_options``
    was not marked unverified, the option was gone and the rule passed (SUCCEEDED before the
    fix). The label is not covered by the digest: the event may be any type its PCR allows."""
    raw = _crtm_unbound("A43")
    ev, name = _boot_option_named(raw, 5)
    text = _with_rule(_derived(raw, "A43"), "no_such_option",
                      f'!claims.boot_options.exists(o, o.name == "{name}")')
    assert not _appraise("A43", raw, text).passed  # the honest host fails the rule
    forged = _relabelled(raw, ev, label, _garbled(ev))
    verdict = _appraise("A43", forged, text)
    assert not verdict.passed
    assert any("no_such_option" in f.rule_id and "cannot be confirmed" in f.sentence
               for f in verdict.failures), verdict.failures


def test_custom_rule_reaching_an_unverified_claim_without_naming_it_fails() -> None:
    """Attack on the check's form: ``_reads_unverified`` looked for the claim's name in the
    rule's text, but CEL reaches a field as ``claims["boot_" + "options"]`` too. With the
    option's data unbound the claim lacks it and the rule passed (SUCCEEDED before the fix)."""
    raw = _crtm_unbound("A43")
    ev, name = _boot_option_named(raw, 5)
    text = _with_rule(_derived(raw, "A43"), "no_such_option",
                      f'!claims["boot_" + "options"].exists(o, o.name == "{name}")')
    assert not _appraise("A43", raw, text).passed
    forged = _relabelled(raw, ev, ev.event_type, _garbled(ev))
    assert not _appraise("A43", forged, text).passed


def test_custom_rule_not_reading_unverified_claims_still_runs() -> None:
    """The fix keeps the tolerance: a rule reading only verified claims is judged as before."""
    raw = _crtm_unbound("A42")
    text = _with_rule(_derived(raw, "A42"), "sb_on", "claims.secure_boot == true")
    assert _appraise("A42", raw, text).passed


# --- 4. built-in rules on informational data -----------------------------------------------
def test_no_built_in_rule_reads_a_claim_informational_data_feeds() -> None:
    """Built-in rules do not consult ``Claims.unverified_claim``: they must read no claim an
    event of PCRs 0, 1, 3, 5 and 6 feeds, whatever its label (section 3). The Secure Boot and
    debug claims come from PCR 7 alone (a Secure Boot variable elsewhere fails closed,
    section 2; debug actions count only in PCR 7), tagged events from PCRs 9 and 12-14."""
    fed = set().union(*(claims_an_unverified_event_may_hold(p) or {"*"} for p in TOLERANT))
    pcr7_only = {"secure_boot", "key_databases", "uefi_debug_mode", "dma_protection_disabled",
                 # tagged events are read only in PCR 9 (Linux EFI stub) and 12-14 (SIPA)
                 "kernel_load_options", "linux_efi_stub_tags", "windows"}
    root = Path(rules_pkg.__file__).parent
    sources = "".join(p.read_text() for p in root.glob("*.py"))
    sources += (root.parent / "coverage.py").read_text() + (root.parent / "events.py").read_text()
    for claim in fed - pcr7_only:
        assert claim not in sources, claim


# --- 5. the policy from-log derives -------------------------------------------------------
def test_policy_from_a_log_with_unverified_data_lets_no_rule_rest_on_other_unbound_data(
) -> None:
    """A policy derived from the issue-20 server accepts ``data_unverified`` (any PCR: the
    anomaly list is not per PCR) and pins PCR 0, where the unbound event is. A host matching
    it may carry unbound data in PCR 5 (the GPT here), which no reference group pins; no
    built-in rule reads PCR 5's data, and a custom rule reading a claim PCR 5 may feed cannot
    be confirmed, so the acceptance lets nothing pass on that data."""
    raw = _crtm_unbound("A42")
    text = _derived(raw, "A42")
    assert _appraise("A42", raw, text).passed
    gpt = _find(raw, T.EV_EFI_GPT_EVENT, 5)
    forged = _relabelled(raw, gpt, gpt.event_type, _garbled(gpt))
    ruled = _with_rule(text, "boot_options_known", "claims.boot_options.size() < 100")
    assert _appraise("A42", raw, ruled).passed
    verdict = _appraise("A42", forged, ruled)
    assert not verdict.passed
    assert [f.rule_id for f in verdict.failures if "cannot be confirmed" in f.sentence]


def test_policy_from_a_log_with_unverified_data_pins_the_digest() -> None:
    """Another firmware under the same unbound S-CRTM string: PCR 0 differs, the group fails."""
    raw = _crtm_unbound("A42")
    text = _derived(raw, "A42")
    ev = _find(raw, T.EV_S_CRTM_VERSION, 0)
    forged = bytearray(raw)
    at = forged.index(bytes(ev.digests["sha256"]), ev.offset)
    forged[at] ^= 0xFF
    assert not _appraise("A42", bytes(forged), text).passed


# --- 6. TPM 1.2 ----------------------------------------------------------------------------
def test_tpm12_refusal_avoided_by_a_pcr7_variable_is_still_a_failure() -> None:
    """Avoiding the refusal (S07, a TPM 1.2 EFI log: root extends PCR 7 with a SecureBoot
    variable, so PCR 7 holds more than its separator) only gets the log judged as a TPM 2.0
    one, which a SHA-1-only log fails (the policy requires SHA-256)."""
    raw = _log("S07")
    assert tpm12_evidence(_parsed(raw)) is not None
    sb = _variable(_log("A39"), 7, "SecureBoot")
    forged = _appended(raw, (7, T.EV_EFI_VARIABLE_DRIVER_CONFIG, sb.data[:-1] + b"\x01"))
    assert tpm12_evidence(_parsed(forged)) is None
    text = _derived(_log("A40"), "A40")
    verdict = _appraise("S07", forged, text)
    assert not verdict.passed
    assert not _appraise("S07", raw, text).passed
    assert any(TPM12_LINE in f.sentence for f in _appraise("S07", raw, text).failures)


# --- 7. the TDX duplicate-separator quirk -------------------------------------------------
def test_tdx_quirk_does_not_place_a_separator_the_attacker_appended_to_hide_rtmr1() -> None:
    """Attack: with the quirk accepted, root appends one more value-0 separator to MR 1 of
    C03 (a third): the quirk answers only the second, so the third stays refused."""
    raw = _log("C03")
    forged = _appended(raw, (1, T.EV_SEPARATOR, b"\x00\x00\x00\x00"))
    assert not golden_from_log(raw, "C03", allowed_quirks=[TDX_QUIRK]).claims.failed_closed
    golden = golden_from_log(forged, "C03", allowed_quirks=[TDX_QUIRK])
    assert golden.claims.failed_closed
    text = _derived(raw, "C03", allowed_quirks=[TDX_QUIRK])
    assert not _appraise("C03", forged, text).passed  # (the verifier reads TPM logs only)


def test_tdx_quirk_never_applies_to_a_tpm_log() -> None:
    """A TPM host duplicating PCR 7's separator with the quirk named in its policy fails."""
    raw = _log("A42")
    forged = _appended(raw, (7, T.EV_SEPARATOR, b"\x00\x00\x00\x00"))
    text = _derived(raw, "A42").replace(
        "\n  evidence:\n", f"\n  evidence:\n    allowedQuirks:\n      - \"{TDX_QUIRK}\"\n", 1)
    assert not _appraise("A42", forged, text).passed


@pytest.mark.parametrize("label", [T.EV_POST_CODE, T.EV_S_CRTM_CONTENTS, T.EV_NONHOST_INFO])
def test_error_separator_relabelled_as_a_type_whose_data_is_never_hashed_is_an_error(
        label: int) -> None:
    """Attack: as above, but the error separator is relabelled as a type whose data no check
    hashes (a POST code, the S-CRTM contents: their digests cover firmware, not the data), so
    no binding fails at all. The digest is still that of the error value, and says what the
    event was."""
    raw = _log("A39")
    sep = _find(raw, T.EV_SEPARATOR, 0)
    error = b"\x01\x00\x00\x00"
    honest = bytearray(_relabelled(raw, sep, sep.event_type, error))
    for bank, digest in sep.digests.items():
        at = honest.index(bytes(digest), sep.offset)
        honest[at:at + len(digest)] = hashlib.new(bank, error).digest()
    honest_log = bytes(honest)
    text = _accepting_unverified(_derived(raw, "A39"))
    sep = _find(honest_log, T.EV_SEPARATOR, 0)
    forged = _relabelled(honest_log, sep, label)
    assert golden_from_log(forged, "A39").claims.failed_closed
    assert not _appraise("A39", forged, text).passed
