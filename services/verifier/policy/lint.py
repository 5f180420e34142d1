"""What a policy leaves open: the loader's "asks something" check and ``hostgate policy lint``.

A careless author is an attacker too: a policy whose sections ask nothing passes every host
that can produce a signed quote, however it booted. :func:`admits_any_host` is the loader's
test (a policy must require Secure Boot or a key database, a boot chain, a reference group or a
boot-application allow-list, else say ``spec.permissive: true``); :func:`findings` is the
reviewer's list of what each section leaves open. Pure: a policy in, findings out.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Final, Literal

from services.tpm.quirks import quirk_by_id
from services.verifier.policy.coverage import coverage
from services.verifier.policy.model import (
    DEBUG_FLAGS,
    ImageList,
    ImaList,
    Policy,
    PolicySpec,
    RefDigest,
)
from services.wire.banks import STRONG_BANKS

__all__ = ["Finding", "admits_any_host", "findings"]

Severity = Literal["error", "warning", "info"]
_ORDER: Final = {"error": 0, "warning": 1, "info": 2}


@dataclass(frozen=True)
class Finding:
    """One thing a policy leaves open (or does), at a dotted field of the document."""

    severity: Severity
    field: str
    message: str

    def to_json(self) -> dict[str, Any]:
        return {"severity": self.severity, "field": self.field, "message": self.message}


def _has_allow_list(lists: ImageList | None) -> bool:
    return lists is not None and (lists.allowed_digests is not None
                                  or lists.allowed_signers is not None)


def asks(spec: PolicySpec) -> list[str]:
    """The rules of ``spec`` that can refuse a host however its quote was made (empty: none)."""
    out: list[str] = []
    sb = spec.secure_boot
    if sb is not None:
        if sb.enabled is True:
            out.append("secureBoot.enabled")
        # an allow-list refuses whatever it does not list, even when empty; a required list
        # asks nothing unless it names something
        out += [f"secureBoot.{name}" for name, refs in (("pk", sb.pk), ("kek", sb.kek),
                                                        ("db", sb.db)) if refs is not None]
        if sb.dbx_required:
            out.append("secureBoot.dbx")
    if spec.boot_chain is not None and spec.boot_chain.stages is not None:
        out.append("bootChain.applications")
    if spec.reference_groups:
        out.append("referenceGroups")
    if spec.code_integrity is not None and _has_allow_list(spec.code_integrity.boot_applications):
        out.append("codeIntegrity.bootApplications")
    return out


def admits_any_host(spec: PolicySpec) -> bool:
    """True when no Secure Boot, key-database, boot-chain, reference-group or boot-application
    allow-list rule is configured: the policy would pass any host with a valid quote."""
    return not asks(spec)


def _banks_outside(refs: tuple[RefDigest, ...] | None, required: set[str]) -> list[str]:
    return sorted({r.alg for r in refs or () if r.alg not in required})


def findings(policy: Policy) -> list[Finding]:
    """What ``policy`` leaves open, errors first (an error: the loader refuses it unless
    ``permissive``)."""
    spec = policy.spec
    out: list[Finding] = []
    cover = coverage(policy)
    if admits_any_host(spec):
        sev: Severity = "warning" if spec.permissive else "error"
        out.append(Finding(sev, "spec", "admits any host with a valid quote: no Secure Boot, "
                           "key-database, boot chain, reference group or boot-application "
                           "allow-list rule" + (" (declared permissive)" if spec.permissive
                                                else "; set spec.permissive: true to mean it")))
    sb = spec.secure_boot
    if sb is None or sb.enabled is not True:
        out.append(Finding("warning", "spec.secureBoot.enabled",
                           "Secure Boot is not required: hosts with it off can pass"))
    if sb is None or sb.db is None:
        out.append(Finding("warning", "spec.secureBoot.db",
                           "db entries are not checked: an extra certificate in db passes"))
    if sb is None or not sb.dbx_required:
        out.append(Finding("warning", "spec.secureBoot.dbx",
                           "dbx revocations are not required: a host may run without them"))
    chain = spec.boot_chain
    ci = spec.code_integrity
    if (chain is None or chain.stages is None) and (ci is None
                                                    or not _has_allow_list(ci.boot_applications)):
        out.append(Finding("warning", "spec.bootChain.applications",
                           "no boot chain or boot-application allow-list: any boot loader and "
                           "kernel pass"))
    if chain is None or chain.cmdline is None:
        out.append(Finding("info", "spec.bootChain.kernelCmdline",
                           "the Linux kernel command line is not checked (init=/bin/sh passes)"))
    if spec.debug is None or all(getattr(spec.debug, a) is None for _, a in DEBUG_FLAGS):
        out.append(Finding("info", "spec.debug", "no Windows debug control is checked (a "
                           "kernel debugger passes on Windows hosts)"))
    if not spec.reference_groups:
        out.append(Finding("warning", "spec.referenceGroups",
                           "no reference group: firmware is not pinned, and no host's platform "
                           "is ever proven, so Windows-only and Linux-only rules both apply to "
                           "every host (a mixed fleet fails)"))
    else:
        unproven = [g.name for g in spec.reference_groups if g.platform is None]
        if unproven:
            out.append(Finding("info", "spec.referenceGroups",
                               f"group(s) {', '.join(unproven)} prove no platform: a host "
                               "matching only them gets every platform's rules"))
    banks = spec.bank_spec
    required = set(banks.require_banks)
    if not required & STRONG_BANKS:
        out.append(Finding("warning", "spec.banks.require",
                           f"only {', '.join(sorted(required))} is required: hosts are judged "
                           "by SHA-1 digests alone"))
    if not banks.refuse_sha1_only:
        out.append(Finding("warning", "spec.banks.refuseSha1Only",
                           "a SHA-1-only quote is accepted while stronger banks are active"))
    for where, refs in _allow_lists(spec):
        stray = _banks_outside(refs, required)
        if stray:
            out.append(Finding("warning", where, f"digests in bank(s) {', '.join(stray)} never "
                               "approve: the policy requires "
                               f"{', '.join(sorted(required))}"))
    for where, lst in _ima_lists(spec):
        algs = sorted({r.alg for r in lst.denied})
        if algs:
            out.append(Finding("info", f"{where}.denied",
                               f"IMA hashes each file in the algorithm the host's kernel chooses "
                               f"(ima_hash=): an entry in an algorithm other than "
                               f"{', '.join(algs)} fails as unconfirmable"))
    for t in spec.evidence.allowed_event_types:
        out.append(Finding("info", "spec.evidence.allowedEventTypes",
                           f"event type {t.event_type:#010x} is accepted in PCR {t.pcr} as an "
                           "opaque measurement"))
    for quirk_id in spec.evidence.allowed_quirks:
        quirk = quirk_by_id(quirk_id)  # the loader accepts only known ids
        layer = quirk.layer.value if quirk is not None else "unknown"
        out.append(Finding("warning", "spec.evidence.allowedQuirks",
                           f"firmware quirk {quirk_id} ({layer} layer) is accepted: evidence "
                           "showing it passes where it would otherwise fail closed"))
    for name in spec.evidence.allowed_anomalies:
        out.append(Finding("info", "spec.evidence.allowedAnomalies",
                           f"anomaly {name} is accepted"))
    if spec.permissive and not admits_any_host(spec):
        out.append(Finding("info", "spec.permissive", "declared permissive, but the policy "
                           "asks something; the flag changes nothing"))
    beyond = [p for p in cover.pcrs if "requirePcrs" not in cover.reasons[p]
              and "firmware" not in cover.reasons[p]]
    out.append(Finding("info", "spec.banks", "every quote must cover "
                       f"{', '.join(cover.banks)} PCRs {', '.join(map(str, cover.pcrs))}"
                       + (f" (PCRs {', '.join(map(str, beyond))} because rules read them)"
                          if beyond else "")))
    return sorted(out, key=lambda f: (_ORDER[f.severity], f.field))


def _ima_lists(spec: PolicySpec) -> list[tuple[str, ImaList]]:
    ci = spec.code_integrity
    if ci is None:
        return []
    return [(f"spec.codeIntegrity.ima.{key}", lst)
            for key, lst in (("kernelModules", ci.ima_kernel_modules),
                             ("executables", ci.ima_executables)) if lst is not None]


def _allow_lists(spec: PolicySpec) -> list[tuple[str, tuple[RefDigest, ...] | None]]:
    out: list[tuple[str, tuple[RefDigest, ...] | None]] = []
    ci = spec.code_integrity
    if ci is not None:
        for key, lists in (("bootApplications", ci.boot_applications), ("drivers", ci.drivers)):
            if lists is not None:
                out.append((f"spec.codeIntegrity.{key}.allowedDigests", lists.allowed_digests))
    if spec.boot_chain is not None and spec.boot_chain.stages is not None:
        for i, stage in enumerate(spec.boot_chain.stages):
            out.append((f"spec.bootChain.applications[{i}].digests", stage.digests))
    for g in spec.reference_groups:
        if g.first_boot_application:
            out.append((f"spec.referenceGroups.{g.name}.firstBootApplication",
                        g.first_boot_application))
    return out
