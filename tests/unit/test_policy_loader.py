"""Loader: malformed policies are refused with the right line; the digest ignores layout."""

from __future__ import annotations

import pytest
import yaml

from services.verifier.policy.errors import PolicyError
from services.verifier.policy.loader import load_policy
from services.verifier.policy.yamlout import dump
from tests.unit.policy_helpers import policy_text

DB = "a7b8c851deb2acba7c7d0e6ec091c93440f942c65d776fdcb58016f8fd1674b0"
GOOD = policy_text(f"""\
  secureBoot:
    enabled: true
    db:
      allowed:
        - sha256: {DB}
          name: UEFI DB Key v10
  debug:
    testSigning: false
""")


def _error(text: str) -> PolicyError:
    with pytest.raises(PolicyError) as info:
        load_policy(text)
    return info.value


def test_good_policy_loads() -> None:
    p = load_policy(GOOD)
    assert p.metadata.id == "test-policy" and p.metadata.version == "1"
    assert p.spec.secure_boot is not None and p.spec.secure_boot.enabled is True
    assert p.spec.secure_boot.db is not None and p.spec.secure_boot.db[0].hex == DB
    assert p.digest.startswith("sha256:") and len(p.digest) == 7 + 64


def test_typo_key_names_line_and_suggests() -> None:
    err = _error(GOOD.replace("    enabled: true", "    enabeld: true"))
    assert err.line == 8 and err.column == 5
    assert err.field == "spec.secureBoot.enabeld"
    assert "did you mean 'enabled'" in str(err)


def test_wrong_type_names_line() -> None:
    err = _error(GOOD.replace("testSigning: false", "testSigning: \"no\""))
    assert err.line == 14
    assert err.field == "spec.debug.testSigning"
    assert "expected true or false" in err.message


def test_bad_digest_names_line() -> None:
    err = _error(GOOD.replace(DB, DB[:-2] + "zz"))
    assert err.line == 11 and err.field == "spec.secureBoot.db.allowed[0].sha256"
    assert "not hex" in err.message
    short = _error(GOOD.replace(DB, DB[:-2]))
    assert short.line == 11 and "62 hex digits, expected 64" in short.message


def test_key_database_entries_must_be_sha256() -> None:
    err = _error(GOOD.replace(f"sha256: {DB}", "sha1: " + "ab" * 20))
    assert err.line == 11 and "unknown key 'sha1'" in err.message


def test_all_digit_hex_is_read_as_text_not_int() -> None:
    digits = "1" * 64
    p = load_policy(GOOD.replace(DB, digits))
    assert p.spec.secure_boot is not None and p.spec.secure_boot.db is not None
    assert p.spec.secure_boot.db[0].hex == digits


@pytest.mark.parametrize(
    ("text", "line", "needle"),
    [
        (GOOD.replace("kind: AttestationPolicy", "kind: Policy"), 2, "kind must be"),
        (GOOD.replace("apiVersion: hostgate/v1", "apiVersion: hostgate/v2"), 1, "apiVersion"),
        (GOOD + "  debug:\n    safeMode: false\n", 15, "duplicate key 'debug'"),
        (GOOD.replace("  id: test-policy\n", ""), 4, "missing required key 'id'"),
        (policy_text("  banks:\n    requirePcrs: [0, 24]\n"), 8, "outside 0..23"),
        (GOOD.replace("version: 1", "version: 1.2b"), 5, "does not match"),
        (GOOD.replace("version: 1", "version: -3"), 5, "outside 0.."),
        (policy_text("  x: &a [1]\n  y: *a\n"), 7, "unknown key 'x'"),
        (policy_text("  banks: &a {requirePcrs: [1]}\n  debug: *a\n"), 7, "aliases"),
        ("a: [1, 2\n", 2, "not valid YAML"),
    ],
)
def test_malformed_documents(text: str, line: int, needle: str) -> None:
    err = _error(text)
    assert needle in str(err)
    assert err.line == line


def test_empty_and_oversized_and_deep() -> None:
    assert "empty" in _error("").message
    assert "at most" in _error(b"#" * (9 * 1024 * 1024)).message  # type: ignore[arg-type]
    assert "nesting" in _error("a: " + "[" * 100 + "]" * 100).message
    assert "UTF-8" in _error(b"\xff\xfe").message  # type: ignore[arg-type]


def test_digest_ignores_comments_layout_and_set_order() -> None:
    base = load_policy(GOOD)
    reformatted = GOOD.replace("  debug:\n    testSigning: false\n",
                               "  # a comment\n  debug: {testSigning: false}   # trailing\n")
    assert load_policy(reformatted).digest == base.digest
    two = policy_text(f"  secureBoot:\n    db:\n      allowed:\n        - sha256: {DB}\n"
                      f"        - sha256: {'0' * 64}\n")
    swapped = policy_text(f"  secureBoot:\n    db:\n      allowed:\n        - sha256: {'0' * 64}\n"
                          f"        - sha256: {DB.upper()}\n")
    assert load_policy(two).digest == load_policy(swapped).digest
    changed = load_policy(GOOD.replace("testSigning: false", "testSigning: true"))
    assert changed.digest != base.digest


def test_normalised_form_round_trips() -> None:
    p = load_policy(GOOD)
    again = load_policy(dump(p.to_json()))
    assert again == p and again.digest == p.digest


def test_boot_stage_order_is_kept_and_optional_must_trail() -> None:
    a, b = "aa" * 32, "bb" * 32
    chain = ("  bootChain:\n    applications:\n"
             f"      - {{name: shim, digests: [{{sha256: {a}}}]}}\n"
             f"      - {{name: grub, digests: [{{sha256: {b}}}], optional: true}}\n")
    p = load_policy(policy_text(chain))
    assert p.spec.boot_chain is not None and p.spec.boot_chain.stages is not None
    assert [s.name for s in p.spec.boot_chain.stages] == ["shim", "grub"]
    bad = ("  bootChain:\n    applications:\n"
           f"      - {{name: shim, digests: [{{sha256: {a}}}], optional: true}}\n"
           f"      - {{name: grub, digests: [{{sha256: {b}}}]}}\n")
    err = _error(policy_text(bad))
    assert err.line == 10 and err.field == "spec.bootChain.applications[1]" and "cannot follow an optional" in err.message


_HEX = "ab" * 32
NEW_FIELDS = f"""\
  banks:
    require: [sha256, sha384]
    requirePcrs: [0, 9]
    externalPcrs: [{{pcr: 10, log: ima}}]
  tpm:
    clockSafe: true
    firmwareVersion: {{minimum: 0x20170619, allowed: [0x20170619, 0x20191023]}}
  referenceGroups:
    - name: linux-build
      platform: linux
      pcrs: {{sha256: {{0: '{_HEX}'}}}}
      firstBootApplication: [{{sha256: '{_HEX}', name: shim}}]
  evidence:
    allowedEventTypes: [{{pcr: 0, type: 0x40e}}, {{pcr: 5, type: EV_POST_CODE}}]
"""


def test_coverage_platform_quote_and_event_type_fields_load_and_round_trip() -> None:
    policy = load_policy(policy_text(NEW_FIELDS))
    spec = policy.spec
    assert spec.bank_spec.require_banks == ("sha256", "sha384")
    assert [(e.pcr, e.log) for e in spec.bank_spec.external_pcrs] == [(10, "ima")]
    assert spec.tpm is not None and spec.tpm.clock_safe is True
    assert spec.tpm.firmware_minimum == 0x20170619
    group = spec.reference_groups[0]
    assert group.platform == "linux" and group.first_boot_application[0].hex == _HEX
    assert [(t.pcr, t.event_type) for t in spec.evidence.allowed_event_types] == [(0, 0x40E),
                                                                                 (5, 1)]
    again = load_policy(yaml.safe_dump(policy.to_json()))
    assert again.digest == policy.digest


@pytest.mark.parametrize(("spec", "message"), [
    ("  banks: {require: [md5]}\n", "unknown bank"),
    ("  banks: {require: []}\n", "at least one bank"),
    ("  banks: {externalPcrs: [{pcr: 4, log: ima}]}\n", "outside 8..23"),
    ("  banks: {externalPcrs: [{pcr: 10, log: systemd}]}\n", "unknown log"),
    ("  banks: {externalPcrs: [{pcr: 10, log: ima}, {pcr: 10, log: ima}]}\n", "duplicate"),
    (f"  referenceGroups: [{{name: g, platform: linux, pcrs: {{sha256: {{0: '{_HEX}'}}}}}}]\n",
     "pinned by the boot loader"),
    (f"  referenceGroups: [{{name: g, platform: bsd, pcrs: {{sha256: {{4: '{_HEX}'}}}}}}]\n",
     "unknown platform"),
    ("  evidence: {allowedEventTypes: [{pcr: 4, type: EV_POST_CODE}]}\n", "never accepted"),
    ("  evidence: {allowedEventTypes: [{pcr: 0, type: EV_NOPE}]}\n", "unknown event type"),
    ("  tpm: {firmwareVersion: {minimum: -1}}\n", "outside"),
])
def test_new_fields_refuse_what_would_weaken_them(spec: str, message: str) -> None:
    with pytest.raises(PolicyError, match=message):
        load_policy(policy_text(spec + "  permissive: true\n"))
