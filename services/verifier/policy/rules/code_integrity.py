"""The ``codeIntegrity`` section: Windows code integrity, DEP, HVCI and SI policies, the
allow and deny lists of boot applications and drivers, and IMA's kernel modules and executables.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Final

from services.tpm.claims import Authority
from services.tpm.sipa import SIGNER_ATTRIBUTES, WindowsBootConfig, WindowsModule
from services.verifier.policy import ids
from services.verifier.policy.events import shorten
from services.verifier.policy.model import CodeIntegritySpec, ImageList, ImaList, RefDigest
from services.verifier.policy.results import EventRef, RuleResult
from services.verifier.policy.rules._common import (
    BOOT_APPLICATION_PCR,
    DRIVER_PCR,
    FAIL,
    NA,
    PASS,
    Subject,
    _digest_matches,
    _flag_result,
    _judged,
    _not_windows,
    _r,
    code_in,
)
from services.wire.banks import SHA_BANK_OF_SIZE

_MODULE_SUFFIXES: Final = (".ko", ".ko.xz", ".ko.gz", ".ko.zst")


def _windows_bool(rule: str, words: str, value: bool | None, want: bool, s: Subject,
                  attr: str) -> RuleResult:
    if value is None:
        return _r(rule, FAIL, f"{words} was never measured in the Windows boot configuration.")
    return _flag_result(s, rule, words, attr, value, PASS if value == want else FAIL)


def hvci_on(w: WindowsBootConfig) -> bool | None:
    if not w.hvci_policy:
        return None
    return all(v != 0 for v in w.hvci_policy)


@dataclass(frozen=True)
class _Image:
    """A measured image for allow/deny lists: where it was seen and who may have signed it."""

    label: str
    digests: Mapping[str, bytes]
    signers: tuple[tuple[str, ...], ...]
    """Every signer its own records name (a Windows module's, from its bound SIPA records,
    disputed ones included), each as its names: what a deny list is checked against. Empty for
    UEFI images, whose possible signers are every authority of PCR 7."""
    seq: int
    pcr: int
    uefi: bool
    approvable: tuple[str, ...] = ()
    """The names by which an allow-list of signers may approve it (a Windows module's
    :attr:`~services.tpm.sipa.WindowsModule.signer`, when Secure Boot and code integrity were
    measured on and test signing off); empty: only its digest can."""
    refusal: str = ""
    """Why it cannot be approved by signer, when :attr:`approvable` is empty."""


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
            if img.approvable and allowed_signers & set(img.approvable):
                continue
            why = img.refusal or (f"its signer ({img.approvable[0]}) is not allowed"
                                  if img.approvable else "no signer was measured for it")
        return _r(rule, FAIL, f"The {what} {img.label} is not approved: its digest is not "
                  f"allowed and {why} (event {img.seq}).", _image_ref(img, s))
    return _judged(s, rule, PASS, lambda: f"All {len(images)} measured {what}s are approved.")


def _image_ref(img: _Image, s: Subject) -> EventRef | None:
    return s.index.ref(img.seq, img.label, pcr=img.pcr)


def _uefi_images(s: Subject, pcr: int) -> list[_Image]:
    return [_Image(app.file_path or app.device_path or f"image at event {app.seq}",
                   app.digests, (), app.seq, app.pcr, True)
            for app in code_in(s.claims, pcr)]


def _module_refusal(m: WindowsModule, w: WindowsBootConfig, s: Subject) -> str:
    """Why ``m`` cannot be approved by the signer its records name ("" if it can)."""
    if s.claims.secure_boot is not True:
        return ("Secure Boot was not measured on, so nothing verified the boot manager that "
                "recorded its signer")
    if w.code_integrity is not True:
        return ("code integrity was not measured on, so the loader did not refuse unsigned "
                "images")
    if w.test_signing is not False:
        return ("test signing was not measured off, so the loader accepted images signed by "
                "any certificate, naming whatever signer it chose")
    if m.signer is not None:
        return ""
    disputed = [c.attribute for c in m.conflicts if c.attribute in SIGNER_ATTRIBUTES]
    if disputed:
        return (f"its measurements disagree on {', '.join(disputed)}, so who signed it is "
                "unknown")
    if m.authority_publisher or m.authority_issuer:
        return "the loader did not record that it validated the image"
    return "no signer was measured for it"


def _windows_modules(w: WindowsBootConfig, s: Subject) -> list[_Image]:
    out: list[_Image] = []
    for i, m in enumerate(w.loaded_modules):
        alg = (m.hash_algorithm or SHA_BANK_OF_SIZE.get(len(m.authenticode_hash), "")).lower()
        named = [(m.authority_publisher, m.authority_issuer)]
        for c in m.conflicts:  # a deny list is checked against every signer any record names
            if c.attribute in ("authority_publisher", "authority_issuer"):
                named += [(v, None) for v in c.values]
        signers = tuple(dict.fromkeys(
            names for names in (tuple(x for x in pair if x) for pair in named) if names))
        label = m.file_path or f"Windows module #{i} (sha:{m.authenticode_hash.hex()[:16]}…)"
        site = next((x for x in m.sites if x.described), m.sites[0] if m.sites else None)
        seq = site.seq if site is not None and site.seq is not None else -1
        pcr = site.pcr if site is not None and site.pcr is not None else 13
        refusal = _module_refusal(m, w, s)
        approvable = m.signer if not refusal and m.signer is not None else ()
        out.append(_Image(label, {alg: m.authenticode_hash}, signers, seq, pcr, False,
                          approvable, refusal))
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
            drivers.extend(_windows_modules(w, s))
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
        alg = (pol.hash_algorithm or SHA_BANK_OF_SIZE.get(len(pol.digest), "")).lower()
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
