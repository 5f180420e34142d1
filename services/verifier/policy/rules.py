"""The built-in rules: each reads claims and yields :class:`~.results.RuleResult`\\ s.

Every rule is a pure function ``(spec section, Subject) -> list[RuleResult]``. A rule is only
evaluated when its policy section asks for something. What every rule may rely on, and what
``evaluate`` enforces around them (``docs/design/threat-model.md``):

* **Absence is never a pass.** Claims are read only from replay-verified events; a rule whose
  PCRs (``coverage.RULE_PCRS``) were not quoted and replayed fails "cannot be confirmed"
  (``evaluate`` overrides its result). Evidence that is missing fails the rule.
* **Not applicable only when proven.** The Windows-only rules (debug controls, code integrity,
  DEP, HVCI, SI policy) are not applicable only on a host whose verified boot matched a reference
  group of platform ``linux`` or ``other``; on any other host without a measured Windows boot
  configuration they fail. The Linux-only rules (kernel command line, IMA) are not applicable
  only on a host that matched a ``windows`` group. A Windows boot configuration in PCRs 12-14
  proves nothing by itself: any root on any OS can extend those PCRs.
* **Digests approve only in the banks the policy requires** (``banks.require``, SHA-256 by
  default); a denial matches in any bank. A host cannot get an image approved by its digest in a
  bank the policy does not rely on (``TPM2_PCR_Extend`` takes one digest per bank, chosen freely).
* **No rule depends on the order of events in different PCRs** (nothing covers it): signer rules
  use the set of authorities measured in PCR 7, never a pairing of an authority with an image.
  A denied signer anywhere in PCR 7 fails the rule; an image not approved by digest is approved by
  signer only if Secure Boot was measured on and every signing authority PCR 7 measured is an
  approved signer.
* Boot applications are every code event of PCR 4, drivers every code event of PCR 2
  (``services.tpm.pcr_types.CODE_PCRS``), whatever their labels say.
* Secure Boot state / PK / KEK / db / dbx not measured -> **fail**; on a Windows host, a flag
  that was never measured -> **fail**, except hypervisor debug when the hypervisor was not
  launched (Windows only measures it when the hypervisor starts; corpus W03) -> pass.
* Reference groups: a host PCR missing from the claims never matches.
* Claims that are not replay-verified, or with a fatal anomaly (claims' own fail-closed
  verdict), or a non-fatal anomaly the policy does not accept -> fail (always evaluated).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Final

from services.tpm.claims import Authority, BootApplication, Claims, KeyDatabase, LoadOptions
from services.tpm.eventlog import event_type_name
from services.tpm.sipa import WindowsBootConfig
from services.verifier.policy import ids
from services.verifier.policy.events import EventIndex, shorten
from services.verifier.policy.kernel_params import (
    COMMAND_LINE_SIZE,
    UnreadableCommandLine,
    forbidden_hit,
    kernel_parameters,
    load_options_forms,
    missing_required,
)
from services.verifier.policy.model import (
    DEBUG_FLAGS,
    STRONG_BANKS,
    TOLERANT_PCRS,
    BankSpec,
    BootChainSpec,
    CmdlineSpec,
    CodeIntegritySpec,
    DebugSpec,
    EvidenceSpec,
    ImageList,
    ImaList,
    RefDigest,
    ReferenceGroup,
    SecureBootSpec,
    TpmSpec,
)
from services.verifier.policy.results import EventRef, Outcome, RuleResult

PASS, FAIL, NA = Outcome.PASS, Outcome.FAIL, Outcome.NOT_APPLICABLE
NON_WINDOWS: Final = frozenset({"linux", "other"})

_BANK_ORDER: Final = ("sha512", "sha384", "sha256", "sm3_256", "sha1")
_HASH_SIZES: Final = {20: "sha1", 32: "sha256", 48: "sha384", 64: "sha512"}
_FLAG_WORDS: Final = {
    "boot_debugging": "Boot debugging",
    "kernel_debugger": "The kernel debugger",
    "hypervisor_debug": "Hypervisor debugging",
    "test_signing": "Test signing",
    "flight_signing": "Flight signing",
    "safe_mode": "Safe mode",
    "win_pe": "Windows PE",
}
_FLAG_IDS: Final = {
    "boot_debugging": ids.DEBUG_BOOT_DEBUGGING,
    "kernel_debugger": ids.DEBUG_KERNEL_DEBUGGER,
    "hypervisor_debug": ids.DEBUG_HYPERVISOR_DEBUG,
    "test_signing": ids.DEBUG_TEST_SIGNING,
    "flight_signing": ids.DEBUG_FLIGHT_SIGNING,
    "safe_mode": ids.DEBUG_SAFE_MODE,
    "win_pe": ids.DEBUG_WIN_PE,
}
_MODULE_SUFFIXES: Final = (".ko", ".ko.xz", ".ko.gz", ".ko.zst")


@dataclass(frozen=True)
class QuoteFacts:
    """What the verified quote itself says about the TPM (TPMS_CLOCK_INFO.safe, the TPM's
    firmwareVersion): signed by the AK, so claims a policy can check."""

    clock_safe: bool
    firmware_version: int


@dataclass(frozen=True)
class Subject:
    """What a policy judges: claims, the events they came from, and the quote's coverage.

    ``active_banks``: banks the TPM had active (the log's Spec ID event), default the claims'
    banks. ``quoted_pcrs``: bank -> PCR indices the quote covered, default the claims' PCRs.
    ``checked_pcrs``: PCRs whose replay matched the quote (claims come only from their events),
    default every PCR the claims hold a value for. ``quote``: the quote's own facts (None for a
    log-only check). ``explain``: word every result (``hostgate policy check``); when False (the
    verifier, which keeps only the outcome of a rule that passed), a rule whose pass is costly to
    word leaves its message empty and names no event. Failures are always worded in full, and
    outcomes never depend on it. ``platform`` and ``trusted_banks`` are set by ``evaluate``.
    """

    claims: Claims
    index: EventIndex = field(default_factory=lambda: EventIndex(()))
    active_banks: tuple[str, ...] | None = None
    quoted_pcrs: Mapping[str, frozenset[int]] | None = None
    explain: bool = True
    checked_pcrs: frozenset[int] | None = None
    quote: QuoteFacts | None = None
    platform: str | None = None
    """The platform a matched reference group proves (None: nothing proven)."""
    trusted_banks: frozenset[str] | None = None
    """Banks whose digests may approve (the policy's required banks; None: any bank)."""

    @property
    def windows(self) -> WindowsBootConfig | None:
        return self.claims.windows

    def quoted(self) -> dict[str, frozenset[int]]:
        if self.quoted_pcrs is not None:
            return {b: frozenset(p) for b, p in self.quoted_pcrs.items()}
        return {b: frozenset(v) for b, v in self.claims.pcrs.items()}

    def checked(self) -> frozenset[int]:
        """PCRs whose events were replay-verified against the quote."""
        if self.checked_pcrs is not None:
            return self.checked_pcrs
        return frozenset(p for values in self.claims.pcrs.values() for p in values)


def _r(rule: str, outcome: Outcome, message: str, event: EventRef | None = None) -> RuleResult:
    return RuleResult(rule_id=rule, outcome=outcome, message=message, event=event)


def _unworded(s: Subject, rule: str, outcome: Outcome) -> RuleResult | None:
    """The result without words when nobody will read them (a pass, unless ``s.explain``:
    see :class:`Subject`), else None: the rule words it."""
    if outcome is not FAIL and not s.explain:
        return RuleResult(rule_id=rule, outcome=outcome, message="")
    return None


def _judged(s: Subject, rule: str, outcome: Outcome, message: Callable[[], str],
            event: Callable[[], EventRef | None] | None = None) -> RuleResult:
    """A result whose message and event are worked out only when someone reads them."""
    return _unworded(s, rule, outcome) or RuleResult(
        rule_id=rule, outcome=outcome, message=message(),
        event=event() if event is not None else None)


def _ranges(values: Iterable[int]) -> str:
    return ", ".join(map(str, sorted(values))) or "none"


# --- banks --------------------------------------------------------------------------------
def check_banks(spec: BankSpec, s: Subject, required_pcrs: Iterable[int] = ()) -> list[RuleResult]:
    """Coverage: every required bank quoted with every required PCR (``required_pcrs``: the
    policy's whole coverage, ``coverage.coverage``) and replayed from the log."""
    out: list[RuleResult] = []
    quoted = {b: p for b, p in s.quoted().items() if p}
    replayed = set(s.claims.banks)
    missing_banks = [b for b in spec.require_banks if b not in quoted or b not in replayed]
    if missing_banks:
        why = ", ".join(f"{b} ({'not quoted' if b not in quoted else 'not in the log'})"
                        for b in missing_banks)
        out.append(_r(ids.BANKS_REQUIRED_BANKS, FAIL, f"The policy requires bank(s) {why}: "
                      "the measurements cannot be confirmed in a bank it relies on."))
    else:
        out.append(_judged(s, ids.BANKS_REQUIRED_BANKS, PASS, lambda: (
            f"Every required bank ({', '.join(spec.require_banks)}) is quoted and replayed.")))
    wanted = sorted(set(spec.require_pcrs) | set(required_pcrs))
    if wanted:
        gaps = [(b, sorted(set(wanted) - quoted.get(b, frozenset())))
                for b in spec.require_banks]
        gaps = [(b, m) for b, m in gaps if m]
        if gaps:
            bank, missing = gaps[0]
            out.append(_r(ids.BANKS_REQUIRED_PCRS, FAIL,
                          f"PCRs {_ranges(missing)} are required but not quoted in the {bank} "
                          f"bank (quoted: {_ranges(quoted.get(bank, ()))}), so the claims read "
                          "from them cannot be confirmed."))
        else:
            out.append(_judged(s, ids.BANKS_REQUIRED_PCRS, PASS, lambda: (
                f"All required PCRs ({_ranges(wanted)}) are quoted in "
                f"{', '.join(spec.require_banks)}.")))
    if spec.refuse_sha1_only:
        active = set(s.active_banks if s.active_banks is not None else s.claims.banks)
        strong_active = sorted(active & STRONG_BANKS)
        if not quoted:
            out.append(_r(ids.BANKS_SHA1_ONLY, FAIL, "No bank was quoted."))
        elif set(quoted) == {"sha1"} and strong_active:
            out.append(_r(ids.BANKS_SHA1_ONLY, FAIL,
                          f"The quote covers only the SHA-1 bank although "
                          f"{', '.join(strong_active)} is active on this TPM."))
        elif set(quoted) == {"sha1"}:
            out.append(_r(ids.BANKS_SHA1_ONLY, PASS,
                          "The quote covers only SHA-1, the only bank active on this TPM."))
        else:
            out.append(_judged(s, ids.BANKS_SHA1_ONLY, PASS, lambda: (
                f"The quote covers a bank stronger than SHA-1 "
                f"({', '.join(sorted(set(quoted) & STRONG_BANKS))}).")))
    return out


# --- the quote's own facts --------------------------------------------------------------------
def check_tpm(spec: TpmSpec, s: Subject) -> list[RuleResult]:
    out: list[RuleResult] = []
    q = s.quote
    if spec.clock_safe is not None:
        if q is None:
            out.append(_r(ids.TPM_CLOCK_SAFE, FAIL, "The TPM clock's safe flag cannot be "
                          "confirmed: no verified quote."))
        else:
            state = "safe" if q.clock_safe else "not safe (the clock may have been rolled "
            "back after an unorderly shutdown)"
            out.append(_r(ids.TPM_CLOCK_SAFE, PASS if q.clock_safe == spec.clock_safe else FAIL,
                          f"The quote's clock is {state}."))
    if spec.firmware_minimum is not None or spec.firmware_allowed is not None:
        rule = ids.TPM_FIRMWARE_VERSION
        if q is None:
            out.append(_r(rule, FAIL, "The TPM firmware version cannot be confirmed: no "
                          "verified quote."))
        else:
            fw = q.firmware_version
            if spec.firmware_minimum is not None and fw < spec.firmware_minimum:
                out.append(_r(rule, FAIL, f"The TPM firmware version {fw:#018x} is below the "
                              f"minimum {spec.firmware_minimum:#018x}."))
            elif spec.firmware_allowed is not None and fw not in spec.firmware_allowed:
                out.append(_r(rule, FAIL, f"The TPM firmware version {fw:#018x} is not one of "
                              f"the {len(spec.firmware_allowed)} approved versions."))
            else:
                out.append(_r(rule, PASS, f"The TPM firmware version {fw:#018x} is approved."))
    return out


# --- secure boot --------------------------------------------------------------------------
def _db_ref(s: Subject, db: KeyDatabase, summary: str) -> EventRef | None:
    return s.index.ref(db.seq, summary, pcr=7, type_name="EV_EFI_VARIABLE_DRIVER_CONFIG")


def _subset(rule: str, label: str, allowed: tuple[RefDigest, ...], s: Subject) -> RuleResult:
    db = s.claims.database(label)
    if db is None:
        return _r(rule, FAIL, f"The {label} variable was not measured, so its entries cannot be "
                  "checked.")
    ok = {r.hex for r in allowed}
    for entry in db.entries:
        if entry.digest.hex() not in ok:
            who = entry.subject or f"{entry.kind} hash"
            return _r(rule, FAIL, f"{label} holds an entry that is not approved: {who} "
                      f"(sha256:{entry.digest.hex()}, event {db.seq} in PCR 7).",
                      _db_ref(s, db, f"{label}: {len(db.entries)} entries; unapproved {who}"))
    return _judged(s, rule, PASS, lambda: f"All {len(db.entries)} {label} entries are approved.",
                   lambda: _db_ref(s, db, f"{label}: {len(db.entries)} entries"))


def check_secure_boot(spec: SecureBootSpec, s: Subject) -> list[RuleResult]:
    out: list[RuleResult] = []
    if spec.enabled is not None:
        out.append(_secure_boot_state(spec.enabled, s))
    for rule, label, allowed in ((ids.SECUREBOOT_PK, "PK", spec.pk),
                                 (ids.SECUREBOOT_KEK, "KEK", spec.kek),
                                 (ids.SECUREBOOT_DB, "db", spec.db)):
        if allowed is not None:
            out.append(_subset(rule, label, allowed, s))
    if spec.dbx_required is not None:
        out.append(_dbx(spec.dbx_required, s))
    if spec.pcr7_variables is not None:
        out.append(_pcr7(spec.pcr7_variables, s))
    return out


def _secure_boot_state(want: bool, s: Subject) -> RuleResult:
    state = s.claims.secure_boot
    if state is None:
        return _r(ids.SECUREBOOT_ENABLED, FAIL,
                  "Secure Boot state was not measured (no SecureBoot variable in PCR 7).")
    outcome = PASS if state == want else FAIL
    unworded = _unworded(s, ids.SECUREBOOT_ENABLED, outcome)
    if unworded is not None:
        return unworded
    found = s.index.secure_boot_event()
    where = ""
    event = None
    if found is not None:
        seq, value = found
        shown = value.hex() if value else "empty"
        where = f" (SecureBoot variable = {shown}, event {seq} in PCR 7)"
        event = s.index.ref(seq, f"SecureBoot = {shown}")
    word = "on" if state else "off"
    return _r(ids.SECUREBOOT_ENABLED, outcome, f"Secure Boot is {word}{where}.", event)


def _dbx(required: tuple[RefDigest, ...], s: Subject) -> RuleResult:
    db = s.claims.database("dbx")
    if db is None:
        return _r(ids.SECUREBOOT_DBX, FAIL, "The dbx variable was not measured, so required "
                  "revocations cannot be confirmed.")
    have = {e.digest.hex() for e in db.entries}
    missing = [r for r in required if r.hex not in have]
    if missing:
        first = missing[0]
        label = f"{first.name} " if first.name else ""
        return _r(ids.SECUREBOOT_DBX, FAIL,
                  f"dbx lacks {len(missing)} of {len(required)} required revocations, first "
                  f"{label}(sha256:{first.hex}).",
                  _db_ref(s, db, f"dbx: {len(db.entries)} entries"))
    return _judged(s, ids.SECUREBOOT_DBX, PASS,
                   lambda: f"dbx holds all {len(required)} required revocations.",
                   lambda: _db_ref(s, db, f"dbx: {len(db.entries)} entries"))


def _pcr7(allowed: tuple[str, ...], s: Subject) -> RuleResult:
    if not s.index:
        return _r(ids.SECUREBOOT_UNKNOWN_PCR7, FAIL, "PCR 7 variables cannot be checked: the "
                  "events were not supplied with the claims.")
    names = s.index.pcr7_variables()
    ok = set(allowed)
    for seq, name in names:
        if name not in ok:
            return _r(ids.SECUREBOOT_UNKNOWN_PCR7, FAIL,
                      f"PCR 7 measures a variable the policy does not know: {name} "
                      f"(event {seq}).", s.index.ref(seq, f"variable {name}"))
    return _judged(s, ids.SECUREBOOT_UNKNOWN_PCR7, PASS,
                   lambda: f"All {len(names)} variables in PCR 7 are known ones.")


# --- windows debug controls ---------------------------------------------------------------
def hypervisor_launched(w: WindowsBootConfig) -> bool:
    return any(v != 0 for v in w.hypervisor_launch_type)


def check_debug(spec: DebugSpec, s: Subject) -> list[RuleResult]:
    out: list[RuleResult] = []
    w = s.windows
    for _, attr in DEBUG_FLAGS:
        want = getattr(spec, attr)
        if want is None:
            continue
        rule, words = _FLAG_IDS[attr], _FLAG_WORDS[attr]
        if w is None:
            out.append(_not_windows(rule, words, s))
            continue
        value = getattr(w, attr)
        if value is None:
            if attr == "hypervisor_debug" and not hypervisor_launched(w):
                out.append(_r(rule, PASS, "Hypervisor debugging was not measured because the "
                              "hypervisor was not launched."))
            else:
                out.append(_r(rule, FAIL, f"{words} was never measured in the Windows boot "
                              "configuration, so its state cannot be confirmed."))
            continue
        out.append(_flag_result(s, rule, words, attr, value, PASS if value == want else FAIL))
    return out


def _not_windows(rule: str, words: str, s: Subject) -> RuleResult:
    """A Windows-only rule on a host with no Windows boot configuration: not applicable only
    where a verified non-Windows boot was proven, else it cannot be confirmed."""
    if s.platform in NON_WINDOWS:
        return _r(rule, NA, f"{words}: not a Windows boot (the host matched a {s.platform} "
                  "reference group).")
    return _r(rule, FAIL, f"{words} cannot be confirmed: no Windows boot configuration was "
              "measured, and the host's verified boot did not match a non-Windows reference "
              "group.")


def _flag_result(s: Subject, rule: str, words: str, attr: str, value: object,
                 outcome: Outcome) -> RuleResult:
    """``{words} is on/off``, naming the SIPA event that measured ``attr`` as ``value``."""
    unworded = _unworded(s, rule, outcome)
    if unworded is not None:
        return unworded
    seq = s.index.windows_flag_event(attr, value)
    state = "on" if value else "off"
    event = s.index.ref(seq, f"SIPA: {attr} = {state}") if seq is not None else None
    at = f" (event {seq} in PCR {event.pcr})" if event is not None else ""
    return _r(rule, outcome, f"{words} is {state}{at}.", event)


# --- code integrity -----------------------------------------------------------------------
def _windows_bool(rule: str, words: str, value: bool | None, want: bool, s: Subject,
                  attr: str) -> RuleResult:
    if value is None:
        return _r(rule, FAIL, f"{words} was never measured in the Windows boot configuration.")
    return _flag_result(s, rule, words, attr, value, PASS if value == want else FAIL)


def hvci_on(w: WindowsBootConfig) -> bool | None:
    if not w.hvci_policy:
        return None
    return all(v != 0 for v in w.hvci_policy)


def _digest_matches(refs: Iterable[RefDigest], digests: Mapping[str, bytes],
                    banks: frozenset[str] | None = None) -> RefDigest | None:
    """The first of ``refs`` equal to the event's digest in its algorithm; with ``banks``, only
    references in those banks count (what approves must be in a bank the policy relies on)."""
    for ref in refs:
        if banks is not None and ref.alg not in banks:
            continue
        value = digests.get(ref.alg)
        if value is not None and value.hex() == ref.hex:
            return ref
    return None


@dataclass(frozen=True)
class _Image:
    """A measured image for allow/deny lists: where it was seen and who may have signed it."""

    label: str
    digests: Mapping[str, bytes]
    signers: tuple[tuple[str, ...], ...]
    """Its own signers (a Windows module's, from its bound SIPA record), each as its names;
    empty for UEFI images, whose possible signers are every authority of PCR 7."""
    seq: int
    pcr: int
    uefi: bool


def _signer_names(a: Authority) -> tuple[str, ...]:
    return tuple(x for x in (a.subject, f"sha256:{a.digest.hex()}") if x)


def _pcr7_signers(s: Subject) -> list[tuple[Authority, tuple[str, ...]]]:
    """Every signing authority PCR 7 measured (SbatLevel and other variables excluded)."""
    return [(a, _signer_names(a)) for a in s.claims.authorities if a.kind != "variable"]


def _judge_images(rule: str, what: str, lists: ImageList, images: Sequence[_Image],
                  s: Subject) -> RuleResult:
    allow_any = lists.allowed_digests is not None or lists.allowed_signers is not None
    denied_signers = set(lists.denied_signers)
    allowed_signers = set(lists.allowed_signers or ())
    pcr7 = _pcr7_signers(s)
    for a, names in pcr7:
        if denied_signers & set(names):
            return _r(rule, FAIL, f"PCR 7 measured a denied signer, {names[0]} (authority "
                      f"event {a.seq}): it verified an image at boot, and nothing records "
                      "which one.", s.index.ref(a.seq, names[0], pcr=7))
    unapproved = [names for _, names in pcr7 if not allowed_signers & set(names)]
    for img in images:
        denied = _digest_matches(lists.denied_digests, img.digests)
        if denied is not None:
            return _r(rule, FAIL, f"The {what} {img.label} is on the deny list"
                      f"{' as ' + denied.name if denied.name else ''} ({denied.text}, "
                      f"event {img.seq}).", _image_ref(img, s))
        bad = [names[0] for names in img.signers if denied_signers & set(names)]
        if bad:
            return _r(rule, FAIL, f"The {what} {img.label} is signed by a denied signer: "
                      f"{bad[0]} (event {img.seq}).", _image_ref(img, s))
        if not allow_any:
            continue
        # A UEFI image's digests are the host's PCR extends, one per bank, each chosen freely
        # by whoever extended: only the banks the policy relies on may approve. A Windows
        # module's hash sits inside its bound SIPA record, in the algorithm Windows names.
        banks = s.trusted_banks if img.uefi else None
        if _digest_matches(lists.allowed_digests or (), img.digests, banks):
            continue
        if img.uefi:
            # Authorities say who verified images only if the firmware verified them: with
            # Secure Boot off it verifies nothing, and anyone may extend PCR 7 afterwards.
            if pcr7 and not unapproved and s.claims.secure_boot is True:
                continue
            if s.claims.secure_boot is not True:
                why = ("Secure Boot was not measured on, so no signer verified it (an authority "
                       "in PCR 7 then proves nothing)")
            elif not pcr7:
                why = "no signing authority was measured in PCR 7"
            else:
                why = (f"PCR 7 also measured the unapproved signer {unapproved[0][0]}, and "
                       "nothing records which image each authority verified")
        else:
            if img.signers and all(allowed_signers & set(names) for names in img.signers):
                continue
            why = f"its signer ({'; '.join(n[0] for n in img.signers) or 'unknown'}) is not allowed"
        return _r(rule, FAIL, f"The {what} {img.label} is not approved: its digest is not "
                  f"allowed and {why} (event {img.seq}).", _image_ref(img, s))
    return _judged(s, rule, PASS, lambda: f"All {len(images)} measured {what}s are approved.")


def _image_ref(img: _Image, s: Subject) -> EventRef | None:
    return s.index.ref(img.seq, img.label, pcr=img.pcr)


BOOT_APPLICATION_PCR: Final = 4
DRIVER_PCR: Final = 2


def code_in(claims: Claims, pcr: int) -> list[BootApplication]:
    """Every code event of ``pcr`` (images and opaque code, ``services.tpm.pcr_types``)."""
    return [a for a in claims.boot_applications if a.pcr == pcr]


def _uefi_images(s: Subject, pcr: int) -> list[_Image]:
    return [_Image(app.file_path or app.device_path or f"image at event {app.seq}",
                   app.digests, (), app.seq, app.pcr, True)
            for app in code_in(s.claims, pcr)]


def _windows_modules(w: WindowsBootConfig) -> list[_Image]:
    out: list[_Image] = []
    for i, m in enumerate(w.loaded_modules):
        alg = (m.hash_algorithm or _HASH_SIZES.get(len(m.authenticode_hash), "")).lower()
        names = tuple(x for x in (m.authority_publisher, m.authority_issuer) if x)
        signers = (names,) if names else ()
        label = m.file_path or f"Windows module #{i} (sha:{m.authenticode_hash.hex()[:16]}…)"
        out.append(_Image(label, {alg: m.authenticode_hash}, signers, -1, 13, False))
    return out


def check_code_integrity(spec: CodeIntegritySpec, s: Subject) -> list[RuleResult]:
    out: list[RuleResult] = []
    w = s.windows
    if spec.enabled is not None:
        out.append(_not_windows(ids.CI_ENABLED, "Code integrity", s) if w is None else
                   _windows_bool(ids.CI_ENABLED, "Code integrity", w.code_integrity,
                                 spec.enabled, s, "code_integrity"))
    if spec.dep is not None:
        out.append(_not_windows(ids.CI_DEP, "DEP", s) if w is None else
                   _windows_bool(ids.CI_DEP, "Data execution prevention (DEP)", w.dep,
                                 spec.dep, s, "dep"))
    if spec.hvci is not None:
        if w is None:
            out.append(_not_windows(ids.CI_HVCI, "HVCI", s))
        else:
            hv = hvci_on(w)
            if hv is None:
                out.append(_r(ids.CI_HVCI, PASS if not spec.hvci else FAIL,
                              "No HVCI policy was measured (HVCI is off)."))
            else:
                out.append(_r(ids.CI_HVCI, PASS if hv == spec.hvci else FAIL,
                              f"HVCI is {'on' if hv else 'off'} (policy values "
                              f"{list(w.hvci_policy)})."))
    if spec.si_policies is not None:
        out.append(_not_windows(ids.CI_SI_POLICY, "SI policy", s) if w is None else
                   _si_policies(spec.si_policies, w))
    if spec.boot_applications is not None:
        apps = _uefi_images(s, BOOT_APPLICATION_PCR)
        out.append(_r(ids.CI_BOOT_APPLICATIONS, FAIL, "No boot application was measured.")
                   if not apps else
                   _judge_images(ids.CI_BOOT_APPLICATIONS, "boot application",
                                 spec.boot_applications, apps, s))
    if spec.drivers is not None:
        drivers = _uefi_images(s, DRIVER_PCR)
        if w is not None:
            drivers.extend(_windows_modules(w))
        out.append(_judge_images(ids.CI_DRIVERS, "driver", spec.drivers, drivers, s))
    for rule, lst, modules in ((ids.CI_IMA_KERNEL_MODULES, spec.ima_kernel_modules, True),
                               (ids.CI_IMA_EXECUTABLES, spec.ima_executables, False)):
        if lst is not None:
            out.append(_ima(rule, lst, modules, s))
    return out


def _si_policies(allowed: tuple[RefDigest, ...], w: WindowsBootConfig) -> RuleResult:
    if not w.si_policies:
        return _r(ids.CI_SI_POLICY, FAIL, "No code-integrity (SI) policy was measured.")
    for pol in w.si_policies:
        alg = (pol.hash_algorithm or _HASH_SIZES.get(len(pol.digest), "")).lower()
        if _digest_matches(allowed, {alg: pol.digest}) is None:
            return _r(ids.CI_SI_POLICY, FAIL, f"The code-integrity policy {pol.name} version "
                      f"{pol.version} is not approved ({alg}:{pol.digest.hex()}).")
    return _r(ids.CI_SI_POLICY, PASS, f"All {len(w.si_policies)} code-integrity policies are "
              "approved.")


def _is_module(path: str | None) -> bool:
    """A kernel module by file name (``.ko`` and its compressed forms). Every other IMA entry
    counts as an "executable" (IMA's own policy decides which files are measured at all)."""
    return path is not None and path.endswith(_MODULE_SUFFIXES)


def _ima(rule: str, lst: ImaList, modules: bool, s: Subject) -> RuleResult:
    what = "kernel module" if modules else "executable"
    if s.platform == "windows":
        return _r(rule, NA, f"IMA {what}s: not a Linux boot (the host matched a windows "
                  "reference group).")
    entries = s.claims.ima
    if entries is None:
        return _r(rule, FAIL, f"No IMA measurement list was supplied, so {what}s cannot be "
                  "checked.")
    checked = 0
    # indexed once: an IMA list and an allow-list may both hold 100,000 entries
    allowed = ({(r.alg, r.hex) for r in lst.allowed} if lst.allowed is not None else None)
    # A file hash exists in one algorithm, the one the host's kernel chose (ima_hash=, the
    # template): a denial can only match an entry hashed in the denial's own algorithm.
    denied_algs = {r.alg for r in lst.denied}
    for i, e in enumerate(entries):
        if e.violation:  # its path and hash are not covered: it could be any file
            return _r(rule, FAIL, f"IMA recorded a measurement violation at entry {i}: the "
                      f"kernel could not measure a file, and what the list says of it "
                      f"({shorten(e.path or '', 80)!r}) is covered by nothing, so {what}s "
                      "cannot be confirmed.")
        if e.path == "boot_aggregate" or _is_module(e.path) != modules:
            continue
        checked += 1
        digests = {e.file_hash_alg: e.file_hash} if e.file_hash_alg and e.file_hash else {}
        shown = f"{e.file_hash_alg}:{e.file_hash.hex()}" if e.file_hash else "no file hash"
        if denied_algs and e.file_hash_alg not in denied_algs:
            return _r(rule, FAIL, f"IMA hashed the {what} {e.path} in "
                      f"{e.file_hash_alg or 'no algorithm'} (IMA entry {i}); the deny list names "
                      f"{', '.join(sorted(denied_algs))} digests only, so whether it is denied "
                      "cannot be confirmed.")
        denied = _digest_matches(lst.denied, digests)
        if denied is not None:
            return _r(rule, FAIL, f"IMA measured a denied {what}: {e.path} ({shown}, IMA entry "
                      f"{i}).")
        listed = (e.file_hash_alg or "", e.file_hash.hex() if e.file_hash else "")
        if allowed is not None and listed not in allowed:
            return _r(rule, FAIL, f"IMA measured an unapproved {what}: {e.path} ({shown}, IMA "
                      f"entry {i}).")
    return _r(rule, PASS, f"All {checked} {what}s measured by IMA are approved.")


# --- boot chain ---------------------------------------------------------------------------
def check_boot_chain(spec: BootChainSpec, s: Subject) -> list[RuleResult]:
    out: list[RuleResult] = []
    if spec.stages is not None:
        out.append(_chain(spec, s))
    if spec.cmdline is not None:
        out.append(_cmdline(spec.cmdline, s))
    return out


def _chain(spec: BootChainSpec, s: Subject) -> RuleResult:
    stages = spec.stages or ()
    apps = code_in(s.claims, BOOT_APPLICATION_PCR)
    required = sum(1 for st in stages if not st.optional)
    names = " -> ".join(st.name for st in stages)
    if len(apps) < required or len(apps) > len(stages):
        last = apps[-1] if apps else None
        ref = s.index.ref(last.seq, last.file_path or last.device_path) if last else None
        return _r(ids.BOOTCHAIN_APPLICATIONS, FAIL,
                  f"The host started {len(apps)} boot application(s); the policy expects "
                  f"{required if required == len(stages) else f'{required} to {len(stages)}'} "
                  f"({names}).", ref)
    for i, (app, stage) in enumerate(zip(apps, stages, strict=False)):
        if _digest_matches(stage.digests, app.digests, s.trusted_banks) is None:
            label = app.file_path or app.device_path or f"image at event {app.seq}"
            shown = next((f"{b}:{app.digests[b].hex()}" for b in ("sha256", "sha384", "sha1")
                          if b in app.digests), "no digest")
            return _r(ids.BOOTCHAIN_APPLICATIONS, FAIL,
                      f"Boot stage {i + 1} ({stage.name}) ran {label}, whose digest {shown} is "
                      f"not approved for that stage (event {app.seq}).",
                      s.index.ref(app.seq, label, pcr=app.pcr))
    return _judged(s, ids.BOOTCHAIN_APPLICATIONS, PASS, lambda: (
        f"The boot chain ({', '.join(st.name for st in stages[:len(apps)])}) matches "
        "approved images."))


def _cmdline(spec: CmdlineSpec, s: Subject) -> RuleResult:
    """Every command line a bound measurement says the kernel may have run with is judged,
    parsed as Linux parses it (:mod:`.kernel_params`); the kernel's own measurement of its load
    options must be one of them."""
    rule = ids.BOOTCHAIN_CMDLINE
    if s.platform == "windows":
        return _r(rule, NA, "Kernel command line: a Windows boot has no Linux command line "
                  "(the host matched a windows reference group).")
    c = s.claims
    unverified = c.unverified_boot_strings
    if unverified:
        return _r(rule, FAIL, f"The kernel command line cannot be confirmed: event "
                  f"{unverified[0]} is a boot-loader string whose digest is not over its data "
                  "or whose data does not decode, so it could say anything.",
                  s.index.ref(unverified[0], "unbound string"))
    lines: list[tuple[str, str, EventRef | None]] = []
    for line in c.kernel_cmdlines:
        at, ref = _cmdline_event(line, s)
        lines.append((line, at, ref))
    for p in c.possible_cmdlines:
        lines.append((p.text, f" (event {p.seq}, labelled {p.event_type}, whose data is a "
                      "UTF-16 command line)", s.index.ref(p.seq, p.text)))
    if not lines:
        return _r(rule, FAIL, "No kernel command line was measured, so it cannot be checked.")
    unconfirmed = _unconfirmed_load_options(c, [line for line, _, _ in lines], s.trusted_banks)
    if unconfirmed is not None:
        return _r(rule, FAIL, f"The kernel command line cannot be confirmed: the kernel's load "
                  f"options (event {unconfirmed.seq}, PCR 9) hash to none of the {len(lines)} "
                  "command lines the boot loaders measured, so it ran with one nothing shows.",
                  s.index.ref(unconfirmed.seq, "load options"))
    for line, at, ref in lines:
        if spec.allowed is not None and line not in spec.allowed:
            return _r(rule, FAIL, f"The kernel command line is not one of the "
                      f"{len(spec.allowed)} approved ones: {shorten(line, 120)!r}{at}.", ref)
        try:
            params = kernel_parameters(line)
        except UnreadableCommandLine as exc:
            return _r(rule, FAIL, f"The kernel command line cannot be confirmed: "
                      f"{shorten(line, 80)!r}{at}: {exc}.", ref)
        hit = forbidden_hit(params, spec.forbidden)
        if hit is not None:
            param, entry = hit
            return _r(rule, FAIL, f"The kernel command line contains the forbidden option "
                      f"{shorten(param.written, 80)!r} (the kernel reads it as {entry!r}){at}.",
                      ref)
        missing = missing_required(params, spec.required)
        if missing is not None:
            return _r(rule, FAIL, f"The kernel command line does not apply the required option "
                      f"{missing!r} (absent, overridden by a later value, after '--' or past "
                      f"the kernel's {COMMAND_LINE_SIZE}-byte limit){at}.", ref)
    return _judged(s, rule, PASS, lambda: f"All {len(lines)} kernel command lines meet the policy.")


def _unconfirmed_load_options(c: Claims, lines: Sequence[str],
                              banks: frozenset[str] | None) -> LoadOptions | None:
    """The first load-options measurement that no form of any of ``lines`` hashes to in a
    bank the policy relies on (any hashable bank when it names none)."""
    if not c.kernel_load_options:
        return None
    forms = [form for line in lines for form in load_options_forms(line)]
    for lo in c.kernel_load_options:
        usable = [(b, d) for b, d in lo.digests.items()
                  if (banks is None or b in banks) and b in hashlib.algorithms_available]
        if not any(hashlib.new(b, form).digest() == d for b, d in usable for form in forms):
            return lo
    return None


def _cmdline_event(line: str, s: Subject) -> tuple[str, EventRef | None]:
    """(" (event N)", its reference) for the event that measured ``line``, or ("", None)."""
    seq = s.index.cmdline_event(line)
    if seq is None:
        return "", None
    return f" (event {seq})", s.index.ref(seq, line)


# --- reference groups ---------------------------------------------------------------------
def _group_mismatches(g: ReferenceGroup, s: Subject) -> list[str]:
    pcrs = s.claims.pcrs
    mismatches: list[str] = []
    for bank, values in g.pcrs:
        have = pcrs.get(bank, {})
        for idx, want in values:
            got = have.get(idx)
            if got is None:
                mismatches.append(f"PCR {idx} ({bank}) is not in the evidence")
            elif got.hex() != want:
                mismatches.append(f"PCR {idx} ({bank}) is {got.hex()[:16]}…, the group "
                                  f"expects {want[:16]}…")
    if g.first_boot_application:
        apps = code_in(s.claims, BOOT_APPLICATION_PCR)
        if not apps:
            mismatches.append("no boot application was measured in PCR 4")
        elif _digest_matches(g.first_boot_application, apps[0].digests,
                             s.trusted_banks) is None:
            mismatches.append(f"the first boot application (event {apps[0].seq}) is not the "
                              "group's")
    return mismatches


def proven_platform(groups: Sequence[ReferenceGroup], s: Subject) -> str | None:
    """The platform the groups the host matches prove, or None when none of them names one or
    they disagree (then nothing is proven, and every platform's rules apply)."""
    platforms = {g.platform for g in groups
                 if g.platform is not None and not _group_mismatches(g, s)}
    return platforms.pop() if len(platforms) == 1 else None


def check_reference_groups(groups: tuple[ReferenceGroup, ...], s: Subject) -> list[RuleResult]:
    if not groups:
        return []
    best: tuple[int, ReferenceGroup, str] | None = None
    for g in groups:
        mismatches = _group_mismatches(g, s)
        if not mismatches:
            proves = f" (a {g.platform} boot)" if g.platform else ""
            return [_r(ids.REFERENCE_GROUPS, PASS,
                       f"The host matches the approved reference group {g.name!r}{proves}.")]
        if best is None or len(mismatches) < best[0]:
            best = (len(mismatches), g, mismatches[0])
    assert best is not None
    _, g, first = best
    return [_r(ids.REFERENCE_GROUPS, FAIL,
               f"The host matches none of the {len(groups)} approved reference groups; closest "
               f"is {g.name!r}, where {first}.")]


# --- evidence -----------------------------------------------------------------------------
_TYPE_REASONS: Final = frozenset({"tpm.event.unknown_type", "tpm.event.unexpected_type"})


def check_evidence(spec: EvidenceSpec, s: Subject) -> list[RuleResult]:
    c = s.claims
    rule = ids.EVIDENCE_ANOMALIES
    if not c.replay_verified:
        return [_r(rule, FAIL, "The claims were not read from a log that replayed to a quote.")]
    accepted_types = {(t.pcr, event_type_name(t.event_type)) for t in spec.allowed_event_types
                      if t.pcr in TOLERANT_PCRS}
    fatal = [a for a in c.anomalies if a.fatal
             and not (a.reason in _TYPE_REASONS and (a.pcr, a.event_type) in accepted_types)]
    allowed = set(spec.allowed_anomalies)
    other = [a for a in c.anomalies if not a.fatal and a.reason not in allowed]
    for a in (*fatal, *other):
        kind = "a fatal" if a.fatal else "an unaccepted"
        return [_r(rule, FAIL, f"The log has {kind} anomaly {a.reason}: {shorten(a.detail, 100)} "
                   f"(event {a.seq} in PCR {a.pcr}).",
                   s.index.ref(a.seq, a.detail, pcr=a.pcr, type_name=a.event_type))]
    accepted = len(c.anomalies)
    extra = f" ({accepted} accepted by the policy)" if accepted else ""
    return [_r(rule, PASS, f"The evidence has no unaccepted anomaly{extra}.")]


