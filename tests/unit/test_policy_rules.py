"""Built-in rules on real claims: reference groups, banks, boot chain, command line, images."""

from __future__ import annotations

import dataclasses

from services.verifier.policy import ids
from services.verifier.policy.evaluate import evaluate, prepare, subject
from services.verifier.policy.loader import load_policy
from services.verifier.policy.results import Outcome, Verdict
from tests.unit.policy_helpers import golden, platform_group, rule_policy_text


def _judge(spec: str, entry_id: str, **kw: object) -> Verdict:
    g = golden(entry_id)
    subj = subject(g.claims, g.events, active_banks=g.log.banks, **kw)  # type: ignore[arg-type]
    return evaluate(prepare(load_policy(rule_policy_text(spec))), subj)


def _group(name: str, bank: str, values: dict[int, str]) -> str:
    body = "".join(f"          {p}: {v}\n" for p, v in values.items())
    return f"    - name: {name}\n      pcrs:\n        {bank}:\n{body}"


def test_host_matching_group_b_but_not_a_passes() -> None:
    host = golden("A36").claims.pcrs["sha256"]
    other = golden("A24").claims.pcrs["sha256"]
    assert host[0] != other[0]
    group_a = _group("build-a", "sha256", {0: other[0].hex(), 2: other[2].hex()})
    group_b = _group("build-b", "sha256", {0: host[0].hex(), 2: host[2].hex()})
    v = _judge("  referenceGroups:\n" + group_a + group_b, "A36")
    r = v.result(ids.REFERENCE_GROUPS)
    assert r is not None and r.outcome is Outcome.PASS and "'build-b'" in r.message
    only_a = _judge("  referenceGroups:\n" + group_a, "A36")
    r = only_a.result(ids.REFERENCE_GROUPS)
    assert r is not None and r.outcome is Outcome.FAIL
    assert "closest is 'build-a'" in r.message and "PCR 0 (sha256)" in r.message


def test_group_naming_an_absent_bank_never_matches() -> None:
    group = _group("sha512-build", "sha512", {0: "00" * 64})
    v = _judge("  referenceGroups:\n" + group, "A36")
    r = v.result(ids.REFERENCE_GROUPS)
    assert r is not None and r.outcome is Outcome.FAIL and "not in the evidence" in r.message


def test_sha1_only_quote_refused_when_stronger_bank_active() -> None:
    spec = "  banks:\n    requirePcrs: [0, 7]\n"
    g = golden("A36")
    sha1_only = {"sha1": sorted(g.claims.pcrs["sha1"])}
    v = _judge(spec, "A36", quoted_pcrs=sha1_only)
    r = v.result(ids.BANKS_SHA1_ONLY)
    assert r is not None and r.outcome is Outcome.FAIL and "sha256" in r.message
    ok = _judge(spec, "A36")
    assert ok.passed
    # a TPM 1.2-format log: SHA-1 is the only active bank, so a SHA-1 quote is all there is
    legacy = _judge(spec, "S10")
    r = legacy.result(ids.BANKS_SHA1_ONLY)
    assert r is not None and r.outcome is Outcome.PASS
    without_14 = {b: sorted(p for p in v if p != 14) for b, v in g.claims.pcrs.items()}
    missing = _judge("  banks:\n    requirePcrs: [0, 14]\n", "A36", quoted_pcrs=without_14)
    r = missing.result(ids.BANKS_REQUIRED_PCRS)
    assert r is not None and r.outcome is Outcome.FAIL and "14" in r.message


def test_boot_chain_stage_mismatch_names_stage_and_event() -> None:
    g = golden("A36")
    apps = [a for a in g.claims.boot_applications if a.kind == "application"]
    d = [a.digests["sha256"].hex() for a in apps]
    spec = ("  bootChain:\n    applications:\n"
            f"      - {{name: shim, digests: [{{sha256: {d[0]}}}]}}\n"
            f"      - {{name: grub, digests: [{{sha256: {d[2]}}}]}}\n"
            f"      - {{name: kernel, digests: [{{sha256: {d[1]}}}]}}\n")
    v = _judge(spec, "A36")
    r = v.result(ids.BOOTCHAIN_APPLICATIONS)
    assert r is not None and r.outcome is Outcome.FAIL
    assert "Boot stage 2 (grub)" in r.message
    assert r.event is not None and r.event.seq == apps[1].seq and r.event.pcr == 4
    assert r.event.digest == f"sha256:{d[1]}"


def test_kernel_cmdline_rules() -> None:
    base = "  bootChain:\n    kernelCmdline:\n"
    ok = _judge(base + "      required: [ro, module.sig_enforce=1]\n"
                "      forbidden: [init_on_free=0, debug]\n", "A36")
    assert ok.passed, [r.message for r in ok.failed]
    bad = _judge(base + "      forbidden: [console]\n", "A36")
    r = bad.result(ids.BOOTCHAIN_CMDLINE)
    assert r is not None and r.outcome is Outcome.FAIL and "'console=ttyS0'" in r.message
    assert r.event is not None and r.event.type == "EV_IPL" and r.event.pcr == 8
    lacks = _judge(base + "      required: [lockdown=integrity]\n", "A36")
    r = lacks.result(ids.BOOTCHAIN_CMDLINE)
    assert r is not None and r.outcome is Outcome.FAIL and "lockdown=integrity" in r.message
    # A proven Windows boot has no Linux command line: not applicable, not pass
    group = "  referenceGroups:\n" + platform_group(golden("W03"))
    win = _judge(base + "      required: [ro]\n" + group, "W03")
    r = win.result(ids.BOOTCHAIN_CMDLINE)
    assert r is not None and r.outcome is Outcome.NOT_APPLICABLE
    # ... but a Windows boot configuration alone proves nothing (any root can extend PCR 12)
    unproven = _judge(base + "      required: [ro]\n", "W03")
    r = unproven.result(ids.BOOTCHAIN_CMDLINE)
    assert r is not None and r.outcome is Outcome.FAIL


def test_denied_boot_application_fails_even_if_allowed() -> None:
    g = golden("W03")
    app = next(a for a in g.claims.boot_applications if a.kind == "application")
    digest = app.digests["sha256"].hex()
    spec = ("  codeIntegrity:\n    bootApplications:\n"
            f"      allowedDigests: [{{sha256: {digest}}}]\n"
            f"      deniedDigests: [{{sha256: {digest}, name: revoked bootmgr}}]\n")
    v = _judge(spec, "W03")
    r = v.result(ids.CI_BOOT_APPLICATIONS)
    assert r is not None and r.outcome is Outcome.FAIL and "revoked bootmgr" in r.message
    signer = ("  codeIntegrity:\n    bootApplications:\n      allowedSigners:\n"
              "        - CN=Microsoft Windows Production PCA 2011,O=Microsoft Corporation,"
              "L=Redmond,ST=Washington,C=US\n")
    r = _judge(signer, "W03").result(ids.CI_BOOT_APPLICATIONS)
    assert r is not None and r.outcome is Outcome.PASS


def test_hypervisor_debug_unmeasured_passes_only_without_hypervisor() -> None:
    spec = "  debug:\n    hypervisorDebug: false\n"
    w03 = _judge(spec, "W03")  # hypervisor not launched: flag never measured
    r = w03.result(ids.DEBUG_HYPERVISOR_DEBUG)
    assert r is not None and r.outcome is Outcome.PASS and "not launched" in r.message
    g = golden("W04")  # hypervisor launched; pretend the flag was not measured
    assert g.claims.windows is not None
    stripped = dataclasses.replace(
        g.claims, windows=dataclasses.replace(g.claims.windows, hypervisor_debug=None))
    v = evaluate(prepare(load_policy(rule_policy_text(spec))), subject(stripped, g.events))
    r = v.result(ids.DEBUG_HYPERVISOR_DEBUG)
    assert r is not None and r.outcome is Outcome.FAIL and "never measured" in r.message


def test_anomalies_fail_unless_accepted_and_fatal_always_fails() -> None:
    v = _judge("  evidence: {}\n", "A30")  # A30: UEFI debug mode action in PCR 7
    r = v.result(ids.EVIDENCE_ANOMALIES)
    assert r is not None and r.outcome is Outcome.FAIL and "tpm.uefi.debug_mode" in r.message
    accepted = _judge("  evidence:\n    allowedAnomalies: [tpm.uefi.debug_mode]\n", "A30")
    assert accepted.passed
    fatal = _judge("  evidence:\n    allowedAnomalies: [tpm.separator.duplicate]\n", "C03")
    r = fatal.result(ids.EVIDENCE_ANOMALIES)
    assert r is not None and r.outcome is Outcome.FAIL and "fatal" in r.message
    assert r.event is not None and r.event.seq == 16


def test_unsupplied_ima_list_fails_closed() -> None:
    spec = "  codeIntegrity:\n    ima:\n      executables:\n        denied: []\n"
    r = _judge(spec, "A36").result(ids.CI_IMA_EXECUTABLES)
    assert r is not None and r.outcome is Outcome.FAIL and "No IMA" in r.message


def test_empty_derived_allow_list_allows_nothing() -> None:
    from services.verifier.policy.derive import derive_policy

    linux = derive_policy([golden("A36")]).policy  # no UEFI drivers measured on this VM
    assert linux.spec.code_integrity is not None
    assert linux.spec.code_integrity.drivers is not None
    assert linux.spec.code_integrity.drivers.allowed_digests == ()
    g = golden("W03")  # an option ROM driver in PCR 2 and 184 Windows modules
    r = evaluate(prepare(linux), g.subject()).result(ids.CI_DRIVERS)
    assert r is not None and r.outcome is Outcome.FAIL and "not approved" in r.message
    assert r.event is not None and r.event.pcr == 2
