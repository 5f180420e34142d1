"""Hypothesis: random policy documents never crash the loader with anything but PolicyError."""

from __future__ import annotations

from typing import Any

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from services.verifier.policy.errors import PolicyError
from services.verifier.policy.lint import admits_any_host
from services.verifier.policy.loader import load_policy
from services.verifier.policy.model import Policy

KEYS = ["apiVersion", "kind", "metadata", "spec", "id", "version", "banks", "secureBoot",
        "debug", "codeIntegrity", "bootChain", "referenceGroups", "evidence", "customRules",
        "enabled", "pk", "kek", "db", "dbx", "allowed", "required", "denied", "sha256", "sha1",
        "name", "pcrs", "requirePcrs", "refuseSha1Only", "applications", "digests", "optional",
        "kernelCmdline", "forbidden", "expression", "testSigning", "ima", "kernelModules",
        "allowedAnomalies", "pcr7Variables", "drivers", "allowedSigners", "siPolicies",
        "permissive", "require", "externalPcrs", "pcr", "log", "tpm", "clockSafe",
        "firmwareVersion", "minimum", "platform", "firstBootApplication",
        "allowedEventTypes", "type"]

scalars = st.one_of(
    st.none(), st.booleans(), st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True), st.text(max_size=80),
    st.sampled_from(["hostgate/v1", "AttestationPolicy", "a" * 64, "0" * 40, "true",
                     "claims.secure_boot == true", "1 / 0 == 1", "(((", "sha256", "ima",
                     "linux", "windows", "EV_POST_CODE"]),
)
keys = st.one_of(st.sampled_from(KEYS), st.text(max_size=12), st.integers(0, 30))
documents = st.recursive(
    scalars,
    lambda children: st.one_of(st.lists(children, max_size=5),
                               st.dictionaries(keys, children, max_size=6)),
    max_leaves=40,
)


def _load(text: str) -> Policy | None:
    try:
        return load_policy(text)
    except PolicyError:
        return None


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(documents)
def test_random_documents_only_raise_policy_error(doc: Any) -> None:
    _load(yaml.safe_dump(doc))


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.dictionaries(st.sampled_from(KEYS[4:]), documents, max_size=6))
def test_random_specs_under_a_valid_header(spec: Any) -> None:
    doc = {"apiVersion": "hostgate/v1", "kind": "AttestationPolicy",
           "metadata": {"id": "fuzz", "version": 1}, "spec": spec}
    policy = _load(yaml.safe_dump(doc))
    if policy is not None:  # whatever loads must have a stable canonical form and digest
        assert policy.canonical_json() == Policy(policy.metadata, policy.spec).canonical_json()
        assert policy.digest.startswith("sha256:")
        # ... and its normalised form loads back to the same policy
        assert load_policy(yaml.safe_dump(policy.to_json())).digest == policy.digest
        assert policy.spec.permissive or not admits_any_host(policy.spec)


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=300))
def test_random_text_only_raises_policy_error(text: str) -> None:
    _load(text)
