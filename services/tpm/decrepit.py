"""TPM 1.2 event logs: recognised, so they are refused with one clear line.

hostgate attests TPM 2.0 hosts: a TPM 1.2 has no ``TPMS_ATTEST`` quote, no SHA-256 bank and no
Secure Boot state of the PFP's kind, so nothing a policy asks can be proven from its log. What
must not happen is that such a log is judged as if it were a TPM 2.0 one and fails for a
by-product (a digest, a bank), or passes a policy derived from it.

Both TPM generations may write the SHA-1 log format (``TCG_PCR_EVENT`` only, no
``"Spec ID Event03"``): TPM 2.0 firmware that was asked for the TCG 1.2 format (EFI TCG2
protocol, ``EFI_TCG2_EVENT_LOG_FORMAT_TCG_1_2``) does too (corpus S08, S10, W04). So the format
alone does not say TPM 1.2. A SHA-1-format log is a TPM 1.2 one when, besides, either

* its first event is the Spec ID event of the TPM 1.2 specifications (``"Spec ID Event00"``,
  TCG EFI Platform Specification 1.2x; ``"Spec ID Event02"``, the PFP for TPM 1.2), or
* it measures nothing into PCR 7 but its separator: the PFP for TPM 2.0 (section 3.3.4.8) requires
  UEFI firmware to measure its Secure Boot variables there, conventional-BIOS and TPM 1.2 EFI
  firmware does not (corpus S06, S07: 9elements/tpmtool's ``tpm12_bios`` and ``tpm12_efi``).
"""

from __future__ import annotations

from typing import Final

from services.tpm.errors import Unsupported
from services.tpm.eventlog import EventLog, EventType

__all__ = ["TPM12_LINE", "Tpm12EventLog", "refuse_tpm12", "tpm12_evidence"]

TPM12_LINE: Final = "TPM 1.2 event log: hostgate attests TPM 2.0 hosts"
_TPM12_SPEC_IDS: Final = (b"Spec ID Event00\x00", b"Spec ID Event02\x00")
_SB_PCR: Final = 7


class Tpm12EventLog(Unsupported):
    """The log is a TPM 1.2 one (see the module docstring)."""


def tpm12_evidence(log: EventLog) -> str | None:
    """Why ``log`` is a TPM 1.2 event log, or None. Untrusted input, pure."""
    if log.format != "sha1":
        return None
    events = log.events
    if events and events[0].event_type == EventType.EV_NO_ACTION \
            and events[0].data.startswith(_TPM12_SPEC_IDS):
        return "its first event is a TPM 1.2 Spec ID event"
    pcr7 = [ev for ev in events if ev.pcr == _SB_PCR and ev.extends]
    # a log with no PCR 7 event at all is a fragment, not a boot (corpus S09): judged as it is
    if pcr7 and all(ev.event_type == EventType.EV_SEPARATOR for ev in pcr7):
        return "SHA-1 log format with no Secure Boot state measured in PCR 7"
    return None


def refuse_tpm12(log: EventLog) -> None:
    """Raise :class:`Tpm12EventLog` (one line: :data:`TPM12_LINE`) if ``log`` is TPM 1.2's."""
    why = tpm12_evidence(log)
    if why is not None:
        raise Tpm12EventLog(f"{TPM12_LINE} ({why})")
