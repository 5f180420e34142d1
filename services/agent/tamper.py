"""Tamper profiles: the evidence a real compromised host would produce, as data.

A profile changes the boot itself (``boot_changes``: the TPM measures something else, and an
honest log shows it), the evidence after the fact (``evidence``: the log or quote is not what a
clean host would send), or the protocol (``evidence.is_attack``: records a host writes that are
not its own honest exchange). Departures from what the TPM measured are made the way a host
with a real TPM and root after boot makes them: root may extend PCRs (real TPM2_PCR_Extend in
the host's swtpm) and write any log (``LogEdit``), and the quote is always the TPM's.

* ``forged_log`` measured Secure Boot off; the log shows the clean boot, so it no longer
  replays.
* ``windows_events_dropped``, ``boot_app_relabelled``, ``sha1_only_log`` rewrite the measured
  log (``LogEdit``): drop every event of some PCRs; relabel the last PCR 4 application as
  another event type and append the approved binary's event (extending its digest, so the log
  still replays); keep only some banks' digests.
* ``quote_fewer_pcrs`` quotes PCRs 0-7 of each bank the challenge names, whatever it asks;
  ``pcr_bank_downgrade`` quotes only SHA-1.
* ``replayed_nonce`` and ``stale_quote`` answer the wrong challenge or answer too late: over
  Kafka they are the agent client's evidence hooks (``services.agent.hooks``).
* ``foreign_partition``, ``borrowed_host_id`` and ``challenge_flood`` are protocol attacks
  (``services.agent.attacks``): records on another partition than their key's, an enrolment
  and signed requests under another enrolled host's id, and unsigned challenge requests naming
  another host. The attacker's own TPM and log stay honest.

Windows-only profiles (SIPA boot flags, the Windows events) apply to the Windows image,
Linux-only ones (GRUB, shim, kernel, command line) to the Linux images; ``applies_to(family)``
tells which.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Literal

from services.agent.measured_boot import (
    EV_EFI_BOOT_SERVICES_APPLICATION,
    EV_IPL,
    BootConfig,
    MeasuredBoot,
    boot_application_event,
)
from services.errors import HostgateError
from services.tpm.eventlog_builder import BANK_ALG_IDS, LogEvent, build_log


class EvidenceTamper(StrEnum):
    """How the host's evidence or protocol departs from an honest attestation."""

    NONE = "none"
    FORGED_LOG = "forged_log"  # the log shows another boot than the one measured
    EDITED_LOG = "edited_log"  # the measured log, rewritten by root (``TamperProfile.log_edit``)
    REPLAYED_NONCE = "replayed_nonce"  # a fresh quote over a nonce already used
    STALE_QUOTE = "stale_quote"  # an earlier quote re-sent as is
    WRONG_AK = "wrong_ak"  # signed by a key that was never enrolled
    PCR_BANK_DOWNGRADE = "pcr_bank_downgrade"  # only SHA-1 quoted though SHA-256 is active
    FEWER_PCRS = "fewer_pcrs"  # only ``TamperProfile.quote_pcrs`` of each asked bank quoted
    FOREIGN_PARTITION = "foreign_partition"  # records written to another partition than the key's
    BORROWED_ID = "borrowed_id"  # enrols and asks for challenges under another host's id
    CHALLENGE_FLOOD = "challenge_flood"  # unsigned challenge requests naming another host

    @property
    def on_protocol(self) -> bool:
        """Whether it departs in *which challenge is answered and when* rather than in what the
        TPM signs: over Kafka the agent client's evidence hook applies it
        (``services.agent.hooks.hook_for``), and the host itself quotes honestly."""
        return self in (EvidenceTamper.REPLAYED_NONCE, EvidenceTamper.STALE_QUOTE)

    @property
    def is_attack(self) -> bool:
        """Whether it is a protocol attack of ``services.agent.attacks`` (records the host writes
        besides, or instead of, its honest exchange); its quotes and log are honest."""
        return self in (EvidenceTamper.FOREIGN_PARTITION, EvidenceTamper.BORROWED_ID,
                        EvidenceTamper.CHALLENGE_FLOOD)

    @property
    def names_another_host(self) -> bool:
        """Whether the host's attack records name another host (its victim, ``HostSpec.target``)."""
        return self in (EvidenceTamper.BORROWED_ID, EvidenceTamper.CHALLENGE_FLOOD)


class UnknownTamperProfile(HostgateError):
    """A tamper profile name that is not defined, or one that does not fit the image."""


@dataclass(frozen=True)
class LogEdit:
    """What root does to the measured log before sending it, and the extends it makes after
    boot so that the edited log still replays where it wants it to."""

    drop_pcrs: tuple[int, ...] = ()
    """Every event of these PCRs is left out of the log (the TPM keeps them extended)."""
    banks: tuple[str, ...] | None = None
    """The banks whose digests the log carries (None: every bank the boot measured)."""
    relabel_last_application_as: int | None = None
    """The last PCR 4 ``EV_EFI_BOOT_SERVICES_APPLICATION`` is logged under this type instead
    (same digests: the type is not covered by them), with ``relabel_data`` as its data."""
    relabel_data: bytes = b""
    append_application: str | None = None
    """Root extends PCR 4 with this golden boot binary's digests and logs its load event last,
    so the boot chain seems to end with the approved binary."""

    def apply(self, boot: MeasuredBoot) -> EditedLog:
        """The edited log of ``boot`` and the events root extends after boot for it."""
        events = [e for e in boot.events if e.pcr not in self.drop_pcrs]
        if self.relabel_last_application_as is not None:
            idx = max((i for i, e in enumerate(events)
                       if e.pcr == 4 and e.event_type == EV_EFI_BOOT_SERVICES_APPLICATION),
                      default=None)
            if idx is None:
                raise UnknownTamperProfile(f"boot of {boot.image} logs no PCR 4 application "
                                           "to relabel")
            events[idx] = dataclasses.replace(events[idx],
                                              event_type=self.relabel_last_application_as,
                                              data=self.relabel_data)
        extends: list[LogEvent] = []
        if self.append_application is not None:
            appended = boot_application_event(boot.image, boot.host_seed,
                                              self.append_application)
            extends.append(appended)
            events.append(appended)
        algs = boot.algs if self.banks is None else tuple(BANK_ALG_IDS[b] for b in self.banks)
        return EditedLog(tuple(extends), build_log(events, algs))


@dataclass(frozen=True)
class EditedLog:
    """A rooted host's log: ``log`` to send, after extending ``extends`` (in every bank)."""

    extends: tuple[LogEvent, ...]
    log: bytes


@dataclass(frozen=True)
class TamperProfile:
    """One kind of compromise. ``boot_changes`` are ``BootConfig`` fields the boot measures."""

    name: str
    description: str
    family: Literal["any", "linux", "windows"]
    boot_changes: tuple[tuple[str, object], ...] = ()
    evidence: EvidenceTamper = EvidenceTamper.NONE
    log_edit: LogEdit | None = None
    """``EDITED_LOG``: how root rewrites the measured log."""
    quote_pcrs: tuple[int, ...] | None = None
    """``FEWER_PCRS``: the PCRs quoted in each bank the challenge names."""

    def applies_to(self, family: str) -> bool:
        """Whether this profile makes sense on an image of ``family``."""
        return self.family in ("any", family)

    def measured_config(self) -> BootConfig:
        """What the TPM measures on a host with this profile."""
        return dataclasses.replace(BootConfig(), **dict(self.boot_changes))  # type: ignore[arg-type]

    def logged_config(self) -> BootConfig:
        """What the host's event log claims was booted (before any ``log_edit``)."""
        if self.evidence is EvidenceTamper.FORGED_LOG:
            return BootConfig()
        return self.measured_config()

    def quoted_selection(self, asked: Sequence[tuple[str, Sequence[int]]]
                         ) -> tuple[tuple[str, tuple[int, ...]], ...]:
        """The selection the host quotes when ``asked`` for one (bank by bank)."""
        if self.evidence is EvidenceTamper.FEWER_PCRS and self.quote_pcrs is not None:
            return tuple((bank, tuple(p for p in self.quote_pcrs)) for bank, _ in asked)
        if self.evidence is EvidenceTamper.PCR_BANK_DOWNGRADE:
            # whatever was asked, only SHA-1 (the PCRs of every asked bank, in SHA-1)
            return (("sha1", tuple(sorted({p for _, pcrs in asked for p in pcrs}))),)
        return tuple((bank, tuple(pcrs)) for bank, pcrs in asked)


FIRMWARE_PCRS: tuple[int, ...] = tuple(range(8))
WINDOWS_PCRS: tuple[int, ...] = (11, 12, 13, 14)
#: What root writes for the relabelled kernel: an IPL string as a boot loader logs one, so
#: that the event reads as configuration rather than code.
RELABEL_DATA = b"\\EFI\\BOOT\\fallback.cfg\x00"

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
    TamperProfile("windows_events_dropped",
                  "kernel debugger on; the PCR 11-14 events left out of the log", "windows",
                  (("kernel_debugger", True),), EvidenceTamper.EDITED_LOG,
                  log_edit=LogEdit(drop_pcrs=WINDOWS_PCRS)),
    TamperProfile("boot_app_relabelled",
                  "unknown kernel booted; its PCR 4 event relabelled EV_IPL and the approved "
                  "kernel's digest extended and logged after it", "linux",
                  (("kernel", "unknown"),), EvidenceTamper.EDITED_LOG,
                  log_edit=LogEdit(relabel_last_application_as=EV_IPL, relabel_data=RELABEL_DATA,
                                   append_application="vmlinuz")),
    TamperProfile("sha1_only_log", "the log carries SHA-1 digests only, the quote is the TPM's",
                  "any", evidence=EvidenceTamper.EDITED_LOG, log_edit=LogEdit(banks=("sha1",))),
    TamperProfile("quote_fewer_pcrs", "only PCRs 0-7 quoted, whatever the challenge asks",
                  "any", evidence=EvidenceTamper.FEWER_PCRS, quote_pcrs=FIRMWARE_PCRS),
    TamperProfile("replayed_nonce", "a fresh quote over an already used nonce", "any",
                  evidence=EvidenceTamper.REPLAYED_NONCE),
    TamperProfile("stale_quote", "an earlier quote sent again", "any",
                  evidence=EvidenceTamper.STALE_QUOTE),
    TamperProfile("wrong_ak", "quote signed by a never-enrolled key", "any",
                  evidence=EvidenceTamper.WRONG_AK),
    TamperProfile("pcr_bank_downgrade", "only the SHA-1 bank quoted", "any",
                  evidence=EvidenceTamper.PCR_BANK_DOWNGRADE),
    TamperProfile("foreign_partition",
                  "challenge request and evidence written to another partition than the "
                  "host id's", "any", evidence=EvidenceTamper.FOREIGN_PARTITION),
    TamperProfile("borrowed_host_id",
                  "its own certified TPM enrols and asks for challenges under another "
                  "enrolled host's id", "any", evidence=EvidenceTamper.BORROWED_ID),
    TamperProfile("challenge_flood", "unsigned challenge requests naming another host, many",
                  "any", evidence=EvidenceTamper.CHALLENGE_FLOOD),
)}


def get_profile(name: str) -> TamperProfile:
    """The profile ``name``; raises ``UnknownTamperProfile`` listing the known ones."""
    try:
        return PROFILES[name]
    except KeyError as exc:
        raise UnknownTamperProfile(
            f"unknown tamper profile {name!r}; known: {', '.join(PROFILES)}") from exc
