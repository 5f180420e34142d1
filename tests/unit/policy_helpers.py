"""Shared helpers for the policy-engine tests (real corpus logs, no mocks)."""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path
from typing import Any

import pytest

from services.tpm.decrepit import tpm12_evidence
from services.tpm.eventlog import parse_event_log
from services.verifier.policy.derive import Golden, golden_from_log
from tests.conftest import corpus_path

CORPUS = corpus_path()


@cache
def manifest() -> dict[str, dict[str, Any]]:
    path = CORPUS / "manifest.json"
    if not path.is_file():
        return {}
    return {e["id"]: e for e in json.loads(path.read_text())["entries"]}


def real_log_ids() -> list[str]:
    """Real captured TPM 2.0 boot logs (not IMA lists, not synthetic, not malformed on purpose,
    not TPM 1.2 logs, which hostgate refuses: ``services.tpm.decrepit``)."""
    ids = [i for i, e in manifest().items()
           if e["real_machine_capture"] and not e["malformed_on_purpose"]
           and not e["category"].startswith("ima") and not _tpm12(e["file"])]
    return ids or ["corpus-missing"]


def _tpm12(file: str) -> bool:
    return tpm12_evidence(parse_event_log((CORPUS / file).read_bytes())) is not None


@cache
def golden(entry_id: str) -> Golden:
    if entry_id == "corpus-missing" or entry_id not in manifest():
        pytest.fail(f"event-log corpus not found at {CORPUS} (set HOSTGATE_CORPUS)")
    entry = manifest()[entry_id]
    path: Path = CORPUS / entry["file"]
    return golden_from_log(path.read_bytes(), f"{entry_id}:{path.name}")


POLICY_HEAD = """\
apiVersion: hostgate/v1
kind: AttestationPolicy
metadata:
  id: test-policy
  version: 1
spec:
"""


def policy_text(spec_yaml: str) -> str:
    """A full document around ``spec_yaml`` (already indented by two spaces)."""
    return POLICY_HEAD + spec_yaml


def rule_policy_text(spec_yaml: str) -> str:
    """A document that tests the rules in ``spec_yaml`` in isolation. It declares itself
    permissive (appended last, so line numbers of ``spec_yaml`` do not move): such a policy
    may ask nothing else, which the loader refuses unless it is said."""
    return POLICY_HEAD + spec_yaml + "  permissive: true\n"


def platform_group(g: Golden, name: str = "proven") -> str:
    """A ``referenceGroups`` entry (YAML, four-space indent) that ``g``'s own boot matches and
    that proves its platform (``derive.platform_of``) by its first boot application, as
    ``policy from-log`` derives one."""
    from services.verifier.policy.derive import platform_of
    from services.verifier.policy.rules import BOOT_APPLICATION_PCR, code_in

    bank = next(b for b in ("sha256", "sha384", "sha1") if b in g.claims.pcrs)
    first = code_in(g.claims, BOOT_APPLICATION_PCR)[0]
    return (f"    - name: {name}\n      platform: {platform_of(g.claims)}\n"
            f"      pcrs: {{{bank}: {{0: '{g.claims.pcrs[bank][0].hex()}'}}}}\n"
            f"      firstBootApplication: [{{{bank}: '{first.digests[bank].hex()}'}}]\n")


def banks_of(g: Golden) -> str:
    """A ``banks`` section requiring the strongest bank ``g`` carries (a SHA-1-only log needs a
    policy that says SHA-1 is enough)."""
    bank = next(b for b in ("sha256", "sha384", "sha512", "sha1") if b in g.claims.banks)
    return f"  banks:\n    require: [{bank}]\n"
