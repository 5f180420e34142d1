"""Policies must not be weaker than they look (attackers (a) and (d)).

* ``evidence.allowedAnomalies`` names a reason, not a PCR. ``from-log`` writes
  ``tpm.event.undecodable`` for real firmware that logs a PCR 1 boot variable with trailing bytes
  (corpus S06, S07); the same entry then accepts an *undecodable code event in PCR 4*, which the
  claims fold drops (``readings._read`` returns ``usable=False, opaque=False`` when the payload of
  an EV_IPL cannot be found, so ``claims.extract_claims`` neither folds it nor counts it as code).
* The loader's "policies must ask something" guard counts a rule as asking when its section is
  present, even when it asks nothing: ``secureBoot.dbx.required: []``.
* An IMA violation entry's path and file hash are covered by nothing (the kernel extended
  all-``0xFF``), yet the IMA rules read them.

Each test turned a FAIL into a PASS on the code before its fix: code by default in PCRs 2 and 4,
a required list that names nothing asks nothing, IMA rules fail on any violation.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from services.agent import measured_boot as mb
from services.agent.fleet import HostSpec, SimulatedHost
from services.agent.measured_boot import boot_binary, synthesise
from services.tpm.eventlog import EventType as T
from services.tpm.eventlog_builder import TPM_ALG_SHA1, TPM_ALG_SHA256, LogEvent, build_log, measure
from services.verifier.policy.derive import derive_policy, golden_from_log
from services.verifier.policy.errors import PolicyError
from services.verifier.policy.lint import findings
from services.verifier.policy.loader import load_policy
from tests.security.appraisal_support import appraised, events_of, in_force, lab, log_of, relabelled

pytestmark = pytest.mark.swtpm

LINUX = "ubuntu-24.04-shim"
ALGS = (TPM_ALG_SHA1, TPM_ALG_SHA256)


def _extend(host: SimulatedHost, ev: LogEvent) -> LogEvent:
    host.extend(ev.pcr, {"sha1": ev.digest(TPM_ALG_SHA1), "sha256": ev.digest(TPM_ALG_SHA256)})
    return ev


def _golden_with_s06_firmware_quirk() -> bytes:
    """The clean Ubuntu boot on firmware that, like corpus S06/S07, measures a Boot####
    variable with bytes after its VariableData (a non-fatal ``tpm.event.undecodable`` in PCR 1)."""
    events = list(synthesise(LINUX, 0).events)
    odd = measure(1, T.EV_EFI_VARIABLE_BOOT, mb.uefi.uefi_variable_data(
        mb.uefi.EFI_GLOBAL_VARIABLE, "Boot0002",
        mb.uefi.load_option("Setup", r"\EFI\BOOT\setup.efi")) + b"\x00" * 64, ALGS)
    at = next(i for i, e in enumerate(events) if e.pcr == 1 and e.event_type == T.EV_SEPARATOR)
    events.insert(at, odd)
    return build_log(events, ALGS)


def test_accepted_undecodable_anomaly_hides_code_in_pcr4(tmp_path: Path) -> None:
    """Attack: the fleet's golden log comes from S06-like firmware, so ``from-log`` writes
    ``allowedAnomalies: [tpm.event.undecodable]`` ("seen in ... PCR 1: review"). A host whose
    GRUB was replaced relabels that image load, and the kernel's, as EV_IPL with data that is
    not valid UTF-16 (``41 00 00 d8``): the reading fails before any binding, is flagged
    undecodable (non-fatal outside PCRs 7 and 12-14, and accepted) and is dropped from the boot
    chain. Root then extends the approved GRUB and kernel digests.
    Gets: both boot-chain rules pass with an unknown boot loader."""
    text = derive_policy([golden_from_log(_golden_with_s06_firmware_quirk(), "golden-s06-fw")],
                         policy_id="redteam", version="1").text
    policy = in_force(text)
    assert "tpm.event.undecodable" in policy.prepared.policy.spec.evidence.allowed_anomalies
    bad = boot_binary(LINUX, "grubx64.efi", "unknown").authenticode(TPM_ALG_SHA256)
    kernel = boot_binary(LINUX, "vmlinuz").authenticode(TPM_ALG_SHA256)
    with lab(tmp_path, [HostSpec("rt-undec", LINUX, "unknown_bootloader")]) as fleet:
        host = fleet.host("rt-undec")
        honest = appraised(host, policy, label="honest")
        assert "policy.bootchain.applications" in honest.reason_ids
        out = [relabelled(e, T.EV_IPL, b"A\x00\x00\xd8")
               if e.event_type == T.EV_EFI_BOOT_SERVICES_APPLICATION
               and e.digest(TPM_ALG_SHA256) in (bad, kernel) else e for e in events_of(host)]
        grub = boot_binary(LINUX, "grubx64.efi").authenticode(TPM_ALG_SHA256)
        approved = [e for e in synthesise(LINUX, 0).events
                    if e.event_type == T.EV_EFI_BOOT_SERVICES_APPLICATION
                    and e.digest(TPM_ALG_SHA256) in (grub, kernel)]
        out += [_extend(host, e) for e in approved]
        verdict = appraised(host, policy, log=log_of(out), label="forged")
    assert not verdict.passed, "an undecodable code event vanished from PCR 4's boot chain"


ASKS_NOTHING = """\
apiVersion: hostgate/v1
kind: AttestationPolicy
metadata: {id: careless, version: 1, description: "dbx placeholder, to be filled in later"}
spec:
  secureBoot:
    dbx:
      required: []
"""


def test_empty_dbx_requirement_counts_as_asking_something() -> None:
    """Attack (careless author, then any host): a policy whose only rule is
    ``secureBoot.dbx.required: []`` asks nothing (every UEFI host holds all of no revocations),
    so it would admit any host with a valid quote, a Secure-Boot-off one with an unknown boot
    loader included. It must be refused like any policy that asks nothing, and lint must say
    that no dbx revocation is required."""
    with pytest.raises(PolicyError, match="admits any host"):
        load_policy(ASKS_NOTHING)
    found = findings(load_policy(ASKS_NOTHING, require_asks=False))
    assert ("spec", "error") in {(f.field, f.severity) for f in found}
    assert "spec.secureBoot.dbx" in {f.field for f in found}


# --- IMA ---------------------------------------------------------------------------------------
def _ima_entry(path: str, digest: bytes, *, violation: bool = False) -> bytes:
    from tests.unit.test_ima_formats import binary_entry, dng

    return binary_entry("ima-ng", [dng("sha256", digest), path.encode() + b"\x00"],
                        violation=violation)


def test_ima_violation_entry_data_is_unbound_and_rewritten_as_an_approved_file(
        tmp_path: Path) -> None:
    """Attack: the kernel logged a measurement *violation* (ToMToU / open-writers: IMA's "this
    file's measurement cannot be trusted"), extending all-0xFF into PCR 10 and listing the file
    with a zero template hash and a zero file digest. Nothing binds a violation's template data
    (``ima_replay.template_digest`` is 0xFF whatever it holds), yet the IMA rules read its path and
    file hash. The host rewrites the entry's data as an approved executable.
    Gets: ``policy.codeintegrity.ima_executables`` passes; the violation is gone from the claims."""
    import hashlib

    from services.tpm import ima as tpm_ima
    from services.tpm import ima_replay

    approved = hashlib.sha256(b"/usr/bin/approved contents").digest()
    text = derive_policy([golden_from_log(synthesise(LINUX, 0).log_bytes(), "golden")],
                         policy_id="redteam", version="1").text
    text = text.replace("  codeIntegrity:\n", "  codeIntegrity:\n    ima:\n      executables:\n"
                        f"        allowed:\n          - sha256: \"{approved.hex()}\"\n", 1)
    policy = in_force(text)
    with lab(tmp_path, [HostSpec("rt-ima", LINUX)]) as fleet:
        host = fleet.host("rt-ima")
        pcrs = host.quote(b"\x00" * 32, tuple(range(10))).quote.pcr_values["sha256"]
        aggregate = hashlib.sha256(b"".join(pcrs[i] for i in range(10))).digest()
        honest = (_ima_entry("boot_aggregate", aggregate)
                  + _ima_entry("/usr/bin/approved", approved)
                  + _ima_entry("/tmp/payload", bytes(32), violation=True))
        for entry in tpm_ima.parse(honest).entries:  # what the kernel extended
            host.extend(10, {b: ima_replay.template_digest(entry, b) for b in ("sha1", "sha256")})
        before = appraised(host, policy, label="honest", ima_log=honest)
        assert "policy.codeintegrity.ima_executables" in before.reason_ids, before.reason_ids
        laundered = (_ima_entry("boot_aggregate", aggregate)
                     + _ima_entry("/usr/bin/approved", approved)
                     + _ima_entry("/usr/bin/approved", approved, violation=True))
        verdict = appraised(host, policy, label="laundered", ima_log=laundered)
    assert not verdict.passed, "an IMA violation was rewritten as an approved file"
