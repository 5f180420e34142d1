"""Protocol tamper profiles of the fleet simulator: applied by the host itself when it is checked
locally, by the agent client's evidence hooks when it attests over Kafka (real swtpm hosts).

Over Kafka the host must quote the nonce it was actually issued: only then does the
``replayed_nonce`` hook answer with a nonce the collector issued and saw used (``REPLAYED_NONCE``,
not ``UNKNOWN_NONCE``), and only then is a held ``stale_quote`` refused for its expiry.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator

import pytest

from services.agent.fleet import Fleet, HostSpec
from services.agent.hooks import (
    EvidenceDraft,
    hold_past_expiry,
    hook_for,
    replay_previous_nonce,
)
from services.agent.hosts import SimulatedHostSide
from services.agent.tamper import PROFILES
from services.tpm.errors import InvalidQuoteSignature
from services.tpm.keys import decode_public
from services.tpm.quote import decode_attest, verify_attest_signature

pytestmark = pytest.mark.swtpm


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    tag = uuid.uuid4().hex[:6]
    specs = [HostSpec(f"ph-{tag}-{t}", "ubuntu-24.04-shim", t, i)
             for i, t in enumerate(("replayed_nonce", "stale_quote", "wrong_ak"))]
    with Fleet(tmp_path_factory.mktemp("hooks") / "fleet", specs, workers=2) as f:
        yield f


def _extra_data(attest: bytes) -> bytes:
    return decode_attest(attest).extra_data


def test_only_the_protocol_profiles_are_left_to_hooks() -> None:
    on_protocol = {n for n, p in PROFILES.items() if p.evidence.on_protocol}
    assert on_protocol == {"replayed_nonce", "stale_quote"}
    assert {n for n in PROFILES if hook_for(n) is not None} == on_protocol
    assert hook_for("replayed_nonce") is replay_previous_nonce
    assert hook_for("stale_quote") is hold_past_expiry


@pytest.mark.parametrize("tamper", ["replayed_nonce", "stale_quote"])
def test_over_kafka_the_host_quotes_the_issued_nonce(fleet: Fleet, tamper: str) -> None:
    host = next(h for h in fleet if h.tamper == tamper)
    nonce = os.urandom(32)
    # locally the profile acts inside the host: the quote is not over the nonce given
    assert _extra_data(host.quote(nonce).quote.attest) != nonce
    side = SimulatedHostSide(host)
    assert side.hook is hook_for(tamper)
    assert _extra_data(side.quote(nonce, (("sha256", tuple(range(8))),)).attest) == nonce


def test_an_output_profile_still_acts_inside_the_host(fleet: Fleet) -> None:
    host = next(h for h in fleet if h.tamper == "wrong_ak")
    side = SimulatedHostSide(host)
    assert side.hook is None
    nonce = os.urandom(32)
    q = side.quote(nonce, (("sha256", tuple(range(8))),))
    assert _extra_data(q.attest) == nonce  # the right nonce, signed by a never-enrolled key
    with pytest.raises(InvalidQuoteSignature):
        verify_attest_signature(decode_public(host.ak_public), q.attest, q.signature)


def test_the_replay_hook_answers_with_the_previous_rounds_nonce(fleet: Fleet) -> None:
    host = next(h for h in fleet if h.tamper == "replayed_nonce")
    side = SimulatedHostSide(host)
    hook = side.hook
    assert hook is not None
    sel = (("sha256", tuple(range(8))), ("sha1", (0, 7)))
    first_nonce, second_nonce = os.urandom(32), os.urandom(32)
    first = EvidenceDraft("ch-1", first_nonce, side.quote(first_nonce, sel), b"", None, sel,
                          expires_at_ms=1)
    assert hook(first, (), side) == first  # nothing to replay yet: an honest first round
    second = EvidenceDraft("ch-2", second_nonce, side.quote(second_nonce, sel), b"", None,
                           sel, expires_at_ms=2)
    replayed = hook(second, (first,), side)
    assert (replayed.challenge_id, replayed.nonce) == ("ch-1", first_nonce)
    assert _extra_data(replayed.quote.attest) == first_nonce
    # the replayed round quotes what its own challenge asked, bank by bank
    assert decode_attest(replayed.quote.attest).selection == sel
    assert replayed.quote.attest != first.quote.attest  # quoted anew, not re-sent
