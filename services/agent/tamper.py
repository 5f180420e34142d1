"""Tamper profiles: the evidence a real compromised host would produce, as data.

A profile changes either the boot itself (``measured``: the TPM measures something else, and
an honest log shows it) or the evidence after the fact (``evidence``: the log or quote is not
what a clean host would send). ``forged_log`` is both: the boot measured Secure Boot off, and
the log was edited afterwards to show the clean boot, so it no longer replays.

Windows-only profiles (SIPA boot flags) apply to the Windows image, Linux-only ones (GRUB,
shim, kernel command line) to the Linux images; ``applies_to(family)`` tells which.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Literal

from services.agent.measured_boot import BootConfig
from services.errors import HostgateError


class EvidenceTamper(StrEnum):
    """How the host's evidence departs from an honest quote of its current state."""

    NONE = "none"
    FORGED_LOG = "forged_log"  # the log shows another boot than the one measured
    REPLAYED_NONCE = "replayed_nonce"  # a fresh quote over a nonce already used
    STALE_QUOTE = "stale_quote"  # an earlier quote re-sent as is
    WRONG_AK = "wrong_ak"  # signed by a key that was never enrolled
    PCR_BANK_DOWNGRADE = "pcr_bank_downgrade"  # only SHA-1 quoted though SHA-256 is active

    @property
    def on_protocol(self) -> bool:
        """Whether it departs in *which challenge is answered and when* rather than in what the
        TPM signs: over Kafka the agent client's evidence hook applies it
        (``services.agent.client.hook_for``), and the host itself quotes honestly."""
        return self in (EvidenceTamper.REPLAYED_NONCE, EvidenceTamper.STALE_QUOTE)


class UnknownTamperProfile(HostgateError):
    """A tamper profile name that is not defined, or one that does not fit the image."""


@dataclass(frozen=True)
class TamperProfile:
    """One kind of compromise. ``boot_changes`` are ``BootConfig`` fields the boot measures."""

    name: str
    description: str
    family: Literal["any", "linux", "windows"]
    boot_changes: tuple[tuple[str, object], ...] = ()
    evidence: EvidenceTamper = EvidenceTamper.NONE

    def applies_to(self, family: str) -> bool:
        """Whether this profile makes sense on an image of ``family``."""
        return self.family in ("any", family)

    def measured_config(self) -> BootConfig:
        """What the TPM measures on a host with this profile."""
        return dataclasses.replace(BootConfig(), **dict(self.boot_changes))  # type: ignore[arg-type]

    def logged_config(self) -> BootConfig:
        """What the host's event log claims was booted."""
        if self.evidence is EvidenceTamper.FORGED_LOG:
            return BootConfig()
        return self.measured_config()


PROFILES: Mapping[str, TamperProfile] = {p.name: p for p in (
    TamperProfile("secure_boot_off", "Secure Boot disabled in firmware setup", "any",
                  (("secure_boot", False),)),
    TamperProfile("boot_debugging_on", "bcdedit /set bootdebug on", "windows",
                  (("boot_debugging", True),)),
    TamperProfile("kernel_debugger_on", "bcdedit /debug on", "windows",
                  (("kernel_debugger", True),)),
    TamperProfile("test_signing_on", "bcdedit /set testsigning on", "windows",
                  (("test_signing", True),)),
    TamperProfile("code_integrity_off", "bcdedit /set nointegritychecks on", "windows",
                  (("code_integrity", False),)),
    TamperProfile("unknown_bootloader", "grubx64.efi replaced by a binary no policy knows",
                  "linux", (("bootloader", "unknown"),)),
    TamperProfile("unknown_kernel", "vmlinuz replaced by a kernel no policy knows", "linux",
                  (("kernel", "unknown"),)),
    TamperProfile("revoked_in_dbx", "an old grubx64.efi whose hash the dbx revokes", "linux",
                  (("bootloader", "revoked"),)),
    TamperProfile("db_tampered", "an extra certificate enrolled in db", "any",
                  (("extra_db_cert", True),)),
    TamperProfile("kernel_cmdline_tampered", "init=/bin/sh appended to the kernel command line",
                  "linux", (("kernel_cmdline_suffix", " init=/bin/sh"),)),
    TamperProfile("forged_log", "booted with Secure Boot off, log edited to look clean", "any",
                  (("secure_boot", False),), EvidenceTamper.FORGED_LOG),
    TamperProfile("replayed_nonce", "a fresh quote over an already used nonce", "any",
                  evidence=EvidenceTamper.REPLAYED_NONCE),
    TamperProfile("stale_quote", "an earlier quote sent again", "any",
                  evidence=EvidenceTamper.STALE_QUOTE),
    TamperProfile("wrong_ak", "quote signed by a never-enrolled key", "any",
                  evidence=EvidenceTamper.WRONG_AK),
    TamperProfile("pcr_bank_downgrade", "only the SHA-1 bank quoted", "any",
                  evidence=EvidenceTamper.PCR_BANK_DOWNGRADE),
)}


def get_profile(name: str) -> TamperProfile:
    """The profile ``name``; raises ``UnknownTamperProfile`` listing the known ones."""
    try:
        return PROFILES[name]
    except KeyError as exc:
        raise UnknownTamperProfile(
            f"unknown tamper profile {name!r}; known: {', '.join(PROFILES)}") from exc
