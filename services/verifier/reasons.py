"""Every reason id the verifier emits for a failure that is not a policy rule, in one place.

Reason ids are a wire contract (verdicts, incidents and SOC dashboards key on them): dotted,
stable, spelled once here, never renamed. Policy rule ids live in
``services.verifier.policy.ids`` (``policy.*``); the two families never overlap, and both go in
``Verdict.failed_rules[].rule_id``.

Each id maps to the AR4SI trustworthiness claim it contradicts (see :mod:`.ear`), so a reason
also says *what kind* of trust the evidence lost.
"""

from __future__ import annotations

from typing import Final

QUOTE_BAD_SIGNATURE: Final = "verifier.quote.bad_signature"
QUOTE_NONCE_MISMATCH: Final = "verifier.quote.nonce_mismatch"
QUOTE_PCR_DIGEST_MISMATCH: Final = "verifier.quote.pcr_digest_mismatch"
QUOTE_AK_ATTRIBUTES: Final = "verifier.quote.ak_attributes"
QUOTE_AK_NAME_MISMATCH: Final = "verifier.quote.ak_name_mismatch"
QUOTE_MALFORMED: Final = "verifier.quote.malformed"
QUOTE_UNSUPPORTED: Final = "verifier.quote.unsupported"

EVIDENCE_MALFORMED: Final = "verifier.evidence.malformed"
OVER_BUDGET: Final = "verifier.evidence.over_budget"

COUNTERS_WENT_BACKWARDS: Final = "verifier.counters.went_backwards"

BANKS_DOWNGRADE: Final = "verifier.banks.downgrade"

LOG_MALFORMED: Final = "verifier.log.malformed"
LOG_UNSUPPORTED: Final = "verifier.log.unsupported"

REPLAY_PCR_MISMATCH: Final = "verifier.replay.pcr_mismatch"
REPLAY_EXTERNAL_PCR: Final = "verifier.replay.external_pcr_in_log"

IMA_MALFORMED: Final = "verifier.ima.malformed"
IMA_MISSING: Final = "verifier.ima.missing"
IMA_PCR_MISMATCH: Final = "verifier.ima.pcr_mismatch"
IMA_BOOT_AGGREGATE: Final = "verifier.ima.boot_aggregate_mismatch"

POLICY_NONE_IN_FORCE: Final = "verifier.policy.none_in_force"
POLICY_UNUSABLE: Final = "verifier.policy.unusable"

INTERNAL_ERROR: Final = "verifier.internal_error"

REASONS: Final[dict[str, str]] = {
    QUOTE_BAD_SIGNATURE: "the quote's signature does not verify with the enrolled AK",
    QUOTE_NONCE_MISMATCH: "the quote's extraData is not the nonce that was issued",
    QUOTE_PCR_DIGEST_MISMATCH: "the quote's pcrDigest is not the digest of the reported PCRs",
    QUOTE_AK_ATTRIBUTES: "the enrolled AK is not a restricted signing key",
    QUOTE_AK_NAME_MISMATCH: "the AK public area does not have the enrolled AK name",
    QUOTE_MALFORMED: "the quote, its signature or the AK public area does not parse",
    QUOTE_UNSUPPORTED: "the quote uses an algorithm hostgate does not accept",
    EVIDENCE_MALFORMED: "the collected record is inconsistent (unknown bank, duplicate PCR)",
    OVER_BUDGET: "the evidence holds more than one appraisal may read (events, entries, bytes)",
    COUNTERS_WENT_BACKWARDS: "TPM reset/restart counters or clock went backwards since the "
                             "host's previous quote",
    BANKS_DOWNGRADE: "only the SHA-1 bank was quoted although a stronger bank is active",
    LOG_MALFORMED: "the TCG boot event log does not parse",
    LOG_UNSUPPORTED: "the boot log uses a bank or format hostgate cannot replay",
    REPLAY_PCR_MISMATCH: "replaying the boot log does not reproduce the quoted PCRs, or the "
                         "log lacks a quoted bank",
    REPLAY_EXTERNAL_PCR: "the boot log extends a PCR the policy says another log accounts for",
    IMA_MALFORMED: "the IMA measurement list does not parse or its template hashes are wrong",
    IMA_MISSING: "the policy's IMA PCR was quoted but no IMA measurement list accounts for it",
    IMA_PCR_MISMATCH: "replaying the IMA list does not reproduce the quoted IMA PCR",
    IMA_BOOT_AGGREGATE: "the IMA boot_aggregate does not match the quoted boot PCRs",
    POLICY_NONE_IN_FORCE: "no policy is in force, so nothing can pass (fail closed)",
    POLICY_UNUSABLE: "the policy in force could not be loaded or evaluated (fail closed)",
    INTERNAL_ERROR: "the verifier failed on this evidence (fail closed; a bug to report)",
}
"""Reason id -> what it means, one short phrase each."""

ALL_REASON_IDS: Final[tuple[str, ...]] = tuple(sorted(REASONS))
