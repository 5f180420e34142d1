"""IMA allow/deny lists on a real IMA measurement list (corpus I08) attached to real claims."""

from __future__ import annotations

import dataclasses

from services.tpm import ima
from services.tpm.claims import ImaClaim
from services.verifier.policy import ids
from services.verifier.policy.evaluate import evaluate, prepare, subject
from services.verifier.policy.loader import load_policy
from services.verifier.policy.results import Outcome
from tests.unit.policy_helpers import CORPUS, golden, manifest, rule_policy_text


def _claims_with_ima() -> tuple[object, list[ImaClaim]]:
    parsed = ima.parse((CORPUS / manifest()["I08"]["file"]).read_bytes())
    entries = [ImaClaim(e.pcr, e.template_name, e.file_hash_alg, e.file_hash, e.path)
               for e in parsed.entries]
    g = golden("A36")
    return subject(dataclasses.replace(g.claims, ima=tuple(entries)), g.events), entries


def _refs(entries: list[ImaClaim]) -> str:
    return "".join(f"          - {{{e.file_hash_alg}: {e.file_hash.hex()}}}\n"
                   for e in entries if e.file_hash and e.file_hash_alg)


def test_kernel_module_allow_and_deny_lists() -> None:
    subj, entries = _claims_with_ima()
    modules = [e for e in entries if e.path and e.path.endswith(".ko.xz")]
    assert len(modules) > 50
    allowed = "  codeIntegrity:\n    ima:\n      kernelModules:\n        allowed:\n" + _refs(modules)
    v = evaluate(prepare(load_policy(rule_policy_text(allowed))), subj)  # type: ignore[arg-type]
    r = v.result(ids.CI_IMA_KERNEL_MODULES)
    assert r is not None and r.outcome is Outcome.PASS and f"All {len(modules)}" in r.message
    victim = modules[7]
    denied = allowed + "        denied:\n" + _refs([victim])
    v = evaluate(prepare(load_policy(rule_policy_text(denied))), subj)  # type: ignore[arg-type]
    r = v.result(ids.CI_IMA_KERNEL_MODULES)
    assert r is not None and r.outcome is Outcome.FAIL and str(victim.path) in r.message
    short = "  codeIntegrity:\n    ima:\n      kernelModules:\n        allowed:\n" + _refs(
        modules[:-1])
    v = evaluate(prepare(load_policy(rule_policy_text(short))), subj)  # type: ignore[arg-type]
    r = v.result(ids.CI_IMA_KERNEL_MODULES)
    assert r is not None and r.outcome is Outcome.FAIL and "unapproved kernel module" in r.message


def test_executable_deny_list() -> None:
    subj, entries = _claims_with_ima()
    shell = next(e for e in entries if e.path == "/usr/bin/kmod")
    spec = "  codeIntegrity:\n    ima:\n      executables:\n        denied:\n" + _refs([shell])
    v = evaluate(prepare(load_policy(rule_policy_text(spec))), subj)  # type: ignore[arg-type]
    r = v.result(ids.CI_IMA_EXECUTABLES)
    assert r is not None and r.outcome is Outcome.FAIL and "/usr/bin/kmod" in r.message
