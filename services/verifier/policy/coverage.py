"""What a policy requires a quote to prove: the banks and PCRs its rules read.

Coverage belongs to the policy, never to the host. A rule can only be confirmed from events
in PCRs that were quoted and whose replay matched, so the PCRs a quote must cover are:

* PCRs 0-7 (the firmware's; a log must always account for them);
* every PCR the author lists in ``banks.requirePcrs``;
* every PCR a configured rule reads its claims from (:data:`RULE_PCRS`, one table), so a
  careless author cannot ask a question whose evidence the host may leave out;
* every PCR a reference group pins, and each external PCR (IMA's).

Each required bank (``banks.require``, SHA-256 by default) must be quoted with all of them and
replayed from the boot log. The collector's challenge asks for exactly :meth:`Coverage.selection`
and intake refuses any other; the verifier checks the same coverage again (the policy may have
changed between challenge and appraisal). Pure: no I/O.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final

from services.verifier.policy import ids
from services.verifier.policy.model import DEBUG_FLAGS, ExternalPcr, Policy, PolicySpec

__all__ = [
    "CLAIM_SOURCE_PCRS",
    "DEFAULT_IMA_PCR",
    "FIRMWARE_PCRS",
    "RULE_PCRS",
    "WINDOWS_PCRS",
    "Coverage",
    "coverage",
    "external_pcrs",
    "rule_pcrs",
    "uses_ima",
]

FIRMWARE_PCRS: Final = frozenset(range(8))
"""PCRs every quote covers whatever the policy says (PFP: the firmware's PCRs)."""
WINDOWS_PCRS: Final = frozenset({12, 13, 14})
"""Where Windows measures its boot configuration (SIPA events in EV_EVENT_TAG)."""
CLAIM_SOURCE_PCRS: Final = frozenset({*range(10), *WINDOWS_PCRS})
"""Every PCR some claim is read from (custom CEL rules may read any claim)."""
DEFAULT_IMA_PCR: Final = 10
"""IMA's PCR unless the policy names another (Linux ``CONFIG_IMA_MEASURE_PCR_IDX``)."""

_SECURE_BOOT: Final = frozenset({7})
_IMAGES_PCR4: Final = frozenset({4, 7})  # images in PCR 4, their signers in PCR 7
_DRIVERS: Final = frozenset({2, 7}) | WINDOWS_PCRS  # UEFI drivers, signers, Windows modules
# GRUB (PCR 8), systemd-stub (PCR 12), the kernel's own load options (PCR 9)
_CMDLINE: Final = frozenset({8, 9, 12})

RULE_PCRS: Final[Mapping[str, frozenset[int]]] = {
    ids.SECUREBOOT_ENABLED: _SECURE_BOOT,
    ids.SECUREBOOT_PK: _SECURE_BOOT,
    ids.SECUREBOOT_KEK: _SECURE_BOOT,
    ids.SECUREBOOT_DB: _SECURE_BOOT,
    ids.SECUREBOOT_DBX: _SECURE_BOOT,
    ids.SECUREBOOT_UNKNOWN_PCR7: _SECURE_BOOT,
    ids.DEBUG_BOOT_DEBUGGING: WINDOWS_PCRS,
    ids.DEBUG_KERNEL_DEBUGGER: WINDOWS_PCRS,
    ids.DEBUG_HYPERVISOR_DEBUG: WINDOWS_PCRS,
    ids.DEBUG_TEST_SIGNING: WINDOWS_PCRS,
    ids.DEBUG_FLIGHT_SIGNING: WINDOWS_PCRS,
    ids.DEBUG_SAFE_MODE: WINDOWS_PCRS,
    ids.DEBUG_WIN_PE: WINDOWS_PCRS,
    ids.CI_ENABLED: WINDOWS_PCRS,
    ids.CI_SI_POLICY: WINDOWS_PCRS,
    ids.CI_DEP: WINDOWS_PCRS,
    ids.CI_HVCI: WINDOWS_PCRS,
    ids.CI_BOOT_APPLICATIONS: _IMAGES_PCR4,
    ids.CI_DRIVERS: _DRIVERS,
    ids.BOOTCHAIN_APPLICATIONS: _IMAGES_PCR4,
    ids.BOOTCHAIN_CMDLINE: _CMDLINE,
}
"""Rule id -> the PCRs it reads claims from (TPM registers). IMA rules read the IMA PCR,
reference groups the PCRs they list (and PCR 4 when pinned by their first boot application),
custom rules :data:`CLAIM_SOURCE_PCRS`."""


def _configured(spec: PolicySpec) -> list[str]:
    """The built-in rule ids ``spec`` evaluates whose PCRs come from :data:`RULE_PCRS`."""
    out: list[str] = []
    sb = spec.secure_boot
    if sb is not None:
        for rule, value in ((ids.SECUREBOOT_ENABLED, sb.enabled), (ids.SECUREBOOT_PK, sb.pk),
                            (ids.SECUREBOOT_KEK, sb.kek), (ids.SECUREBOOT_DB, sb.db),
                            (ids.SECUREBOOT_DBX, sb.dbx_required),
                            (ids.SECUREBOOT_UNKNOWN_PCR7, sb.pcr7_variables)):
            if value is not None:
                out.append(rule)
    if spec.debug is not None:
        flag_rules = {
            "boot_debugging": ids.DEBUG_BOOT_DEBUGGING, "kernel_debugger": ids.DEBUG_KERNEL_DEBUGGER,
            "hypervisor_debug": ids.DEBUG_HYPERVISOR_DEBUG, "test_signing": ids.DEBUG_TEST_SIGNING,
            "flight_signing": ids.DEBUG_FLIGHT_SIGNING, "safe_mode": ids.DEBUG_SAFE_MODE,
            "win_pe": ids.DEBUG_WIN_PE,
        }
        out += [flag_rules[attr] for _, attr in DEBUG_FLAGS
                if getattr(spec.debug, attr) is not None]
    ci = spec.code_integrity
    if ci is not None:
        sections: tuple[tuple[str, object], ...] = (
            (ids.CI_ENABLED, ci.enabled), (ids.CI_SI_POLICY, ci.si_policies),
            (ids.CI_DEP, ci.dep), (ids.CI_HVCI, ci.hvci),
            (ids.CI_BOOT_APPLICATIONS, ci.boot_applications), (ids.CI_DRIVERS, ci.drivers))
        out += [rule for rule, value in sections if value is not None]
    bc = spec.boot_chain
    if bc is not None:
        if bc.stages is not None:
            out.append(ids.BOOTCHAIN_APPLICATIONS)
        if bc.cmdline is not None:
            out.append(ids.BOOTCHAIN_CMDLINE)
    return out


def uses_ima(spec: PolicySpec) -> bool:
    """Whether any IMA rule is configured (the IMA list is then required)."""
    ci = spec.code_integrity
    return ci is not None and (ci.ima_kernel_modules is not None
                               or ci.ima_executables is not None)


def external_pcrs(spec: PolicySpec) -> tuple[ExternalPcr, ...]:
    """The PCRs extended outside the TCG boot log: those the policy names, plus IMA's default
    PCR when IMA rules are configured and no IMA PCR is named."""
    named = spec.bank_spec.external_pcrs
    if uses_ima(spec) and not any(e.log == "ima" for e in named):
        return tuple(sorted((*named, ExternalPcr(DEFAULT_IMA_PCR, "ima"))))
    return named


def rule_pcrs(spec: PolicySpec) -> dict[str, frozenset[int]]:
    """Each configured rule id -> the PCRs whose replay-verified events it reads."""
    out = {rule: RULE_PCRS[rule] for rule in _configured(spec)}
    ima = next((e.pcr for e in external_pcrs(spec) if e.log == "ima"), None)
    ci = spec.code_integrity
    if ci is not None and ima is not None:
        if ci.ima_kernel_modules is not None:
            out[ids.CI_IMA_KERNEL_MODULES] = frozenset({ima})
        if ci.ima_executables is not None:
            out[ids.CI_IMA_EXECUTABLES] = frozenset({ima})
    if spec.reference_groups:
        pinned: set[int] = set()
        for g in spec.reference_groups:
            pinned |= g.pcr_indices()
            if g.first_boot_application:
                pinned.add(4)
        out[ids.REFERENCE_GROUPS] = frozenset(pinned)
    for rule in spec.custom_rules:
        out[ids.custom_rule_id(rule.name)] = CLAIM_SOURCE_PCRS
    return out


@dataclass(frozen=True)
class Coverage:
    """Banks and PCRs every quote must cover, each PCR with the reasons it is required."""

    banks: tuple[str, ...]
    pcrs: tuple[int, ...]
    external: tuple[ExternalPcr, ...]
    reasons: Mapping[int, tuple[str, ...]]
    """PCR -> why it is required: ``firmware``, ``requirePcrs``, ``external:<log>`` or the
    rule ids that read it."""

    def selection(self) -> tuple[tuple[str, tuple[int, ...]], ...]:
        """``((bank, pcrs), ...)``: what a challenge asks the host to quote."""
        return tuple((bank, self.pcrs) for bank in self.banks)


def coverage(policy: Policy | PolicySpec) -> Coverage:
    """The coverage ``policy`` requires (see the module docstring)."""
    spec = policy.spec if isinstance(policy, Policy) else policy
    reasons: dict[int, list[str]] = {p: ["firmware"] for p in sorted(FIRMWARE_PCRS)}
    for p in spec.bank_spec.require_pcrs:
        reasons.setdefault(p, []).append("requirePcrs")
    external = external_pcrs(spec)
    for e in external:
        reasons.setdefault(e.pcr, []).append(f"external:{e.log}")
    for rule, pcrs in sorted(rule_pcrs(spec).items()):
        for p in sorted(pcrs):
            reasons.setdefault(p, []).append(rule)
    return Coverage(banks=tuple(sorted(spec.bank_spec.require_banks)),
                    pcrs=tuple(sorted(reasons)), external=external,
                    reasons={p: tuple(r) for p, r in sorted(reasons.items())})
