"""The built-in rules: each reads claims and yields :class:`~.results.RuleResult`\\ s.

Every rule is a pure function ``(spec section, Subject) -> list[RuleResult]``. A rule is only
evaluated when its policy section asks for something. Fail-closed choices, rule by rule:

* Secure Boot state / PK / KEK / db / dbx not measured -> **fail** (cannot confirm).
* Windows debug flags, code integrity, DEP, HVCI, SI policy on a host with no Windows boot
  configuration (no SIPA events) -> **not_applicable**; on a Windows host, a flag that was never
  measured -> **fail**, except hypervisor debug when the hypervisor was not launched (Windows
  only measures it when the hypervisor starts; corpus W03) -> pass.
* Boot applications: none measured -> fail. An image whose signing authority was logged for an
  earlier image (firmware logs each authority once) inherits every earlier authority as a
  candidate signer: allowed only if every candidate is allowed, denied if any is denied. A
  signer in a policy list matches by certificate subject or by ``sha256:<hex of the DER>``.
* Kernel command line not measured on a non-Windows host -> fail; Windows host -> n/a.
* IMA lists on a Windows host -> n/a; no IMA list supplied -> fail.
* Reference groups: a host PCR missing from the claims never matches.
* Claims that are not replay-verified, or with a fatal anomaly (claims' own fail-closed
  verdict), or a non-fatal anomaly the policy does not accept -> fail (always evaluated).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Final

from services.tpm.claims import Authority, BootApplication, Claims, KeyDatabase
from services.tpm.sipa import WindowsBootConfig
from services.verifier.policy import ids
from services.verifier.policy.events import EventIndex, shorten
from services.verifier.policy.model import (
    DEBUG_FLAGS,
    STRONG_BANKS,
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
)
from services.verifier.policy.results import EventRef, Outcome, RuleResult

PASS, FAIL, NA = Outcome.PASS, Outcome.FAIL, Outcome.NOT_APPLICABLE

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
class Subject:
    """What a policy judges: claims, the events they came from, and the quote's coverage.

    ``active_banks``: banks the TPM had active (the log's Spec ID event), default the claims'
    banks. ``quoted_pcrs``: bank -> PCR indices the quote covered, default the claims' PCRs.
    ``explain``: word every result (``hostgate policy check``); when False (the verifier, which
    keeps only the outcome of a rule that passed), a rule whose pass is costly to word (events
    to find, digests to format) leaves its message empty and names no event. Failures are
    always worded in full, and outcomes never depend on it.
    """

    claims: Claims
    index: EventIndex = field(default_factory=lambda: EventIndex(()))
    active_banks: tuple[str, ...] | None = None
    quoted_pcrs: Mapping[str, frozenset[int]] | None = None
    explain: bool = True

    @property
    def windows(self) -> WindowsBootConfig | None:
        return self.claims.windows

    def quoted(self) -> dict[str, frozenset[int]]:
        if self.quoted_pcrs is not None:
            return {b: frozenset(p) for b, p in self.quoted_pcrs.items()}
        return {b: frozenset(v) for b, v in self.claims.pcrs.items()}


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
def check_banks(spec: BankSpec, s: Subject) -> list[RuleResult]:
    out: list[RuleResult] = []
    quoted = {b: p for b, p in s.quoted().items() if p}
    if spec.require_pcrs:
        if not quoted:
            out.append(_r(ids.BANKS_REQUIRED_PCRS, FAIL, "No PCR was quoted in any bank."))
        else:
            best = next((b for b in _BANK_ORDER if b in quoted), sorted(quoted)[0])
            missing = sorted(set(spec.require_pcrs) - quoted[best])
            if missing:
                out.append(_r(ids.BANKS_REQUIRED_PCRS, FAIL,
                              f"PCRs {_ranges(missing)} are required but not quoted in the "
                              f"{best} bank (quoted: {_ranges(quoted[best])})."))
            else:
                out.append(_judged(s, ids.BANKS_REQUIRED_PCRS, PASS, lambda: (
                    f"All required PCRs ({_ranges(spec.require_pcrs)}) are quoted in the "
                    f"{best} bank.")))
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
            out.append(_r(rule, NA, f"{words}: not a Windows boot (no Windows boot "
                          "configuration was measured)."))
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


def _digest_matches(refs: Iterable[RefDigest], digests: Mapping[str, bytes]) -> RefDigest | None:
    for ref in refs:
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
    """Candidate signers, each as its names (certificate subject and ``sha256:<DER hash>``)."""
    inherited: bool
    seq: int
    pcr: int


def _judge_images(rule: str, what: str, lists: ImageList, images: Sequence[_Image],
                  s: Subject) -> RuleResult:
    allow_any = lists.allowed_digests is not None or lists.allowed_signers is not None
    denied_signers = set(lists.denied_signers)
    allowed_signers = set(lists.allowed_signers or ())
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
        if _digest_matches(lists.allowed_digests or (), img.digests) is not None:
            continue
        if img.signers and all(allowed_signers & set(names) for names in img.signers):
            continue
        signer = "; ".join(names[0] for names in img.signers) or "unknown"
        how = "possible signers" if img.inherited else "signer"
        return _r(rule, FAIL, f"The {what} {img.label} is not approved: neither its digest nor "
                  f"its {how} ({signer}) is allowed (event {img.seq}).", _image_ref(img, s))
    return _judged(s, rule, PASS, lambda: f"All {len(images)} measured {what}s are approved.")


def _image_ref(img: _Image, s: Subject) -> EventRef | None:
    return s.index.ref(img.seq, img.label, pcr=img.pcr)


def _signers_of(app: BootApplication, by_seq: Mapping[int, Authority],
                earlier: set[tuple[str, ...]]) -> tuple[tuple[tuple[str, ...], ...], bool]:
    own: set[tuple[str, ...]] = set()
    for seq in app.authorities:
        a = by_seq.get(seq)
        if a is not None:
            own.add(tuple(x for x in (a.subject, f"sha256:{a.digest.hex()}") if x))
    if own:
        earlier.update(own)
        return tuple(sorted(own)), False
    return tuple(sorted(earlier)), True


def _uefi_images(s: Subject, kinds: frozenset[str]) -> list[_Image]:
    earlier: set[tuple[str, ...]] = set()
    out: list[_Image] = []
    by_seq = {a.seq: a for a in s.claims.authorities}
    for app in s.claims.boot_applications:
        signers, inherited = _signers_of(app, by_seq, earlier)
        if app.kind in kinds:
            out.append(_Image(app.file_path or app.device_path or f"image at event {app.seq}",
                              app.digests, signers, inherited, app.seq, app.pcr))
    return out


def _windows_modules(w: WindowsBootConfig) -> list[_Image]:
    out: list[_Image] = []
    for i, m in enumerate(w.loaded_modules):
        alg = (m.hash_algorithm or _HASH_SIZES.get(len(m.authenticode_hash), "")).lower()
        names = tuple(x for x in (m.authority_publisher, m.authority_issuer) if x)
        signers = (names,) if names else ()
        label = m.file_path or f"Windows module #{i} (sha:{m.authenticode_hash.hex()[:16]}…)"
        out.append(_Image(label, {alg: m.authenticode_hash}, signers, False, -1, 13))
    return out


def check_code_integrity(spec: CodeIntegritySpec, s: Subject) -> list[RuleResult]:
    out: list[RuleResult] = []
    w = s.windows
    na = "not a Windows boot (no Windows boot configuration was measured)"
    if spec.enabled is not None:
        out.append(_r(ids.CI_ENABLED, NA, f"Code integrity: {na}.") if w is None else
                   _windows_bool(ids.CI_ENABLED, "Code integrity", w.code_integrity,
                                 spec.enabled, s, "code_integrity"))
    if spec.dep is not None:
        out.append(_r(ids.CI_DEP, NA, f"DEP: {na}.") if w is None else
                   _windows_bool(ids.CI_DEP, "Data execution prevention (DEP)", w.dep,
                                 spec.dep, s, "dep"))
    if spec.hvci is not None:
        if w is None:
            out.append(_r(ids.CI_HVCI, NA, f"HVCI: {na}."))
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
        out.append(_r(ids.CI_SI_POLICY, NA, f"SI policy: {na}.") if w is None else
                   _si_policies(spec.si_policies, w))
    if spec.boot_applications is not None:
        apps = _uefi_images(s, frozenset({"application"}))
        out.append(_r(ids.CI_BOOT_APPLICATIONS, FAIL, "No boot application was measured.")
                   if not apps else
                   _judge_images(ids.CI_BOOT_APPLICATIONS, "boot application",
                                 spec.boot_applications, apps, s))
    if spec.drivers is not None:
        drivers = _uefi_images(s, frozenset({"boot_driver", "runtime_driver"}))
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
    if s.windows is not None:
        return _r(rule, NA, f"IMA {what}s: not a Linux boot (Windows boot configuration "
                  "measured).")
    entries = s.claims.ima
    if entries is None:
        return _r(rule, FAIL, f"No IMA measurement list was supplied, so {what}s cannot be "
                  "checked.")
    checked = 0
    for i, e in enumerate(entries):
        if e.path == "boot_aggregate" or _is_module(e.path) != modules:
            continue
        checked += 1
        digests = {e.file_hash_alg: e.file_hash} if e.file_hash_alg and e.file_hash else {}
        shown = f"{e.file_hash_alg}:{e.file_hash.hex()}" if e.file_hash else "no file hash"
        denied = _digest_matches(lst.denied, digests)
        if denied is not None:
            return _r(rule, FAIL, f"IMA measured a denied {what}: {e.path} ({shown}, IMA entry "
                      f"{i}).")
        if lst.allowed is not None and _digest_matches(lst.allowed, digests) is None:
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
    apps = [a for a in s.claims.boot_applications if a.kind == "application"]
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
        if _digest_matches(stage.digests, app.digests) is None:
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


def cmdline_tokens(line: str) -> list[str]:
    """Split a kernel command line into tokens, keeping double-quoted spans together."""
    if '"' not in line:
        return line.split()  # the same split: runs of str.isspace() characters
    tokens: list[str] = []
    cur: list[str] = []
    quoted = False
    for ch in line:
        if ch == '"':
            quoted = not quoted
            cur.append(ch)
        elif ch.isspace() and not quoted:
            if cur:
                tokens.append("".join(cur))
                cur = []
        else:
            cur.append(ch)
    if cur:
        tokens.append("".join(cur))
    return tokens


def _forbidden_hit(token: str, forbidden: Iterable[str]) -> str | None:
    key = token.split("=", 1)[0]
    for f in forbidden:
        if token == f or ("=" not in f and key == f):
            return f
    return None


def _cmdline(spec: CmdlineSpec, s: Subject) -> RuleResult:
    rule = ids.BOOTCHAIN_CMDLINE
    if s.windows is not None:
        return _r(rule, NA, "Kernel command line: a Windows boot has no Linux command line.")
    lines = s.claims.kernel_cmdlines
    if not lines:
        return _r(rule, FAIL, "No kernel command line was measured, so it cannot be checked.")
    for line in lines:
        if spec.allowed is not None and line not in spec.allowed:
            at, ref = _cmdline_event(line, s)
            return _r(rule, FAIL, f"The kernel command line is not one of the "
                      f"{len(spec.allowed)} approved ones: {shorten(line, 120)!r}{at}.", ref)
        tokens = cmdline_tokens(line)
        for tok in tokens:
            hit = _forbidden_hit(tok, spec.forbidden)
            if hit is not None:
                at, ref = _cmdline_event(line, s)
                return _r(rule, FAIL, f"The kernel command line contains the forbidden option "
                          f"{shorten(tok, 80)!r}{at}.", ref)
        missing = [t for t in spec.required if t not in tokens]
        if missing:
            at, ref = _cmdline_event(line, s)
            return _r(rule, FAIL, f"The kernel command line lacks the required option "
                      f"{missing[0]!r}{at}.", ref)
    return _judged(s, rule, PASS, lambda: f"All {len(lines)} kernel command lines meet the policy.")


def _cmdline_event(line: str, s: Subject) -> tuple[str, EventRef | None]:
    """(" (event N)", its reference) for the event that measured ``line``, or ("", None)."""
    seq = s.index.cmdline_event(line)
    if seq is None:
        return "", None
    return f" (event {seq})", s.index.ref(seq, line)


# --- reference groups ---------------------------------------------------------------------
def check_reference_groups(groups: tuple[ReferenceGroup, ...], s: Subject) -> list[RuleResult]:
    if not groups:
        return []
    pcrs = s.claims.pcrs
    best: tuple[int, ReferenceGroup, str] | None = None
    for g in groups:
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
        if not mismatches:
            return [_r(ids.REFERENCE_GROUPS, PASS,
                       f"The host matches the approved reference group {g.name!r}.")]
        if best is None or len(mismatches) < best[0]:
            best = (len(mismatches), g, mismatches[0])
    assert best is not None
    _, g, first = best
    return [_r(ids.REFERENCE_GROUPS, FAIL,
               f"The host matches none of the {len(groups)} approved reference groups; closest "
               f"is {g.name!r}, where {first}.")]


# --- evidence -----------------------------------------------------------------------------
def check_evidence(spec: EvidenceSpec, s: Subject) -> list[RuleResult]:
    c = s.claims
    rule = ids.EVIDENCE_ANOMALIES
    if not c.replay_verified:
        return [_r(rule, FAIL, "The claims were not read from a log that replayed to a quote.")]
    fatal = [a for a in c.anomalies if a.fatal]
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


