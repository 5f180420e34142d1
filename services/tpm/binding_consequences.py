"""What follows when an event's data does not hash to its digest: one table, one row per reason.

Replay vouches for an event's *digest*; its data is believed only where it binds
(:mod:`services.tpm.bindings`, ``docs/design/eventlog-trust.md`` section 3). When it does not
bind, there are two consequences, chosen here and nowhere else:

* **fail closed** (``tpm.binding.digest_mismatch``, fatal): the event's data is something
  security decisions always depend on, so no verdict can be reached without it. Every row of
  :data:`SECURITY_RELEVANT` names such data and why;
* **degrade the claim** (``tpm.binding.data_unverified``, not fatal): everywhere else. The event
  still counts in the replay by its digest (a reference group pins that digest through its PCR
  value), its data is never interpreted, every claim read from it is marked unverified
  (:meth:`services.tpm.claim_records.Claims.unverified_claim`), and a rule that reads such a
  claim fails "cannot be confirmed".

When in doubt, data is security-relevant: the rows are wide on purpose (whole PCRs whose every
label feeds a decision, types that are read wherever they are measured). Add a row before a rule
starts reading a claim from other data (``tests/unit/test_issue_20_unverified_data.py`` checks
the rows' reach).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final, Literal

from services.tpm.eventlog import EventType as T

__all__ = ["SECURITY_RELEVANT", "SecurityRelevant", "data_decides"]

Registers = Literal["tpm", "ccel"]


@dataclass(frozen=True, slots=True)
class SecurityRelevant:
    """Data whose digest mismatch fails the whole evidence closed. ``types`` None: every type;
    ``pcrs`` None: every PCR (per measurement registers; a registers kind missing from the
    mapping: the row does not apply there)."""

    types: frozenset[int] | None
    pcrs: Mapping[Registers, frozenset[int]] | None
    reason: str


def _pcrs(tpm: set[int], ccel: set[int]) -> Mapping[Registers, frozenset[int]]:
    return {"tpm": frozenset(tpm), "ccel": frozenset(ccel)}


SECURITY_RELEVANT: Final[tuple[SecurityRelevant, ...]] = (
    SecurityRelevant(None, _pcrs({7}, {1}),
                     "PCR 7 (a CCEL's MR 1 = RTMR0): Secure Boot state, key databases, "
                     "authorities and debug actions are read from every label there"),
    SecurityRelevant(None, _pcrs({8, 9, 12}, {3}),
                     "boot-loader and kernel PCRs (GRUB in 8, the kernel's load options in 9, "
                     "systemd-stub in 12; a CCEL's MR 3): kernel command lines are read by "
                     "content whatever the label"),
    SecurityRelevant(None, _pcrs({11, 12, 13, 14}, {3}),
                     "Windows Boot Configuration Log (SIPA) and systemd-stub PCRs: debug, code "
                     "integrity and boot-module claims; shim's MOK state in 14"),
    SecurityRelevant(None, _pcrs({2, 4}, {2}),
                     "code PCRs: an event whose data is not believed is a boot application or "
                     "driver, and the boot chain is judged on it"),
    SecurityRelevant(frozenset({T.EV_SEPARATOR}), None,
                     "separators delimit pre-boot from boot and carry the firmware's error "
                     "value; the fold reads both"),
    SecurityRelevant(frozenset({T.EV_EFI_VARIABLE_DRIVER_CONFIG, T.EV_EFI_VARIABLE_AUTHORITY}),
                     None,
                     "a UEFI variable is read by its name, not its PCR: SecureBoot and key "
                     "databases count wherever they are measured, authorities approve images"),
    SecurityRelevant(frozenset({T.EV_EFI_ACTION}), None,
                     "action strings: 'UEFI Debug Mode' and 'DMA Protection Disabled' are "
                     "security claims, and in a code PCR an action is the only label that is "
                     "not code"),
    SecurityRelevant(frozenset({T.EV_IPL}), None,
                     "boot-loader strings: GRUB commands and kernel command lines, shim's MOK "
                     "variable names"),
    SecurityRelevant(frozenset({T.EV_EVENT_TAG, T.EV_COMPACT_HASH}), _pcrs({11, 12, 13, 14}, {3}),
                     "Windows SIPA blocks and BitLocker measurements"),
)
"""Every kind of event data a security decision always depends on (see the module docstring).
What no row names is informational: ``EV_S_CRTM_VERSION`` in PCR 0, boot variables in PCR 1,
the GPT in PCR 5, ``EV_ACTION`` strings in PCR 6 (no built-in rule reads them)."""


def data_decides(registers: Registers, pcr: int, event_type: int) -> str | None:
    """The reason of the first :data:`SECURITY_RELEVANT` row covering an event of
    ``event_type`` in ``pcr`` (read as ``registers``), or None: its data is informational."""
    for row in SECURITY_RELEVANT:
        if row.types is not None and event_type not in row.types:
            continue
        if row.pcrs is not None and pcr not in row.pcrs.get(registers, frozenset()):
            continue
        return row.reason
    return None
