"""EV_IPL strings and Linux EFI-stub tags: GRUB, systemd-boot/stub, shim.

EV_IPL (TCG PC Client PFP 1.05, 10.4.1) data is whatever the boot loader chose to log. The
conventions recognised here, and what each one hashes (its *bound payload*):

* **GRUB 2** (``grub-core/commands/tpm.c``, ``grub_tpm_verify_string``), PCR 8: an ASCII string,
  NUL-terminated, ``"grub_cmd: <command>"``, ``"kernel_cmdline: <cmdline>"`` or
  ``"module_cmdline: <cmdline>"``; the digest is over the text *after* the prefix, without
  the NUL (verified on every GRUB log in the corpus, e.g. A28, A31, A39). PCR 9: a file path;
  the digest is the file's content, so the data is not bound.
* **RHEL/Fedora's pre-upstream GRUB patch** (corpus S07): ``"grub_cmd <cmd>"`` and
  ``"grub_kernel_cmdline <cmdline>"`` without colon; the digest is not reproducible from the
  data (kept as text only, ``bound`` is ``None``).
* **systemd-boot / systemd-stub**, PCR 12 (``src/boot/efi/measure.c``): the kernel command
  line as NUL-terminated UTF-16LE; the digest covers the data exactly (corpus A51). Older
  systemd-boot logged it in PCR 8 with a digest that is not the data's (A32, A48).
* **shim** (``shim.c`` ``measure_mok``), PCR 14: ``"MokList\\0"``, ``"MokListX\\0"``,
  ``"MokListTrusted\\0"``, ``"MokSBState\\0"``; the digest is the variable's content.
* **Linux EFI stub** (``drivers/firmware/efi/libstub``), EV_EVENT_TAG in PCR 9 with tagged IDs
  ``0x8F3B22EC`` (initrd) and ``0x8F3B22ED`` (load options): data is a description, the digest
  is the measured content, so nothing is bound.

Decoded strings are untrusted until replay-verified.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final, Literal

from services.tpm._datareader import DataReader, decode_utf16

__all__ = [
    "LINUX_EFI_INITRD_TAG",
    "LINUX_EFI_LOAD_OPTIONS_TAG",
    "MAX_IPL_TEXT",
    "IplString",
    "decode_ipl",
]

LINUX_EFI_INITRD_TAG: Final = 0x8F3B22EC
LINUX_EFI_LOAD_OPTIONS_TAG: Final = 0x8F3B22ED
#: Longest EV_IPL text decoded (Linux caps a command line at 4 KiB; GRUB strings are shorter).
MAX_IPL_TEXT: Final = 64 * 1024

IplKind = Literal[
    "grub_cmd",
    "kernel_cmdline",
    "module_cmdline",
    "grub_file",
    "grub_legacy_cmd",
    "grub_legacy_kernel_cmdline",
    "systemd_cmdline",
    "shim_mok",
    "other",
]

_GRUB_PREFIXES: Final[tuple[tuple[bytes, IplKind], ...]] = (
    (b"grub_cmd: ", "grub_cmd"),
    (b"kernel_cmdline: ", "kernel_cmdline"),
    (b"module_cmdline: ", "module_cmdline"),
)
_LEGACY_PREFIXES: Final[tuple[tuple[bytes, IplKind], ...]] = (
    (b"grub_cmd ", "grub_legacy_cmd"),
    (b"grub_kernel_cmdline ", "grub_legacy_kernel_cmdline"),
)
_SHIM_NAMES: Final = frozenset({"MokList", "MokListX", "MokListTrusted", "MokSBState"})
_LINUX_COMMANDS: Final = frozenset({"linux", "linuxefi", "linux16", "multiboot", "multiboot2",
                                    "module", "module2"})
"""GRUB commands whose arguments (after the file) become a kernel's command line: Linux's, a
multiboot kernel's (Xen) or a multiboot module's (Xen's dom0 kernel)."""
_CHAINLOADER: Final = "chainloader"
"""``chainloader FILE ARGS`` hands ``ARGS`` to the image as its UEFI LoadOptions, which the
Linux EFI stub takes as its command line."""
_BOTH_SPACES: Final = " \t\n\v\f\r\x00"
"""Characters both Linux and Python count as whitespace (Python's ``str.strip`` also strips
``\x1c``-``\x1f`` and U+00A0, which Linux reads as part of a parameter)."""


@dataclass(frozen=True, slots=True)
class IplString:
    """One decoded EV_IPL event.

    ``text`` is the payload without any convention prefix (the command, the command line, the
    path); ``bound`` is the exact byte string the convention says was hashed, or ``None`` when
    the digest is of something not in the log (a file, a variable's content).
    """

    kind: IplKind
    text: str
    bound: bytes | None

    @property
    def is_kernel_cmdline(self) -> bool:
        """Whether this string's label says it is a kernel command line (the label is not
        hashed: see :meth:`command_line`)."""
        return self.kind in ("kernel_cmdline", "module_cmdline", "grub_legacy_kernel_cmdline",
                             "systemd_cmdline")

    def command_line(self) -> str | None:
        """The kernel command line this string carries, judged by its label *and* its content:
        a GRUB command that starts a kernel (``linux``, ``multiboot``, ``module`` and their
        variants; ``chainloader`` with arguments) carries the command line whatever its
        prefix says (GRUB hashes the payload, not the ``grub_cmd:`` / ``kernel_cmdline:``
        prefix, so a host may relabel one as the other). The line starts with the file, as
        GRUB's ``kernel_cmdline:`` string does."""
        if self.is_kernel_cmdline:
            return self.text
        head, _, rest = self.text.partition(" ")
        if head in _LINUX_COMMANDS and rest:
            return rest
        if head == _CHAINLOADER and len(rest.split(None, 1)) > 1:
            return rest
        return None


def _looks_utf16(data: bytes) -> bool:
    return len(data) >= 2 and data[1] == 0 and data[0] != 0


def decode_ipl(data: bytes, pcr: int, *, base: int = 0, seq: int | None = None) -> IplString:
    """Classify and decode EV_IPL ``data`` measured into ``pcr`` (see module docstring)."""
    if len(data) > MAX_IPL_TEXT:
        raise DataReader(data, base=base, seq=seq).limit(
            f"EV_IPL data of {len(data)} bytes exceeds {MAX_IPL_TEXT}", "event"
        )
    if _looks_utf16(data):
        even = data[: len(data) & ~1]
        text = decode_utf16(even, DataReader(data, base=base, seq=seq), "EV_IPL.utf16", at=0)
        if pcr == 12 or pcr == 8:
            bound = data if pcr == 12 else None
            return IplString("systemd_cmdline", text.strip(_BOTH_SPACES), bound)
        return IplString("other", text, None)
    raw = data.split(b"\x00", 1)[0]
    text = raw.decode("utf-8", "replace")
    if text in _SHIM_NAMES:
        return IplString("shim_mok", text, None)
    for prefix, kind in _GRUB_PREFIXES:
        if raw.startswith(prefix):
            payload = raw[len(prefix) :]
            return IplString(kind, payload.decode("utf-8", "replace"), payload)
    for prefix, kind in _LEGACY_PREFIXES:
        if raw.startswith(prefix):
            return IplString(kind, raw[len(prefix) :].decode("utf-8", "replace"), None)
    if pcr == 9:
        return IplString("grub_file", text, None)
    if pcr == 8:
        # GRUB's prefix is not hashed, so a host may strip it: the payload then is the whole
        # string, still checked against the digest, and classified by content like any other
        return IplString("other", text, raw)
    return IplString("other", text, None)
