"""The agent's Kafka side: enrol (credential activation) and attest over the pipeline's topics.

``AgentClient(host, config)`` speaks for one host. It publishes to ``attest.requests.v1`` and
``attest.evidence.v1`` with an idempotent producer (``acks=all``), keyed by the host id, and reads
``attest.challenges.v1`` (``read_committed``: only what the collector committed) from the one
partition the default partitioner maps its key to, keeping only records for its host id and
the request it is waiting for. Before each request it positions the reader at the partition's
end, so the answer cannot be missed.

* ``enroll()``: ``EnrollmentRequested`` (EK certificate and public, AK public) → waits for the
  ``ActivationChallenge`` → ``TPM2_ActivateCredential`` in its TPM → ``ActivationProof`` →
  waits for the collector's ``EnrollmentResult`` for that proof and challenge. ENROLLED
  returns; REFUSED (of the request or of the proof) raises ``EnrollmentRefused`` naming the
  reason; a result this version does not understand raises too (fail closed).
* ``attest()``: ``ChallengeRequested``, signed by the AK (a TPM2_Quote over the request's
  binding, ``services.collector.request_auth``: the collector ignores an unsigned request) →
  waits for ``NonceIssued`` → quotes exactly the challenge's selection, bank by bank, over the
  nonce (the policy in force decides coverage; the request only offers what the TPM has) →
  ``EvidenceSubmitted`` with the PCR values quoted, the boot log and the IMA list.

Retries: starting retries with exponential back-off while the broker is unreachable (up to
``connect_timeout_s``); sends rely on the idempotent producer's retries; every wait has a
timeout and raises ``AgentTimeout`` naming what did not arrive.

The host is a ``HostSide`` (``services.agent.hosts``): ``TpmHost`` (a real TPM through
``AgentTpm``) or ``SimulatedHostSide`` (the fleet simulator). Tamper profiles that work on the
*protocol* — which challenge a host answers and when — are the ``EvidenceHook`` a client is
built with (``services.agent.hooks``: ``replayed_nonce``, ``stale_quote``). Profiles that work
on the *TPM output* (``wrong_ak``, ``pcr_bank_downgrade``, ``quote_fewer_pcrs``,
``forged_log`` and the edited logs) live in the simulated host's ``quote`` and log
(``services.agent.fleet``); ``SimulatedHostSide.hook`` gives a fleet host's hook, and its
``quote`` is then honest for the protocol profiles. The protocol attacks
(``services.agent.attacks``) drive a client with :meth:`AgentClient.send_record` (any record, on
any partition), :meth:`AgentClient.challenge_request` (signed or not) and
``SimulatedHostSide(..., speaks_as=OTHER)`` (another host's id over this host's TPM). Every
record a client writes is listed in :attr:`AgentClient.sent` with its coordinates, which is how
the demo tells an attacker's refused records from its victim's.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from services.agent.backoff import Backoff, Uniform
from services.agent.hooks import EvidenceDraft, EvidenceHook
from services.agent.tpm import Quote, Selection
from services.collector.request_auth import request_binding, rotation_binding
from services.errors import HostgateError
from services.runtime.connection import client_kwargs
from services.runtime.record_size import PRODUCER_COMPRESSION, PRODUCER_MAX_REQUEST_BYTES
from services.runtime.topics import Topics
from services.tpm.credential import CredentialChallenge
from services.tpm.keys import decode_public
from services.wire.banks import BANK_OF_SYMBOL, SYMBOL_OF_BANK
from services.wire.records import EvidenceSubmitted, PcrValue
from services.wire.subjects import (
    ACTIVATION_CHALLENGE,
    ACTIVATION_PROOF,
    CHALLENGE_REQUESTED,
    ENROLLMENT_REQUESTED,
    ENROLLMENT_RESULT,
    EVIDENCE_SUBMITTED,
    NONCE_ISSUED,
)
from services.wire.time import epoch_ms, now_ms

if TYPE_CHECKING:
    from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

    from services.runtime.codec import Codec

AGENT_VERSION = "hostgate-agent/0.1"
MAX_HOLD_S = 600.0


class AgentClientError(HostgateError):
    """The agent could not complete an exchange with the collector."""


class AgentTimeout(AgentClientError):
    """An answer from the collector did not arrive in time (or the broker is unreachable)."""

    retriable = True


class ActivationFailed(AgentClientError):
    """The TPM refused ``ActivateCredential``: the challenge is not for this TPM's EK and AK."""

    def __init__(self, message: str, *, challenge_id: str) -> None:
        self.challenge_id = challenge_id
        super().__init__(message)


class EnrollmentRefused(AgentClientError):
    """The collector refused the enrolment (an ``EnrollmentResult`` REFUSED)."""

    def __init__(self, message: str, *, reason: str, request_id: str,
                 challenge_id: str | None) -> None:
        self.reason = reason
        self.request_id = request_id
        self.challenge_id = challenge_id
        super().__init__(message)


@dataclass(frozen=True)
class HostIdentity:
    """What the host presents at enrolment (marshalled TPM2B_PUBLICs, DER certificate)."""

    ek_public: bytes
    ek_cert: bytes | None
    ak_public: bytes


class HostSide(Protocol):
    """A host's TPM and logs as the client uses them; every method may block (it is called
    in a worker thread)."""

    @property
    def host_id(self) -> str: ...
    def identity(self) -> HostIdentity: ...
    def banks(self) -> tuple[str, ...]: ...
    def activate(self, challenge: CredentialChallenge) -> bytes: ...
    def quote(self, nonce: bytes, selection: Selection) -> Quote: ...
    def sign_request(self, binding: bytes) -> tuple[bytes, bytes]: ...
    def sign_rotation(self, binding: bytes) -> tuple[bytes, bytes] | None:
        """A request quote over ``binding`` by the AK this host is *currently* enrolled with
        (an AK rotation must be vouched for by it), or None for a first enrolment."""
        ...
    def boot_log(self) -> bytes: ...
    def ima_log(self) -> bytes | None: ...


@dataclass(frozen=True)
class ClientConfig:
    """How the client reaches the pipeline."""

    bootstrap: str
    topics: Topics = field(default_factory=Topics)
    timeout_s: float = 60.0
    """Longest wait for one answer from the collector."""
    connect_timeout_s: float = 60.0
    """Longest time to keep retrying while the broker is unreachable."""
    backoff: Backoff = field(default_factory=Backoff)
    """The waits between those retries (jittered, so a fleet does not reconnect in lockstep)."""
    jitter: Uniform | None = None
    """Where the waits' randomness comes from (default: a fresh ``random.Random`` per start);
    a seeded ``random.Random(n).uniform`` replays one schedule."""
    offered_pcrs: tuple[int, ...] = tuple(range(24))
    """PCRs offered in every active bank (informational: the collector asks for what the
    policy in force needs)."""
    agent_version: str = AGENT_VERSION


@dataclass(frozen=True)
class EnrollResult:
    """What ``enroll`` sent and answered, and the collector's confirmation."""

    request_id: str
    challenge_id: str
    proof_request_id: str
    result: str = "ENROLLED"
    """The collector's ``EnrollmentResult.result`` (always ENROLLED when returned)."""
    ak_name: bytes = b""
    """TPM Name of the AK the collector enrolled."""
    decided_at_ms: int = 0
    """Timestamp (ms) of the proof the collector decided on."""
    detail: str = ""
    """The collector's one-sentence detail."""


@dataclass(frozen=True)
class SentRecord:
    """Where one record this client wrote landed (what an ``IntakeRejected.source`` names)."""

    topic: str
    partition: int
    offset: int
    subject: str

    @property
    def coordinates(self) -> tuple[str, int, int]:
        """``(topic, partition, offset)``."""
        return (self.topic, self.partition, self.offset)


@dataclass(frozen=True)
class AttestResult:
    """What ``attest`` sent: ids, the nonce and where the evidence landed."""

    request_id: str
    evidence_id: str
    challenge_id: str
    nonce: bytes
    partition: int
    offset: int


class AgentClient:
    """One host's conversation with the collector (see the module docstring)."""

    def __init__(self, host: HostSide, config: ClientConfig, *, codec: Codec | None = None,
                 hook: EvidenceHook | None = None) -> None:
        from services.runtime.codec import Codec

        self.host = host
        self.config = config
        self.codec = codec or Codec.load()
        self.hook = hook
        self.history: list[EvidenceDraft] = []
        self.sent: list[SentRecord] = []
        """Every record this client wrote, in order."""
        self._producer: AIOKafkaProducer | None = None
        self._consumer: AIOKafkaConsumer | None = None
        self._tp: Any = None

    # -- life cycle -------------------------------------------------------------------------

    async def start(self) -> AgentClient:
        """Connect (retrying with back-off) and attach to the host's challenge partition."""
        from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
        from aiokafka.errors import KafkaError
        from aiokafka.partitioner import DefaultPartitioner

        deadline = time.monotonic() + self.config.connect_timeout_s
        waits = self.config.backoff.waits(self.config.jitter)
        while True:
            producer = AIOKafkaProducer(**client_kwargs(self.config.bootstrap),
                                        enable_idempotence=True, acks="all",
                                        client_id=f"agent.{self.host.host_id}",
                                        max_request_size=PRODUCER_MAX_REQUEST_BYTES,
                                        compression_type=PRODUCER_COMPRESSION)
            consumer = AIOKafkaConsumer(**client_kwargs(self.config.bootstrap), group_id=None,
                                        enable_auto_commit=False,
                                        isolation_level="read_committed",
                                        client_id=f"agent.{self.host.host_id}")
            try:
                await producer.start()
                await consumer.start()
                parts = sorted(await producer.partitions_for(self.config.topics.challenges))
                break
            except (KafkaError, OSError) as exc:
                await _stop_quietly(producer, consumer)
                delay = next(waits)
                if time.monotonic() + delay > deadline:
                    raise AgentTimeout(
                        f"Kafka at {self.config.bootstrap} unreachable for "
                        f"{self.config.connect_timeout_s:.0f}s: {type(exc).__name__}") from exc
                await asyncio.sleep(delay)
        partition = DefaultPartitioner()(self.host.host_id.encode(), parts, parts)
        self._tp = TopicPartition(self.config.topics.challenges, partition)
        consumer.assign([self._tp])
        self._producer, self._consumer = producer, consumer
        return self

    async def stop(self) -> None:
        """Close both Kafka clients."""
        producer, consumer, self._producer, self._consumer = (self._producer, self._consumer,
                                                              None, None)
        await _stop_quietly(producer, consumer)

    async def __aenter__(self) -> AgentClient:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    # -- exchanges ---------------------------------------------------------------------------

    async def enroll(self) -> EnrollResult:
        """Enrol this host's AK (see the module docstring); ``ActivationFailed`` if the TPM
        cannot activate the challenge."""
        ident = await asyncio.to_thread(self.host.identity)
        request_id = f"enr-{uuid.uuid4().hex}"
        binding = rotation_binding(self.host.host_id, request_id,
                                   decode_public(ident.ak_public).name)
        signed = await asyncio.to_thread(self.host.sign_rotation, binding)
        challenge = await self._request(
            self.config.topics.requests, ENROLLMENT_REQUESTED,
            {"request_id": request_id, "host_id": self.host.host_id,
             "agent_version": self.config.agent_version, "ek_cert": ident.ek_cert,
             "ek_public": ident.ek_public, "ak_public": ident.ak_public, "sent_at": now_ms(),
             "request_attest": signed[0] if signed else None,
             "request_signature": signed[1] if signed else None},
            {ACTIVATION_CHALLENGE, ENROLLMENT_RESULT}, request_id, "ActivationChallenge")
        if challenge.get("result") is not None:  # refused before any challenge
            _raise_unless_enrolled(challenge)
        cred = CredentialChallenge(bytes(challenge["credential_blob"]),
                                   bytes(challenge["encrypted_secret"]))
        try:
            secret = await asyncio.to_thread(self.host.activate, cred)
        except Exception as exc:  # TSS2_Exception: the TPM refused
            raise ActivationFailed(f"the TPM refused ActivateCredential for challenge "
                                   f"{challenge['challenge_id']}: {exc}",
                                   challenge_id=challenge["challenge_id"]) from exc
        done = await self.prove(challenge["challenge_id"], secret)
        return dataclasses.replace(done, request_id=request_id)

    async def prove(self, challenge_id: str, secret: bytes) -> EnrollResult:
        """Send an ``ActivationProof`` and wait for the collector's ``EnrollmentResult`` for
        it: the result if ENROLLED, ``EnrollmentRefused`` if REFUSED, ``AgentTimeout`` if none
        arrives. (``request_id`` of the returned result is the proof's.)"""
        proof_id = f"proof-{uuid.uuid4().hex}"
        answer = await self._request(
            self.config.topics.requests, ACTIVATION_PROOF,
            {"request_id": proof_id, "host_id": self.host.host_id,
             "challenge_id": challenge_id, "secret_proof": secret, "sent_at": now_ms()},
            {ENROLLMENT_RESULT}, proof_id, "EnrollmentResult",
            match=lambda body: body.get("challenge_id") == challenge_id)
        _raise_unless_enrolled(answer)
        return EnrollResult(proof_id, challenge_id, proof_id, str(answer["result"]),
                            bytes(answer["ak_name"]), epoch_ms(answer["decided_at"]),
                            str(answer["detail"]))

    async def challenge_request(self, request_id: str, *, signed: bool = True
                                ) -> dict[str, Any]:
        """A ``ChallengeRequested`` for this client's host id offering every active bank,
        signed by the host's AK over its binding (``signed=False``: no proof at all, as
        anyone who may write to the requests topic can send)."""
        banks = await asyncio.to_thread(self.host.banks)
        offered = [{"bank": SYMBOL_OF_BANK[b], "pcrs": list(self.config.offered_pcrs)}
                   for b in banks if b in SYMBOL_OF_BANK]
        attest: bytes | None = None
        signature: bytes | None = None
        if signed:
            attest, signature = await asyncio.to_thread(
                self.host.sign_request, request_binding(self.host.host_id, request_id))
        return {"request_id": request_id, "host_id": self.host.host_id,
                "requested_pcrs": offered, "sent_at": now_ms(), "request_attest": attest,
                "request_signature": signature}

    async def attest(self, *, evidence_partition: int | None = None) -> AttestResult:
        """One attestation round (see the module docstring). ``evidence_partition`` writes
        the evidence to that partition instead of its key's (the ``foreign_partition``
        attack; the collector refuses it)."""
        banks = await asyncio.to_thread(self.host.banks)
        request_id = f"ask-{uuid.uuid4().hex}"
        issued = await self._request(
            self.config.topics.requests, CHALLENGE_REQUESTED,
            await self.challenge_request(request_id),
            {NONCE_ISSUED}, request_id, "NonceIssued")
        nonce = bytes(issued["nonce"])
        selection = challenge_selection(issued, banks)
        quote = await asyncio.to_thread(self.host.quote, nonce, selection)
        boot_log = await asyncio.to_thread(self.host.boot_log)
        ima_log = await asyncio.to_thread(self.host.ima_log)
        expires = epoch_ms(issued["expires_at"])
        draft = EvidenceDraft(issued["challenge_id"], nonce, quote, boot_log, ima_log,
                              selection, expires)
        if self.hook is not None:
            draft = await asyncio.to_thread(self.hook, draft, tuple(self.history), self.host)
        if draft.hold_until_ms is not None:
            wait_s = (draft.hold_until_ms - now_ms()) / 1000
            if wait_s > MAX_HOLD_S:
                raise AgentClientError(f"refusing to hold evidence for {wait_s:.0f}s")
            if wait_s > 0:
                await asyncio.sleep(wait_s)
        evidence_id = f"ev-{uuid.uuid4().hex}"
        q = draft.quote
        evidence = EvidenceSubmitted(
            evidence_id=evidence_id, host_id=self.host.host_id,
            challenge_id=draft.challenge_id, nonce=draft.nonce,
            quote_attest=q.attest, quote_signature=q.signature,
            pcr_values=tuple(PcrValue(SYMBOL_OF_BANK[bank], pcr, value)
                             for bank, values in sorted(q.pcr_values.items())
                             for pcr, value in sorted(values.items())),
            active_banks=tuple(SYMBOL_OF_BANK[b] for b in banks if b in SYMBOL_OF_BANK),
            boot_log=draft.boot_log, ima_log=draft.ima_log,
            agent_version=self.config.agent_version, quoted_at=now_ms(), sent_at=now_ms())
        meta = await self.send_record(self.config.topics.evidence, EVIDENCE_SUBMITTED,
                                      evidence.to_avro(), partition=evidence_partition)
        self.history.append(draft)
        return AttestResult(request_id, evidence_id, draft.challenge_id, draft.nonce,
                            meta.partition, meta.offset)

    # -- plumbing ----------------------------------------------------------------------------

    async def partitions(self, topic: str) -> tuple[int, int]:
        """(the partition this client's key maps to on ``topic``, the topic's partition count)."""
        if self._producer is None:
            raise AgentClientError("client is not started")
        from aiokafka.partitioner import DefaultPartitioner

        parts = sorted(await self._producer.partitions_for(topic))
        return DefaultPartitioner()(self.host.host_id.encode(), parts, parts), len(parts)

    async def send_record(self, topic: str, subject: str, record: Mapping[str, Any], *,
                          partition: int | None = None) -> SentRecord:
        """Encode and publish ``record`` keyed by this client's host id, on its key's partition
        (through :meth:`_send`, which a subclass may route) unless ``partition`` names another;
        the write is listed in :attr:`sent`. Every record the client writes goes through here."""
        meta = await (self._send(topic, subject, record) if partition is None
                      else self._publish(topic, subject, record, partition))
        sent = SentRecord(meta.topic, meta.partition, meta.offset, subject)
        self.sent.append(sent)
        return sent

    async def _send(self, topic: str, subject: str, record: Mapping[str, Any]) -> Any:
        """Publish on the key's partition; returns the producer's record metadata."""
        return await self._publish(topic, subject, record, None)

    async def _publish(self, topic: str, subject: str, record: Mapping[str, Any],
                       partition: int | None) -> Any:
        if self._producer is None:
            raise AgentClientError("client is not started")
        from aiokafka.errors import KafkaError

        value = self.codec.encode(subject, record)
        try:
            return await asyncio.wait_for(
                self._producer.send_and_wait(topic, value, key=self.host.host_id.encode(),
                                             partition=partition),
                self.config.timeout_s)
        except (KafkaError, TimeoutError) as exc:
            raise AgentTimeout(f"could not publish {subject} to {topic} within "
                               f"{self.config.timeout_s:.0f}s: {type(exc).__name__}") from exc

    async def _request(self, topic: str, subject: str, record: Mapping[str, Any],
                       answer_subjects: set[str], request_id: str, what: str, *,
                       match: Callable[[Mapping[str, Any]], bool] | None = None
                       ) -> Mapping[str, Any]:
        """Send ``record`` and wait for a record of ``answer_subjects`` addressed to
        ``request_id`` (and accepted by ``match``, if given)."""
        assert self._consumer is not None
        await self._consumer.seek_to_end(self._tp)
        await self._consumer.position(self._tp)
        await self.send_record(topic, subject, record)
        deadline = time.monotonic() + self.config.timeout_s
        while (left := deadline - time.monotonic()) > 0:
            batch = await self._consumer.getmany(self._tp, timeout_ms=int(min(left, 1.0) * 1000))
            for rec in batch.get(self._tp, []):
                if rec.value is None or rec.key != self.host.host_id.encode():
                    continue
                try:
                    decoded = self.codec.decode(rec.value, expected=answer_subjects)
                except HostgateError:
                    continue  # another record type (or one we cannot read): not our answer
                body = decoded.record
                if body.get("host_id") == self.host.host_id and \
                        body.get("request_id") == request_id and (match is None or match(body)):
                    return body
        raise AgentTimeout(f"no {what} for request {request_id} on {self._tp.topic} within "
                           f"{self.config.timeout_s:.0f}s (collector down, or the request was "
                           "refused: see attest.rejections.v1)")


def challenge_selection(issued: Mapping[str, Any], active: Sequence[str]) -> Selection:
    """The ``NonceIssued``'s selection as ``((bank, pcrs), ...)``, in its order.
    ``AgentClientError`` if it names a bank this agent cannot quote or the TPM has not
    allocated: the host cannot meet the policy's coverage, and a quote over less would only
    be refused at intake."""
    out: list[tuple[str, tuple[int, ...]]] = []
    for sel in issued["pcr_selection"]:
        symbol = str(sel["bank"])
        bank = BANK_OF_SYMBOL.get(symbol)
        if bank is None or bank not in active:
            raise AgentClientError(
                f"challenge {issued['challenge_id']} asks for PCR bank {symbol}, which this TPM "
                f"does not have active ({', '.join(active) or 'none'}): the policy in force "
                "requires it (allocate the bank, or change the policy)")
        out.append((bank, tuple(sorted(set(int(p) for p in sel["pcrs"])))))
    if not out:
        raise AgentClientError(f"challenge {issued['challenge_id']} names no PCRs to quote")
    return tuple(out)


def _raise_unless_enrolled(result: Mapping[str, Any]) -> None:
    """Raise ``EnrollmentRefused`` for a REFUSED ``EnrollmentResult``, ``AgentClientError`` for
    an outcome this version does not understand (fail closed)."""
    outcome = str(result.get("result"))
    if outcome == "ENROLLED":
        return
    request_id = str(result.get("request_id"))
    challenge_id = result.get("challenge_id")
    if outcome == "REFUSED":
        reason = str(result.get("reason") or "UNKNOWN")
        raise EnrollmentRefused(
            f"enrolment refused by the collector: {reason} (request {request_id}): "
            f"{' '.join(str(result.get('detail', '')).split())[:300]}",
            reason=reason, request_id=request_id, challenge_id=challenge_id)
    raise AgentClientError(f"the collector answered request {request_id} with enrolment "
                           f"result {outcome!r}, which this agent does not understand")


async def _stop_quietly(*clients: Any) -> None:
    for client in clients:
        if client is None:
            continue
        try:
            await asyncio.wait_for(client.stop(), 10)
        except Exception:  # closing after a failure: nothing more to do
            continue
