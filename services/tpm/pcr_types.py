"""Which event types may appear in which PCR: one table, and what an opaque measurement means.

The digest an event was extended with does not cover its ``event_type`` (PFP 1.05 section
10.2), so a host can relabel any event in any PCR and still replay to its quote. Two things keep
a relabelled event from hiding what was measured:

1. **The table** (:data:`TPM_PCR_TYPES`): each PCR lists the types the TCG PC Client Platform
   Firmware Profile (1.05 rev 23, sections 3.3.4 and 10.4.1, Table 9) assigns to it for PCRs
   0-7, and the boot-loader and OS conventions for 8-14 (GRUB 2 and the Linux EFI stub in 8-9,
   systemd-stub in 11 and 12, shim in 14, the Windows Boot Configuration Log in 11-14; PCR 13
   takes no ``EV_IPL``: systemd-stub's unbound sysext measurement could hide Windows' modules). An event of
   any other type, or of a type outside the spec, fails closed wherever it is (a policy may accept
   one named (PCR, type) pair only in a PCR no built-in rule reads: see
   ``services.verifier.policy.model.TOLERANT_PCRS``). PCRs 10 and 15-23 have no TCG-log events
   at all: IMA, systemd's userspace measurements, debug and DRTM PCRs keep their own logs.
2. **Label contracts** (:data:`EFI_ACTION_STRINGS`, :func:`content_problem`): a label whose
   data is hashed whole (``EV_EFI_ACTION``, ``EV_SEPARATOR``) could carry *any* measurement whose
   preimage the host knows (an image's Authenticode stream, a UEFI variable) and still bind. So
   each such label has a contract on its content: an ``EV_EFI_ACTION`` is one of the PFP's fixed
   strings, an ``EV_ACTION`` a short printable string, a separator one of its fixed values, an
   ``EV_IPL`` in PCR 12 printable UTF-16 text (systemd-stub) and in PCR 14 one of shim's variable
   names. Content outside its label's contract fails closed (outside :data:`TOLERANT_PCRS`).
3. **Code by default** (:data:`CODE_PCRS`): in a code PCR, every event that is not a separator
   or an action string meeting its contract is code that ran, whatever its label: in PCR 4 a boot application (so an EFI application logged as ``EV_IPL``, or with data
   that does not decode, stays in the boot chain), in PCR 2 a driver.

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
    "EFI_ACTION_STRINGS",
    "TOLERANT_PCRS",
    "TPM_PCR_TYPES",
    "allowed_types",
    "code_kind",
    "content_problem",
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
    # PFP 1.06 adds EV_EFI_SPDM_DEVICE_POLICY/AUTHORITY here; hostgate neither binds nor reads
    # them yet, so a measurement labelled as one would vanish: they fail closed until it does
    T.EV_EFI_VARIABLE_DRIVER_CONFIG, T.EV_EFI_VARIABLE_AUTHORITY, T.EV_SEPARATOR,
    T.EV_EFI_ACTION,
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
    12: _WINDOWS_AND_STUB,  # SIPA, WBCL separator; systemd-stub command line (EV_IPL)
    13: frozenset({T.EV_EVENT_TAG, T.EV_SEPARATOR}),  # SIPA loaded modules, WBCL separator
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

TOLERANT_PCRS: Final = frozenset({0, 1, 3, 5, 6})
"""PCRs no built-in rule reads claims from. There a content-contract breach is a non-fatal
anomaly a policy may accept, and a policy may accept one named (PCR, type) pair outside the table
(``evidence.allowedEventTypes``); the event then counts by its digest only."""

EFI_ACTION_STRINGS: Final = frozenset({
    b"Calling EFI Application from Boot Option",
    b"Returning from EFI Application from Boot Option",
    b"Exit Boot Services Invocation",
    b"Exit Boot Services Returned with Failure",
    b"Exit Boot Services Returned with Success",
    b"UEFI Debug Mode",
    b"DMA Protection Disabled",
})
"""The EV_EFI_ACTION strings of PFP 1.05 section 10.4.4 (PCRs 4, 5, 7): every one seen in the
corpus, and short fixed text no image, blob or variable can be."""
MAX_ACTION_STRING: Final = 128
"""Longest EV_ACTION text accepted (conventional-BIOS strings such as "Calling INT 19h" or
"Booting BCV Device 80 - Hard Disk"; corpus S06)."""
SEPARATOR_VALUES: Final = frozenset({b"\x00\x00\x00\x00"})
WBCL_SEPARATOR: Final = b"WBCL"
WBCL_PCRS: Final = frozenset({12, 13, 14})
SHIM_IPL_NAMES: Final = frozenset({b"MokList\x00", b"MokListX\x00", b"MokListTrusted\x00",
                                   b"MokSBState\x00"})
"""What shim logs as EV_IPL in PCR 14 (``shim.c`` ``measure_mok``): the variable's name; the
digest is over its content."""
ERROR_SEPARATORS: Final = frozenset({b"\x01\x00\x00\x00", b"\xff\xff\xff\xff"})

_EMPTY: Final[frozenset[int]] = frozenset()


def _printable_ascii(data: bytes) -> bool:
    return bool(data) and all(0x20 <= b < 0x7F for b in data)


def _printable_utf16(data: bytes) -> bool:
    text = data[: len(data) & ~1]
    if len(text) < 2:
        return False
    try:
        decoded = text.decode("utf-16-le").rstrip("\x00")
    except UnicodeDecodeError:
        return False
    return bool(decoded) and decoded.isprintable()


def content_problem(registers: Registers, pcr: int, event_type: int, data: bytes) -> str | None:
    """Why ``data`` breaks the content contract of its label in ``pcr``, or None.

    Separators: ``00000000`` (and ``WBCL`` in PCRs 12-14); error values are the fold's to report.
    ``EV_EFI_ACTION``: one of :data:`EFI_ACTION_STRINGS`. ``EV_ACTION``: printable ASCII, at most
    :data:`MAX_ACTION_STRING` bytes. ``EV_IPL`` in PCR 12 (TPM logs): printable UTF-16 text; in
    PCR 14: one of :data:`SHIM_IPL_NAMES`. Other labels have structural decoders of their own.
    """
    if event_type == T.EV_SEPARATOR:
        if data in SEPARATOR_VALUES or data in ERROR_SEPARATORS:
            return None
        if data == WBCL_SEPARATOR and registers == "tpm" and pcr in WBCL_PCRS:
            return None
        return f"separator data {data[:16].hex()} is not a separator value"
    if event_type == T.EV_EFI_ACTION:
        if data in EFI_ACTION_STRINGS:
            return None
        return f"EV_EFI_ACTION data {data[:40]!r} is not one of the PFP's action strings"
    if event_type == T.EV_ACTION:
        if len(data) <= MAX_ACTION_STRING and _printable_ascii(data.rstrip(b"\x00")):
            return None
        return f"EV_ACTION data ({len(data)} bytes) is not a short printable string"
    if event_type == T.EV_IPL and registers == "tpm":
        if pcr == 12 and not _printable_utf16(data):
            return "EV_IPL in PCR 12 is not the printable UTF-16 text systemd-stub measures"
        if pcr == 14 and data not in SHIM_IPL_NAMES:
            return f"EV_IPL in PCR 14 is not one of shim's variable names ({data[:24]!r})"
    return None


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
