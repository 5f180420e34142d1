"""Approval by signer needs Secure Boot measured on (attackers (d), then (a)).

A boot-application allow-list of signers only approves an image whose digest is not listed when
every signing authority PCR 7 measured is an approved signer. With Secure Boot off the firmware
verifies nothing and logs no authority, and root can append one afterwards (an
``EV_EFI_VARIABLE_AUTHORITY`` after PCR 7's separator is where authorities normally are; its
data, the approved CA's ``EFI_SIGNATURE_DATA``, is public). ``lint.asks`` counts such a list as
a rule that can refuse a host, so the loader accepted a policy with nothing else.

Attack: boot with Secure Boot off, shim -> an unknown, unsigned GRUB -> any kernel; after boot
extend PCR 7 with the approved db CA as an authority and log it. Refused: no image is approved by
signer unless the (bound, fail-closed) ``SecureBoot`` variable was measured on. Failed (the
verdict was PASS) on the code before the fix.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from cryptography import x509

from services.agent.measured_boot import BootConfig, image_cert, synthesise
from services.tpm.eventlog import EventType as T
from services.tpm.eventlog_builder import measure
from services.verifier.policy.errors import PolicyError
from services.verifier.policy.loader import load_policy
from tests.security.appraisal_support import appraised, in_force, log_of
from tests.security.test_cmdline_as_the_kernel_reads_it import ALGS, LINUX, _booting, _extend

pytestmark = pytest.mark.swtpm


def _subject(role: str) -> str:
    return x509.load_der_x509_certificate(image_cert(LINUX, role)).subject.rfc4514_string()


def _signer_policy() -> str:
    return f"""\
apiVersion: hostgate/v1
kind: AttestationPolicy
metadata: {{id: signers-only, version: 1, description: "boot code must be signed by our CAs"}}
spec:
  codeIntegrity:
    bootApplications:
      allowedSigners: ["{_subject('db-ca')}", "{_subject('vendor')}"]
"""


def test_signer_only_allow_list_admits_a_secure_boot_off_host_running_unsigned_code(
        tmp_path: Path) -> None:
    text = _signer_policy()
    try:
        load_policy(text)
    except PolicyError as exc:  # the fix may be here: such a policy asks nothing
        assert "admits any host" in str(exc)
        return
    policy = in_force(text)
    bad = synthesise(LINUX, 0, BootConfig(secure_boot=False, bootloader="unknown",
                                          kernel="unknown"))
    assert not any(e.event_type == T.EV_EFI_VARIABLE_AUTHORITY for e in bad.events)
    with _booting(tmp_path, {"rt2-sbless": bad}) as hosts:
        host = hosts["rt2-sbless"]
        honest = appraised(host, policy, label="honest")
        assert "policy.codeintegrity.boot_applications" in honest.reason_ids, honest.reason_ids
        owner = next(e for e in synthesise(LINUX, 0).events
                     if e.event_type == T.EV_EFI_VARIABLE_AUTHORITY)  # the golden db authority
        appended = _extend(host, measure(7, T.EV_EFI_VARIABLE_AUTHORITY, owner.data, ALGS))
        verdict = appraised(host, policy, log=log_of([*bad.events, appended]), label="forged")
    assert not verdict.passed, ("a host with Secure Boot off running an unknown, unsigned boot "
                                "loader and kernel passed a signer allow-list the loader counted "
                                "as asking something")
