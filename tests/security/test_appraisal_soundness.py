"""A host with a genuine TPM and root after a bad boot cannot turn its FAIL into a PASS.

One test (or more) per promise of docs/design/threat-model.md that the verifier keeps: every
quoted PCR is accounted for (2), absence is never a pass (3), event types are untrusted in every
PCR (4), no rule depends on the order of events in different PCRs (5), banks are proven, not
declared (6). Each builds the attacker's evidence the way the attacker would: a real swtpm quote
(the host may choose what it extends and what it writes in its log, nothing else) appraised by the
verifier's real core under a policy derived with ``hostgate policy from-log`` from clean logs.
"""

from __future__ import annotations

import dataclasses
import hashlib
import re
from pathlib import Path

import pytest

from services.agent import uefi
from services.agent.fleet import HostSpec
from services.agent.measured_boot import (
    EV_EFI_BOOT_SERVICES_APPLICATION,
    EV_EFI_VARIABLE_AUTHORITY,
    EV_EVENT_TAG,
    EV_IPL,
    EV_POST_CODE,
    boot_binary,
    image_cert,
    synthesise,
)
from services.tpm.eventlog_builder import TPM_ALG_SHA1, TPM_ALG_SHA256, measure
from services.verifier.policy.derive import derive_policy, golden_from_log
from services.verifier.policy.model import ImageList, RefDigest
from tests.security.appraisal_support import (
    FIRMWARE_PCRS,
    appraised,
    events_of,
    extend_unlogged,
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


def golden_policy(*images: str, edit: str = "") -> object:
    """The policy ``from-log`` derives from the clean logs of ``images`` (``edit``: YAML lines
    appended under ``spec:`` by a test)."""
    golden = [golden_from_log(synthesise(img, 0).log_bytes(), f"golden-{img}") for img in images]
    text = derive_policy(golden, policy_id="soundness", version="1").text
    if edit:
        text = text.replace("\nspec:\n", "\nspec:\n" + edit, 1)
    return in_force(text)


def _golden_grub():  # type: ignore[no-untyped-def]
    """The approved GRUB's PCR 4 event in the clean boot (found by its Authenticode digest)."""
    want = boot_binary(LINUX, "grubx64.efi").authenticode(TPM_ALG_SHA256)
    return next(e for e in synthesise(LINUX, 0).events
                if e.event_type == EV_EFI_BOOT_SERVICES_APPLICATION
                and e.digest(TPM_ALG_SHA256) == want)


# --- 2. every quoted PCR is accounted for ------------------------------------------------------
def test_quoted_pcr_extended_outside_the_log_fails(tmp_path: Path) -> None:
    """PCR 11 is quoted; root extended it after boot and the log says nothing of it."""
    policy = golden_policy(LINUX)
    with lab(tmp_path, [HostSpec("acct-1", LINUX)]) as fleet:
        host = fleet.host("acct-1")
        clean = appraised(host, policy, label="clean")
        assert clean.passed, clean.reason_ids
        extend_unlogged(host, 11, b"code run after boot, never logged")
        verdict = appraised(host, policy, label="after")
    assert not verdict.passed
    assert "verifier.replay.pcr_mismatch" in reasons(verdict)


def test_ima_pcr_without_ima_list_is_not_a_pass(tmp_path: Path) -> None:
    """PCR 10 (IMA's) moved but no IMA list accounts for it: the quote is not accounted for."""
    policy = golden_policy(LINUX)
    with lab(tmp_path, [HostSpec("acct-2", LINUX)]) as fleet:
        host = fleet.host("acct-2")
        extend_unlogged(host, 10, b"an IMA measurement the host does not show")
        verdict = appraised(host, policy)
    assert not verdict.passed


# --- 3. absence is never a pass -------------------------------------------------------------
def _without_windows_events(events: list) -> list:  # type: ignore[type-arg]
    return [e for e in events if e.pcr not in (11, 12, 13, 14)]


def test_windows_host_dropping_its_boot_configuration_fails(tmp_path: Path) -> None:
    """Kernel debugger on; the host quotes only PCRs 0-7 and drops PCR 12-14 from its log."""
    policy = golden_policy(WINDOWS)
    with lab(tmp_path, [HostSpec("abs-1", WINDOWS, "kernel_debugger_on")]) as fleet:
        host = fleet.host("abs-1")
        honest = appraised(host, policy, label="honest")
        assert not honest.passed
        log = log_of(_without_windows_events(events_of(host)))
        verdict = appraised(host, policy, pcrs=FIRMWARE_PCRS, log=log, label="hidden")
    assert not verdict.passed


def test_fake_windows_configuration_does_not_switch_off_linux_rules(tmp_path: Path) -> None:
    """A Linux host with init=/bin/sh extends a clean-looking SIPA block into PCRs 12-14 so
    that it "looks like Windows" and the kernel command-line rule would not apply."""
    policy = golden_policy(LINUX, WINDOWS)
    with lab(tmp_path, [HostSpec("abs-2", LINUX, "kernel_cmdline_tampered")]) as fleet:
        host = fleet.host("abs-2")
        events = events_of(host)
        fake = uefi.tagged_event(uefi.SIPA_TRUST_BOUNDARY, b"".join((
            uefi.sipa_bool(uefi.SIPA_OS_KERNEL_DEBUG, False),
            uefi.sipa_bool(uefi.SIPA_CODE_INTEGRITY, True),
            uefi.sipa_bool(uefi.SIPA_TEST_SIGNING, False),
            uefi.sipa_bool(uefi.SIPA_BOOT_DEBUGGING, False),
        )))
        for pcr in (12, 13, 14):
            ev = measure(pcr, EV_EVENT_TAG, fake, ALGS)
            host.extend(pcr, {"sha1": ev.digest(TPM_ALG_SHA1), "sha256": ev.digest(TPM_ALG_SHA256)})
            events.append(ev)
        verdict = appraised(host, policy, log=log_of(events))
    assert not verdict.passed
    assert "policy.bootchain.kernel_cmdline" in reasons(verdict)


# --- 4. event types are untrusted in every PCR -------------------------------------------------
@pytest.mark.parametrize("label_as", [EV_POST_CODE, EV_IPL])
def test_code_logged_under_another_type_in_pcr4_fails(tmp_path: Path, label_as: int) -> None:
    """Root loads one more EFI application after the approved chain and logs it in PCR 4 as a
    POST code or an IPL string, where no boot-chain rule would look."""
    policy = golden_policy(LINUX)
    with lab(tmp_path, [HostSpec("typ-1", LINUX)]) as fleet:
        host = fleet.host("typ-1")
        code = extend_unlogged(host, 4, b"MZ an unapproved EFI application")
        events = [*events_of(host), relabelled(code, label_as, b"ACPI DATA\x00")]
        verdict = appraised(host, policy, log=log_of(events))
    assert not verdict.passed


def _golden_kernel():  # type: ignore[no-untyped-def]
    want = boot_binary(LINUX, "vmlinuz").authenticode(TPM_ALG_SHA256)
    return next(e for e in synthesise(LINUX, 0).events
                if e.event_type == EV_EFI_BOOT_SERVICES_APPLICATION
                and e.digest(TPM_ALG_SHA256) == want)


def test_boot_application_hidden_then_approved_digest_appended_fails(tmp_path: Path) -> None:
    """An unknown kernel ran (the honest log shows it as the last application of PCR 4). The
    attacker relabels that event as an IPL string and appends the approved kernel's digest after
    it, so the boot chain reads shim -> GRUB -> approved kernel."""
    policy = golden_policy(LINUX)
    with lab(tmp_path, [HostSpec("typ-2", LINUX, "unknown_kernel")]) as fleet:
        host = fleet.host("typ-2")
        honest = appraised(host, policy, label="honest")
        assert not honest.passed
        events = events_of(host)
        last = max(i for i, e in enumerate(events)
                   if e.event_type == EV_EFI_BOOT_SERVICES_APPLICATION)
        events[last] = relabelled(events[last], EV_IPL, b"\\EFI\\BOOT\\fallback\x00")
        approved = _golden_kernel()
        host.extend(4, {"sha1": approved.digest(TPM_ALG_SHA1),
                        "sha256": approved.digest(TPM_ALG_SHA256)})
        events.append(approved)
        verdict = appraised(host, policy, log=log_of(events), label="hidden")
    assert not verdict.passed


# --- 5. no rule depends on what no digest covers ------------------------------------------------
def _move_shim_authority_to_end(events: list) -> list:  # type: ignore[type-arg]
    """PCR 7's own order is kept (the shim authority is its last event); only its place relative
    to the PCR 4 images changes, which no digest covers."""
    idx = next(i for i, e in enumerate(events) if e.event_type == EV_EFI_VARIABLE_AUTHORITY
               and b"S\x00h\x00i\x00m\x00" in e.data)
    moved = events.pop(idx)
    return [*events, moved]


def _subject(role: str) -> str:
    from cryptography import x509

    return x509.load_der_x509_certificate(image_cert(LINUX, role)).subject.rfc4514_string()


def _boot_app_list(policy: object, **lists: object) -> object:
    ci = policy.prepared.policy.spec.code_integrity  # type: ignore[attr-defined]
    return with_spec(policy, code_integrity=dataclasses.replace(  # type: ignore[arg-type]
        ci, boot_applications=ImageList(**lists)))  # type: ignore[arg-type]


def test_denied_signer_moved_after_the_images_still_denies(tmp_path: Path) -> None:
    """shim's vendor certificate is denied; the host moves the PCR 7 authority event that names
    it after every PCR 4 image, so no image seems to have been verified by it."""
    policy = _boot_app_list(golden_policy(LINUX), denied_signers=(_subject("vendor"),))
    with lab(tmp_path, [HostSpec("ord-1", LINUX)]) as fleet:
        host = fleet.host("ord-1")
        honest = appraised(host, policy, label="honest")  # type: ignore[arg-type]
        assert not honest.passed
        verdict = appraised(host, policy,  # type: ignore[arg-type]
                            log=log_of(_move_shim_authority_to_end(events_of(host))))
    assert not verdict.passed


def test_unapproved_signer_cannot_be_paired_away(tmp_path: Path) -> None:
    """Only the firmware's db CA is an approved signer; shim's vendor certificate verified GRUB
    and the kernel. Moving that authority event after the images must not let GRUB and the
    kernel "inherit" the db CA."""
    policy = _boot_app_list(golden_policy(LINUX), allowed_signers=(_subject("db-ca"),))
    with lab(tmp_path, [HostSpec("ord-2", LINUX)]) as fleet:
        host = fleet.host("ord-2")
        honest = appraised(host, policy, label="honest")  # type: ignore[arg-type]
        assert not honest.passed
        verdict = appraised(host, policy,  # type: ignore[arg-type]
                            log=log_of(_move_shim_authority_to_end(events_of(host))))
    assert not verdict.passed


# --- 6. banks are proven, not declared ----------------------------------------------------------
def test_sha1_only_log_under_a_dual_bank_quote_fails(tmp_path: Path) -> None:
    """The quote covers SHA-1 and SHA-256; the log carries SHA-1 only, so SHA-256 is never
    replayed. A policy derived from SHA-1 logs would otherwise judge SHA-1 digests alone."""
    sha1_golden = golden_from_log(log_of(list(synthesise(LINUX, 0).events), (TPM_ALG_SHA1,)),
                                  "golden-sha1")
    policy = in_force(derive_policy([sha1_golden], policy_id="soundness", version="1").text)
    with lab(tmp_path, [HostSpec("bank-1", LINUX)]) as fleet:
        host = fleet.host("bank-1")
        verdict = appraised(host, policy, log=log_of(events_of(host), (TPM_ALG_SHA1,)))
    assert not verdict.passed


def test_host_reporting_only_sha1_active_cannot_choose_sha1(tmp_path: Path) -> None:
    """Quote and log in SHA-1 only, and the host says SHA-1 is its only active bank."""
    sha1_golden = golden_from_log(log_of(list(synthesise(LINUX, 0).events), (TPM_ALG_SHA1,)),
                                  "golden-sha1")
    text = derive_policy([sha1_golden], policy_id="soundness", version="1").text
    # The operator's references are SHA-1 ones (legacy hosts), but the policy does not say the
    # fleet may be judged by SHA-1 alone: the default bank requirement applies.
    text = re.sub(r'\n    require:[^\n]*\n      - "sha1"', "", text)
    assert "require:" not in text.split("requirePcrs")[0].split("banks:")[1]
    policy = in_force(text)
    with lab(tmp_path, [HostSpec("bank-2", LINUX)]) as fleet:
        host = fleet.host("bank-2")
        from tests.security import appraisal_support as sup

        evidence = host.quote(sup.nonce_for(host, "sha1"), sup.ALL_PCRS)
        sha1_quote = host._need_tpm().quote(sup.nonce_for(host, "sha1"), sup.ALL_PCRS,
                                            banks=("sha1",), ak=host._ak)
        evidence = dataclasses.replace(evidence, quote=sha1_quote,
                                       event_log=log_of(events_of(host), (TPM_ALG_SHA1,)))
        sub = sup.submitted_record(evidence, evidence_id="bank-2", challenge_id="ch-bank-2",
                                   active_banks=("sha1",), quoted_at_ms=sup.RECEIVED_AT_MS)
        rec = sup.collected_record(sub, ak_public=host.ak_public, ek_public=host.ek_public,
                                   received_at_ms=sup.RECEIVED_AT_MS)
        verdict = sup.appraise(rec, policy)
    assert not verdict.passed


def test_digest_in_a_bank_the_policy_does_not_require_never_approves(tmp_path: Path) -> None:
    """An operator lists the approved GRUB in both banks. Root extends one more application
    whose SHA-1 digest is that GRUB's but whose SHA-256 digest is not (TPM2_PCR_Extend takes one
    digest per bank, chosen freely): it must not be approved by its SHA-1 digest."""
    grub = _golden_grub()
    base = golden_policy(LINUX)
    ci = base.prepared.policy.spec.code_integrity  # type: ignore[attr-defined]
    apps = ci.boot_applications
    listed = (*apps.allowed_digests, RefDigest("sha1", grub.digest(TPM_ALG_SHA1).hex(), "grub"))
    policy = with_spec(base, code_integrity=dataclasses.replace(  # type: ignore[arg-type]
        ci, boot_applications=dataclasses.replace(apps, allowed_digests=listed)))
    with lab(tmp_path, [HostSpec("bank-3", LINUX)]) as fleet:
        host = fleet.host("bank-3")
        clean = appraised(host, policy, label="clean")
        assert clean.passed, clean.reason_ids
        evil = hashlib.sha256(b"MZ evil loader").digest()
        digests = {TPM_ALG_SHA1: grub.digest(TPM_ALG_SHA1), TPM_ALG_SHA256: evil}
        host.extend(4, {"sha1": digests[TPM_ALG_SHA1], "sha256": evil})
        extra = dataclasses.replace(grub, digests=tuple(sorted(digests.items())))
        verdict = appraised(host, policy, log=log_of([*events_of(host), extra]))
    assert not verdict.passed
    assert "policy.codeintegrity.boot_applications" in reasons(verdict)
