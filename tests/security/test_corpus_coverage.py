"""Coverage on real logs: a policy derived from a whole real log asks for the whole log.

For every real Windows log in the corpus (a Windows boot configuration measured in PCRs 12-14),
the policy ``hostgate policy from-log`` derives from the whole log must not pass that log when
only PCRs 0-7 are quoted: the Windows rules read PCRs 12-14, and a host that leaves them out of
its quote leaves out exactly what those rules judge. The same policy passes the same log when
every PCR is quoted (``test_policy_corpus`` checks that for every real log).
"""

from __future__ import annotations

import pytest

from services.tpm.claims import extract_claims
from services.tpm.replay import verify_replay
from services.verifier.policy.derive import derive_policy, fully_quoted
from services.verifier.policy.evaluate import evaluate, prepare, subject
from tests.unit.policy_helpers import golden, real_log_ids


def _windows_ids() -> list[str]:
    ids = [i for i in real_log_ids() if i != "corpus-missing"
           and golden(i).claims.windows is not None]
    return ids or ["corpus-missing"]


WINDOWS_IDS = _windows_ids()


def test_the_corpus_holds_windows_logs() -> None:
    assert {"W03", "W04"} <= set(WINDOWS_IDS)


@pytest.mark.parametrize("entry_id", WINDOWS_IDS)
def test_policy_from_a_whole_windows_log_fails_it_on_a_firmware_only_quote(entry_id: str) -> None:
    g = golden(entry_id)
    prepared = prepare(derive_policy([g]).policy)
    assert evaluate(prepared, g.subject()).passed  # fully quoted: it passes itself
    firmware_only = {b: {p: v for p, v in values.items() if p < 8}
                     for b, values in fully_quoted(g.log).items()}
    result = verify_replay(g.log, firmware_only)
    claims = extract_claims(result)
    assert claims.windows is None  # nothing read from PCRs that were not quoted
    verdict = evaluate(prepared, subject(
        claims, result.verified_events, active_banks=g.log.banks,
        quoted_pcrs={b: sorted(v) for b, v in firmware_only.items()},
        checked_pcrs=result.checked_pcrs))
    assert not verdict.passed
    failed = {r.rule_id for r in verdict.failed}
    assert "policy.banks.required_pcrs" in failed
    assert any(r.startswith(("policy.debug.", "policy.codeintegrity.")) for r in failed), failed
