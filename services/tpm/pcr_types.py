"""Which event types may appear in which PCR: one table, and what an opaque measurement means.

The digest an event was extended with does not cover its ``event_type`` (PFP 1.05 section
10.2), so a host can relabel any event in any PCR and still replay to its quote. Two things keep
a relabelled event from hiding what was measured:

1. **The table** (:data:`TPM_PCR_TYPES`): each PCR lists the types the TCG PC Client Platform
   Firmware Profile (1.05 rev 23, sections 3.3.4 and 10.4.1, Table 9) assigns to it for PCRs
   0-7, and the boot-loader and OS conventions for 8-14 (GRUB 2 and the Linux EFI stub in 8-9,
   systemd-stub in 11-13, shim in 14, the Windows Boot Configuration Log in 11-14). An event of
   any other type, or of a type outside the spec, fails closed wherever it is (a policy may accept
   one named (PCR, type) pair only in a PCR no built-in rule reads: see
   ``services.verifier.policy.model.TOLERANT_PCRS``). PCRs 10 and 15-23 have no TCG-log events
   at all: IMA, systemd's userspace measurements, debug and DRTM PCRs keep their own logs.
2. **Opaque code** (:data:`CODE_PCRS`): types whose data is bound to the digest are checked
   (``services.tpm.bindings``), so relabelling a measurement as one of them breaks its binding.
   What remains are types whose digest is of something outside the log (an image, a blob). In a
   code PCR every such event is code that ran, whatever its label: in PCR 4 a boot application
   (so an EFI application logged as ``EV_IPL`` stays in the boot chain), in PCR 2 a driver.

Rows for an Intel TDX CCEL log (:data:`CCEL_MR_TYPES`) follow the TDVF mapping of PCRs to
measurement registers: MR 1 (RTMR0) takes what PCRs 0, 1 and 7 take, MR 2 (RTMR1) what PCRs
2-6 take, MR 3 (RTMR2) what PCRs 8-15 take (TDX Virtual Firmware Design Guide, section 10.2).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Final, Literal

from services.tpm.eventlog import EventType as T

__all__ = [
    "CCEL_MR_TYPES",
    "CODE_PCRS",
    "TPM_PCR_TYPES",
    "allowed_types",
    "code_kind",
]

Registers = Literal["tpm", "ccel"]

_FIRMWARE_CODE: Final = frozenset({
    T.EV_POST_CODE, T.EV_POST_CODE2, T.EV_S_CRTM_CONTENTS, T.EV_S_CRTM_VERSION,
    T.EV_EFI_PLATFORM_FIRMWARE_BLOB, T.EV_EFI_PLATFORM_FIRMWARE_BLOB2, T.EV_NONHOST_CODE,
    T.EV_NONHOST_CONFIG, T.EV_NONHOST_INFO, T.EV_EFI_HCRTM_EVENT, T.EV_EFI_SPDM_FIRMWARE_BLOB,
    # handoff tables are PCR 1's in the spec; two real logs measure them in PCR 0 (A45, A52)
    T.EV_EFI_HANDOFF_TABLES, T.EV_EFI_HANDOFF_TABLES2,
    T.EV_SEPARATOR, T.EV_EFI_ACTION,
})
_FIRMWARE_CONFIG: Final = frozenset({
    T.EV_EFI_VARIABLE_DRIVER_CONFIG, T.EV_EFI_VARIABLE_BOOT, T.EV_EFI_VARIABLE_BOOT2,
    T.EV_EFI_HANDOFF_TABLES, T.EV_EFI_HANDOFF_TABLES2, T.EV_PLATFORM_CONFIG_FLAGS,
    T.EV_TABLE_OF_DEVICES, T.EV_CPU_MICROCODE, T.EV_NONHOST_CONFIG,
    T.EV_EFI_SPDM_FIRMWARE_CONFIG,
    # conventional-BIOS logs tag SMBIOS and setup data in PCR 1 (corpus S06, S07)
    T.EV_EVENT_TAG,
    T.EV_SEPARATOR, T.EV_EFI_ACTION,
})
_OPTION_ROM_CODE: Final = frozenset({
    T.EV_EFI_BOOT_SERVICES_DRIVER, T.EV_EFI_RUNTIME_SERVICES_DRIVER,
    T.EV_EFI_PLATFORM_FIRMWARE_BLOB, T.EV_EFI_PLATFORM_FIRMWARE_BLOB2,
    T.EV_EFI_SPDM_FIRMWARE_BLOB, T.EV_NONHOST_CODE,
    # conventional BIOS measures option ROMs as tagged events (corpus S06)
    T.EV_EVENT_TAG,
    T.EV_SEPARATOR, T.EV_EFI_ACTION,
})
_OPTION_ROM_CONFIG: Final = frozenset({
    T.EV_EFI_VARIABLE_DRIVER_CONFIG, T.EV_EFI_SPDM_FIRMWARE_CONFIG, T.EV_NONHOST_CONFIG,
    T.EV_SEPARATOR, T.EV_EFI_ACTION,
})
_BOOT_LOADER_CODE: Final = frozenset({
    T.EV_EFI_BOOT_SERVICES_APPLICATION,
    T.EV_IPL,  # conventional BIOS: the MBR's boot code (corpus S06)
    T.EV_ACTION, T.EV_EFI_ACTION, T.EV_SEPARATOR,
})
_BOOT_LOADER_CONFIG: Final = frozenset({
    T.EV_EFI_GPT_EVENT, T.EV_EFI_GPT_EVENT2, T.EV_IPL_PARTITION_DATA,
    # Lenovo firmware measures Boot#### variables in PCR 5 as well as PCR 1 (A43, W03)
    T.EV_EFI_VARIABLE_BOOT, T.EV_EFI_VARIABLE_BOOT2,
    T.EV_ACTION, T.EV_EFI_ACTION, T.EV_SEPARATOR,
})
_PLATFORM_STATE: Final = frozenset({
    T.EV_COMPACT_HASH, T.EV_ACTION, T.EV_EFI_ACTION, T.EV_SEPARATOR,
})
_SECURE_BOOT_POLICY: Final = frozenset({
    T.EV_EFI_VARIABLE_DRIVER_CONFIG, T.EV_EFI_VARIABLE_AUTHORITY, T.EV_SEPARATOR,
    T.EV_EFI_ACTION, T.EV_EFI_SPDM_DEVICE_POLICY, T.EV_EFI_SPDM_DEVICE_AUTHORITY,
})
_WINDOWS_AND_STUB: Final = frozenset({T.EV_EVENT_TAG, T.EV_SEPARATOR, T.EV_IPL})

TPM_PCR_TYPES: Final[Mapping[int, frozenset[int]]] = {
    0: _FIRMWARE_CODE,
    1: _FIRMWARE_CONFIG,
    2: _OPTION_ROM_CODE,
    3: _OPTION_ROM_CONFIG,
    4: _BOOT_LOADER_CODE,
    5: _BOOT_LOADER_CONFIG,
    6: _PLATFORM_STATE,
    7: _SECURE_BOOT_POLICY,
    8: frozenset({T.EV_IPL}),  # GRUB commands and command lines; older systemd-boot
    9: frozenset({T.EV_IPL, T.EV_EVENT_TAG}),  # GRUB files; Linux EFI stub initrd/options
    11: frozenset({T.EV_COMPACT_HASH, T.EV_EVENT_TAG, T.EV_IPL}),  # Windows; systemd-stub UKI
    12: _WINDOWS_AND_STUB,  # SIPA, WBCL separator; systemd-stub command line
    13: _WINDOWS_AND_STUB,  # SIPA loaded modules; systemd-stub sysexts
    14: _WINDOWS_AND_STUB,  # SIPA authorities; shim's MokList and friends (EV_IPL)
}
"""PCR -> event types a TCG boot log may extend it with. Absent PCRs take none."""

CCEL_MR_TYPES: Final[Mapping[int, frozenset[int]]] = {
    1: TPM_PCR_TYPES[0] | TPM_PCR_TYPES[1] | TPM_PCR_TYPES[7],
    2: TPM_PCR_TYPES[2] | TPM_PCR_TYPES[3] | TPM_PCR_TYPES[4] | TPM_PCR_TYPES[5]
    | TPM_PCR_TYPES[6],
    3: TPM_PCR_TYPES[8] | TPM_PCR_TYPES[9] | TPM_PCR_TYPES[11] | TPM_PCR_TYPES[12]
    | TPM_PCR_TYPES[13] | TPM_PCR_TYPES[14],
}
"""CCEL measurement-register index -> event types (MR 0, the MRTD, is never logged)."""

CODE_PCRS: Final[Mapping[int, str]] = {2: "driver", 4: "application"}
"""PCRs whose opaque measurements (data not bound to the digest) are code that ran: the
``BootApplication`` kind an unbound event of a non-image type gets there is ``opaque_<kind>``."""

_EMPTY: Final[frozenset[int]] = frozenset()


def allowed_types(registers: Registers, pcr: int) -> frozenset[int]:
    """The event types allowed in ``pcr`` of a ``registers`` log (empty: none at all)."""
    table = TPM_PCR_TYPES if registers == "tpm" else CCEL_MR_TYPES
    return table.get(pcr, _EMPTY)


def code_kind(registers: Registers, pcr: int) -> str | None:
    """What an opaque measurement in ``pcr`` is (``"application"``, ``"driver"``), or None.
    (CCEL logs: MR 2 holds PCR 4's boot applications.)"""
    if registers == "ccel":
        return "application" if pcr == 2 else None
    return CODE_PCRS.get(pcr)
