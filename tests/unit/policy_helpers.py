"""Shared helpers for the policy-engine tests (real corpus logs, no mocks)."""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path
from typing import Any

import pytest

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
    """Real captured TCG boot logs (not IMA lists, not synthetic, not malformed on purpose)."""
    ids = [i for i, e in manifest().items()
           if e["real_machine_capture"] and not e["malformed_on_purpose"]
           and not e["category"].startswith("ima")]
    return ids or ["corpus-missing"]


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
