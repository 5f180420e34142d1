"""Protocol attacks of the fleet simulator: what a host with a real, certified TPM writes to the
pipeline's topics besides (or instead of) its honest exchange.

Each attack is one named action over an ``AgentClient`` and returns an :class:`AttackResult`:
the coordinates of every record it wrote that the collector must refuse (``sent``), and what it
heard back. The agents share one Kafka principal, so nothing stops a host from writing these;
what must hold is that each is refused at intake (an ``IntakeRejected`` naming the record's
coordinates in ``source``) and that no other host's state changes.

* :func:`foreign_partition` (``foreign_partition``): after an honest enrolment, a signed
  challenge request and then evidence over an issued nonce, each written to a partition other
  than the one the host id hashes to (where a collector task whose tables know nothing of the
  host would judge it). Expected: ``WRONG_PARTITION`` for both.
* :func:`borrowed_host_id` (``borrowed_host_id``): the client speaks as an already enrolled
  victim (``SimulatedHostSide(..., speaks_as=victim)``) over the attacker's own TPM: an
  enrolment with the attacker's EK certificate, EK and AK under the victim's id, then a
  challenge request signed by the attacker's AK under that id. Expected: ``UNAUTHENTICATED``
  for both (an enrolled id's enrolment is an AK rotation, which only the id's enrolled AK can
  vouch for; were it signed, the id's EK would still differ: ``EK_CHANGED``).
* :func:`challenge_flood` (``challenge_flood``): ``count`` unsigned challenge requests naming
  the victim, more than its rate limit and open-challenge bound. Expected: ``UNAUTHENTICATED``
  for each, and the victim still gets its nonce afterwards.

An attack never waits for an answer it should not get (a nonce, an activation challenge): the
refusals are on ``attest.rejections.v1``, which the demo watches. Where the protocol itself
answers (an enrolment is refused with an ``EnrollmentResult``), ``heard`` records it, and
``got_through`` lists anything that would mean the attack worked.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final

from services.agent.tamper import EvidenceTamper, get_profile
from services.errors import HostgateError
from services.wire.subjects import CHALLENGE_REQUESTED

if TYPE_CHECKING:
    from services.agent.client import AgentClient, SentRecord

#: Records in one flood: more than twice the collector's default challenge rate (10 per 60 s)
#: and far more than its open-challenge bound (4), so that counting them would starve the victim.
FLOOD_COUNT: Final = 24


class AttackError(HostgateError):
    """An attack could not be carried out as planned (not: the attack was refused)."""


@dataclass(frozen=True)
class AttackResult:
    """What one attack wrote and heard."""

    profile: str
    names: str
    """The host id its records name (the attacker's own for ``foreign_partition``)."""
    sent: tuple[SentRecord, ...]
    """Every record written that intake must refuse, in order."""
    heard: tuple[str, ...] = ()
    """Answers the attacker received (e.g. an enrolment REFUSED with its reason)."""
    got_through: tuple[str, ...] = ()
    """Answers that mean the collector accepted something of the attack (must stay empty)."""


def _foreign(own: int, count: int) -> int:
    if count < 2:
        raise AttackError(f"the topic has {count} partition(s): there is no foreign one")
    return (own + 1) % count


async def foreign_partition(client: AgentClient) -> AttackResult:
    """See the module docstring. The client's host must already be enrolled."""
    topics = client.config.topics
    own, count = await client.partitions(topics.requests)
    request = await client.challenge_request(f"ask-{uuid.uuid4().hex}")
    refused = [await client.send_record(topics.requests, CHALLENGE_REQUESTED, request,
                                        partition=_foreign(own, count))]
    # the honest request on the key's partition gets a nonce; only its evidence goes astray
    own_ev, count_ev = await client.partitions(topics.evidence)
    result = await client.attest(evidence_partition=_foreign(own_ev, count_ev))
    refused.append(client.sent[-1])  # attest writes its evidence last
    return AttackResult("foreign_partition", client.host.host_id, tuple(refused),
                        heard=(f"NonceIssued for challenge {result.challenge_id} (its honest "
                               "request, on the key's partition)",))


async def borrowed_host_id(client: AgentClient) -> AttackResult:
    """See the module docstring. ``client`` speaks as the (enrolled) victim."""
    from services.agent.client import AgentTimeout, EnrollmentRefused

    heard: list[str] = []
    got_through: list[str] = []
    first = len(client.sent)
    try:
        done = await client.enroll()
        got_through.append(f"ENROLLED under {client.host.host_id!r} (proof "
                           f"{done.proof_request_id})")
    except EnrollmentRefused as exc:
        heard.append(f"enrolment REFUSED: {exc.reason}")
    except AgentTimeout as exc:
        heard.append(f"no enrolment answer: {exc}")
    request = await client.challenge_request(f"ask-{uuid.uuid4().hex}")
    await client.send_record(client.config.topics.requests, CHALLENGE_REQUESTED, request)
    return AttackResult("borrowed_host_id", client.host.host_id, tuple(client.sent[first:]),
                        heard=tuple(heard), got_through=tuple(got_through))


async def challenge_flood(client: AgentClient, count: int = FLOOD_COUNT) -> AttackResult:
    """See the module docstring. ``client`` speaks as the victim."""
    first = len(client.sent)
    for _ in range(count):
        request = await client.challenge_request(f"flood-{uuid.uuid4().hex}", signed=False)
        await client.send_record(client.config.topics.requests, CHALLENGE_REQUESTED, request)
    return AttackResult("challenge_flood", client.host.host_id, tuple(client.sent[first:]))


async def run_attack(profile: str, client: AgentClient) -> AttackResult:
    """Run the attack of tamper profile ``profile`` over ``client`` (see each function for what
    the client must be: enrolled, or speaking as the victim)."""
    kind = get_profile(profile).evidence
    if kind is EvidenceTamper.FOREIGN_PARTITION:
        return await foreign_partition(client)
    if kind is EvidenceTamper.BORROWED_ID:
        return await borrowed_host_id(client)
    if kind is EvidenceTamper.CHALLENGE_FLOOD:
        return await challenge_flood(client)
    raise AttackError(f"tamper profile {profile} is not a protocol attack")
