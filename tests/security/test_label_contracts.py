"""Relabelled events must not hide what was measured (attacker (a): genuine TPM, root).

The event type and (where the convention leaves it out of the hash) part of the data are not
covered by the digest. The per-PCR table and the "opaque code" rule stop a measurement from
being relabelled as a type *outside* its PCR's row or as an *unbound* type in PCRs 2 and 4. These
attacks beat that alone (each test turned a FAIL into a PASS on it); the label contracts
(``services.tpm.pcr_types.content_problem``), code by default in PCRs 2 and 4, command lines read
by content and unbound boot strings marked unverified stop every one:

* a **bound** type in PCRs 2/4 (``EV_EFI_ACTION``, ``EV_ACTION``, ``EV_SEPARATOR``): the binding
  only asks that the data hash to the digest, and for a UEFI image the digest *is* a hash of
  bytes the attacker knows (the Authenticode byte stream of the image it booted), so the image
  logged as an ``EV_EFI_ACTION`` whose data is that stream binds and is no longer code;
* types with the **same binding rule** (whole data) are interchangeable: an
  ``EV_EFI_VARIABLE_DRIVER_CONFIG`` or ``EV_SEPARATOR`` in PCR 7 relabelled ``EV_EFI_ACTION``
  still binds; a SIPA block in PCR 12 relabelled ``EV_IPL`` binds as a "systemd-stub command
  line";
* **unbound, unread** types in PCR 7's row (``EV_EFI_SPDM_DEVICE_POLICY`` /
  ``EV_EFI_SPDM_DEVICE_AUTHORITY``): no preimage needed at all, any PCR 7 event vanishes;
* the **GRUB prefix** of an ``EV_IPL`` is outside GRUB's hash: ``kernel_cmdline: X`` rewritten as
  ``grub_cmd: X`` still binds and is no longer a kernel command line.

Once the real event is hidden, root extends the approved value after it (PCR order within one
PCR is kept: the approved value simply comes later) and the log reads clean. Every quote here is
a real swtpm quote; the verifier is the real core; the policy is ``hostgate policy from-log`` of
clean logs. In the simulator a boot binary's "Authenticode digest" is the SHA-1/SHA-256 of its
``content``, so ``content`` is exactly the byte stream a real attacker would log.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path

import pytest

from services.agent import measured_boot as mb
from services.agent.fleet import HostSpec, SimulatedHost
from services.agent.measured_boot import (
    BootConfig,
    boot_binary,
    get_image,
    image_cert,
    synthesise,
)
from services.tpm.eventlog import EventType as T
from services.tpm.eventlog_builder import TPM_ALG_SHA1, TPM_ALG_SHA256, LogEvent, build_log, measure
from services.tpm.uefi import decode_uefi_variable_data
from services.verifier.policy.derive import derive_policy, golden_from_log
from tests.security.appraisal_support import (
    appraised,
    events_of,
    in_force,
    lab,
    log_of,
    reasons,
    relabelled,
    with_spec,
)

pytestmark = pytest.mark.swtpm

LINUX = "ubuntu-24.04-shim"
WINDOWS = "windows-server-2022"
ALGS = (TPM_ALG_SHA1, TPM_ALG_SHA256)


def _golden(*images: str) -> object:
    golden = [golden_from_log(synthesise(img, 0).log_bytes(), f"golden-{img}") for img in images]
    return in_force(derive_policy(golden, policy_id="redteam", version="1").text)


def _extend(host: SimulatedHost, ev: LogEvent) -> LogEvent:
    """Root after boot: extend ``ev``'s digests (every bank) and log ``ev`` honestly."""
    host.extend(ev.pcr, {"sha1": ev.digest(TPM_ALG_SHA1), "sha256": ev.digest(TPM_ALG_SHA256)})
    return ev


def _variable(ev: LogEvent) -> str:
    return decode_uefi_variable_data(ev.data).name


def _golden_events(image: str, pcr: int, event_type: int) -> list[LogEvent]:
    return [e for e in synthesise(image, 0).events if e.pcr == pcr and e.event_type == event_type]


def _image_contents(image: str, variant: str = "golden") -> dict[bytes, bytes]:
    """SHA-256 "Authenticode" digest -> the bytes it is the hash of, for every boot binary."""
    out: dict[bytes, bytes] = {}
    for name in get_image(image).boot_chain:
        for v in ("golden", variant):
            b = boot_binary(image, name, v)
            out[b.authenticode(TPM_ALG_SHA256)] = b.content
    return out


def _hide_images_as_actions(events: Sequence[LogEvent], contents: dict[bytes, bytes],
                            pick: set[bytes] | None = None) -> list[LogEvent]:
    """Each PCR 4 image load (or those in ``pick``) relabelled EV_EFI_ACTION whose data is the
    image's hashed byte stream: it binds in every bank and is no longer code."""
    out = []
    for e in events:
        d = e.digest(TPM_ALG_SHA256) if e.event_type == T.EV_EFI_BOOT_SERVICES_APPLICATION else None
        if d is not None and (pick is None or d in pick):
            out.append(relabelled(e, T.EV_EFI_ACTION, contents[d]))
        else:
            out.append(e)
    return out


# --- PCR 7 -------------------------------------------------------------------------------------
def test_secure_boot_off_passes_as_on_by_relabelling_pcr7(tmp_path: Path) -> None:
    """Attack: Secure Boot was disabled in firmware setup (PCR 7 measured SecureBoot = 0). The
    host relabels that EV_EFI_VARIABLE_DRIVER_CONFIG event, and PCR 7's EV_SEPARATOR, as
    EV_EFI_ACTION with the same data (whole-data binding holds for both types), then as root
    extends PCR 7 with a SecureBoot = 1 variable and a separator and logs them.
    Gets: ``policy.secureboot.enabled`` passes; the host is admitted with Secure Boot off."""
    policy = _golden(LINUX)
    with lab(tmp_path, [HostSpec("rt-sb", LINUX, "secure_boot_off")]) as fleet:
        host = fleet.host("rt-sb")
        honest = appraised(host, policy, label="honest")
        assert "policy.secureboot.enabled" in reasons(honest)
        out = [relabelled(e, T.EV_EFI_ACTION, e.data)
               if e.pcr == 7 and (e.event_type == T.EV_SEPARATOR or (
                   e.event_type == T.EV_EFI_VARIABLE_DRIVER_CONFIG
                   and _variable(e) == "SecureBoot")) else e
               for e in events_of(host)]
        on = measure(7, T.EV_EFI_VARIABLE_DRIVER_CONFIG, mb.uefi.uefi_variable_data(
            mb.uefi.EFI_GLOBAL_VARIABLE, "SecureBoot", b"\x01"), ALGS)
        out += [_extend(host, on), _extend(host, measure(7, T.EV_SEPARATOR, mb.SEPARATOR_DATA,
                                                         ALGS))]
        verdict = appraised(host, policy, log=log_of(out), label="forged")
    assert not verdict.passed, "Secure Boot OFF passed as ON"


def test_extra_db_certificate_hidden_as_spdm_device_policy(tmp_path: Path) -> None:
    """Attack: an extra certificate was enrolled in db (the attacker's signing key). The host
    relabels the real db variable and PCR 7's separator as EV_EFI_SPDM_DEVICE_POLICY /
    EV_EFI_SPDM_DEVICE_AUTHORITY (in PCR 7's row, not bound, never read: no preimage needed),
    then extends the golden db value and a separator after them.
    Gets: ``policy.secureboot.db`` passes with an attacker certificate in db."""
    policy = _golden(LINUX)
    with lab(tmp_path, [HostSpec("rt-db", LINUX, "db_tampered")]) as fleet:
        host = fleet.host("rt-db")
        honest = appraised(host, policy, label="honest")
        assert "policy.secureboot.db" in reasons(honest)
        out = []
        for e in events_of(host):
            if e.pcr == 7 and e.event_type == T.EV_EFI_VARIABLE_DRIVER_CONFIG \
                    and _variable(e) == "db":
                e = relabelled(e, T.EV_EFI_SPDM_DEVICE_POLICY, e.data)
            elif e.pcr == 7 and e.event_type == T.EV_SEPARATOR:
                e = relabelled(e, T.EV_EFI_SPDM_DEVICE_AUTHORITY, e.data)
            out.append(e)
        golden_db = next(e for e in _golden_events(LINUX, 7, T.EV_EFI_VARIABLE_DRIVER_CONFIG)
                         if _variable(e) == "db")
        out += [_extend(host, golden_db),
                _extend(host, measure(7, T.EV_SEPARATOR, mb.SEPARATOR_DATA, ALGS))]
        verdict = appraised(host, policy, log=log_of(out), label="forged")
    assert not verdict.passed, "an unapproved db certificate passed"


def test_denied_signer_hidden_as_spdm_device_authority(tmp_path: Path) -> None:
    """Attack: the policy denies shim's vendor certificate ("a denied signer anywhere in PCR 7
    fails the rule"). The host relabels the EV_EFI_VARIABLE_AUTHORITY that names it as
    EV_EFI_SPDM_DEVICE_AUTHORITY (unbound, unread). Nothing is extended.
    Gets: ``policy.codeintegrity.boot_applications`` passes although the denied signer verified
    GRUB and the kernel at boot."""
    from cryptography import x509

    base = _golden(LINUX)
    vendor = x509.load_der_x509_certificate(image_cert(LINUX, "vendor")).subject.rfc4514_string()
    ci = base.prepared.policy.spec.code_integrity  # type: ignore[attr-defined]
    policy = with_spec(base, code_integrity=dataclasses.replace(  # type: ignore[arg-type]
        ci, boot_applications=dataclasses.replace(ci.boot_applications,
                                                  denied_signers=(vendor,))))
    with lab(tmp_path, [HostSpec("rt-sig", LINUX)]) as fleet:
        host = fleet.host("rt-sig")
        honest = appraised(host, policy, label="honest")  # type: ignore[arg-type]
        assert "policy.codeintegrity.boot_applications" in reasons(honest)
        out = [relabelled(e, T.EV_EFI_SPDM_DEVICE_AUTHORITY, e.data)
               if e.pcr == 7 and e.event_type == T.EV_EFI_VARIABLE_AUTHORITY
               and _variable(e) == "Shim" else e for e in events_of(host)]
        verdict = appraised(host, policy, log=log_of(out), label="forged")  # type: ignore[arg-type]
    assert not verdict.passed, "a denied signer was hidden"


# --- PCR 4 -------------------------------------------------------------------------------------
def test_unknown_bootloader_hidden_as_efi_action_in_pcr4(tmp_path: Path) -> None:
    """Attack: GRUB was replaced by a binary no policy knows. The host relabels that PCR 4 image
    load (and the kernel load after it) as EV_EFI_ACTION whose data is the image's hashed byte
    stream (binds in SHA-1 and SHA-256), then extends the approved GRUB and kernel digests and
    logs them as image loads. (A real attacker's own loader decides what it measures next, so
    only its own, small, image needs hiding.)
    Gets: boot chain shim -> GRUB -> kernel "matches approved images"; both boot-application
    rules pass."""
    policy = _golden(LINUX)
    with lab(tmp_path, [HostSpec("rt-pcr4", LINUX, "unknown_bootloader")]) as fleet:
        host = fleet.host("rt-pcr4")
        honest = appraised(host, policy, label="honest")
        assert "policy.bootchain.applications" in reasons(honest)
        contents = _image_contents(LINUX, "unknown")
        shim = boot_binary(LINUX, "shimx64.efi").authenticode(TPM_ALG_SHA256)
        out = _hide_images_as_actions(events_of(host), contents,
                                      pick=set(contents) - {shim})
        approved = [e for e in _golden_events(LINUX, 4, T.EV_EFI_BOOT_SERVICES_APPLICATION)
                    if e.digest(TPM_ALG_SHA256) != shim]
        out += [_extend(host, e) for e in approved]
        verdict = appraised(host, policy, log=log_of(out), label="forged")
    assert not verdict.passed, "an unknown boot loader passed"


def _windows_on(image: str) -> list[LogEvent]:
    """A clean Windows boot on ``image``'s firmware (a dual-boot or re-imaged machine of the
    same model: same PCR 0 and PCR 2)."""
    cfg = BootConfig()
    return [*mb._platform_events(get_image(image), 0, cfg),
            *mb._windows_events(get_image(WINDOWS), 0, cfg),
            measure(5, T.EV_EFI_ACTION, mb.EXIT_BOOT_SERVICES, ALGS),
            measure(5, T.EV_EFI_ACTION, mb.EXIT_BOOT_SERVICES_OK, ALGS),
            *(measure(p, T.EV_SEPARATOR, mb.WBCL_SEPARATOR, ALGS) for p in (12, 13, 14))]


def test_linux_host_proves_windows_platform_and_skips_linux_rules(tmp_path: Path) -> None:
    """Attack: a fleet model runs Linux and Windows; ``from-log`` of one clean log of each gives
    a ``linux`` group (first boot application shim) and a ``windows`` group (bootmgfw), same
    firmware. A Linux host booted with ``init=/bin/sh`` hides every PCR 4 image load as
    EV_EFI_ACTION (bound, not code), extends bootmgfw's digest into PCR 4 (now "the first code
    the firmware ran"), and extends a clean WBCL into PCRs 12-14 (unused on Linux).
    Gets: platform ``windows`` proven, so ``policy.bootchain.kernel_cmdline`` (and any IMA rule)
    is NOT_APPLICABLE; the Windows rules pass on the fake WBCL; the verdict is PASS."""
    windows = _windows_on(LINUX)
    golden = [golden_from_log(synthesise(LINUX, 0).log_bytes(), "golden-linux"),
              golden_from_log(build_log(windows, ALGS), "golden-windows-same-model")]
    policy = in_force(derive_policy(golden, policy_id="redteam", version="1").text)
    with lab(tmp_path, [HostSpec("rt-plat", LINUX, "kernel_cmdline_tampered")]) as fleet:
        host = fleet.host("rt-plat")
        honest = appraised(host, policy, label="honest")
        assert "policy.bootchain.kernel_cmdline" in reasons(honest)
        out = _hide_images_as_actions(events_of(host), _image_contents(LINUX))
        fake = [e for e in windows if e.pcr in (12, 13, 14)
                or (e.pcr == 4 and e.event_type == T.EV_EFI_BOOT_SERVICES_APPLICATION)]
        out += [_extend(host, e) for e in fake]
        verdict = appraised(host, policy, log=log_of(out), label="forged")
    assert not verdict.passed, "a Linux host with init=/bin/sh passed as a Windows boot"


# --- PCRs 8 and 12 -----------------------------------------------------------------------------
def test_kernel_cmdline_hidden_by_rewriting_the_grub_prefix(tmp_path: Path) -> None:
    """Attack: the kernel ran with ``init=/bin/sh``. GRUB hashes only the text after its
    ``kernel_cmdline: `` prefix, so the host rewrites that event's data as
    ``grub_cmd: <same text>`` (same bound payload: binds) and extends the golden command line
    as a new ``kernel_cmdline:`` event. (Dropping the prefix altogether makes it an unbound
    "other" string, ignored just the same.)
    Gets: ``policy.bootchain.kernel_cmdline`` passes; the kernel ran ``init=/bin/sh``."""
    policy = _golden(LINUX)
    prefix = b"kernel_cmdline: "
    with lab(tmp_path, [HostSpec("rt-cmd", LINUX, "kernel_cmdline_tampered")]) as fleet:
        host = fleet.host("rt-cmd")
        honest = appraised(host, policy, label="honest")
        assert "policy.bootchain.kernel_cmdline" in reasons(honest)
        out = [relabelled(e, T.EV_IPL, b"grub_cmd: " + e.data[len(prefix):])
               if e.pcr == 8 and e.data.startswith(prefix) else e for e in events_of(host)]
        golden = next(e for e in _golden_events(LINUX, 8, T.EV_IPL) if e.data.startswith(prefix))
        out.append(_extend(host, golden))
        verdict = appraised(host, policy, log=log_of(out), label="forged")
    assert not verdict.passed, "a kernel command line with init=/bin/sh passed"


def test_windows_debug_flags_hidden_by_relabelling_sipa_blocks_as_ipl(tmp_path: Path) -> None:
    """Attack: ``bcdedit /debug on`` (kernel debugger measured ON in PCR 12). The host relabels
    each PCR 12 SIPA block (EV_EVENT_TAG) as EV_IPL: its data starts ``01 00`` (a SIPA tag id),
    decodes as UTF-16 and binds as a "systemd-stub command line" (whole data, like EV_EVENT_TAG
    in PCR 12), and kernel command lines do not apply on a host proven ``windows``. It extends
    the golden PCR 12 blocks after them. (On the corpus's real WBCLs, W03 and W04, the first,
    pre-OS PCR 12 block decodes this way; the later, larger blocks do not.)
    Gets: ``policy.debug.kernel_debugger`` passes with the kernel debugger on."""
    policy = _golden(WINDOWS)
    with lab(tmp_path, [HostSpec("rt-win", WINDOWS, "kernel_debugger_on")]) as fleet:
        host = fleet.host("rt-win")
        honest = appraised(host, policy, label="honest")
        assert "policy.debug.kernel_debugger" in reasons(honest)
        out = [relabelled(e, T.EV_IPL, e.data)
               if e.pcr == 12 and e.event_type == T.EV_EVENT_TAG else e for e in events_of(host)]
        out += [_extend(host, e) for e in _golden_events(WINDOWS, 12, T.EV_EVENT_TAG)]
        verdict = appraised(host, policy, log=log_of(out), label="forged")
    assert not verdict.passed, "a Windows kernel debugger passed"
