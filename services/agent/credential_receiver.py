"""The agent's side of credential delivery: take this host's ``hostgate.CredentialIssued`` from
``attest.credentials.v1``, recover its private key in the TPM, and check it.

Steps (``open_delivery``), each failing closed with ``CredentialRejected``:

1. the record is for this host (``host_id``), with sizes within bounds (everything on the topic
   is untrusted: any host can read it and anyone with write access could have put it there);
2. the certificate parses, names this host (``CN`` and the ``urn:hostgate:host:`` URI SAN) and,
   when the issuing CA's certificate is given, is signed by it;
3. the TPM imports the sealed object under its EK, satisfies PolicyPCR with its *current* PCRs
   and unseals the content key (``AgentTpm.unseal``); another TPM cannot import it and the same
   TPM in another measured state cannot unseal it;
4. the content key decrypts the host key (AES-GCM bound to the certificate and credential id);
5. the host key's public half equals the certificate's public key.

``receive_credential`` reads the topic (read_committed, no consumer group, nothing committed:
many agents may read it) on the partition the host's key maps to.

The recovered private key is held in ``ReceivedCredential.host_key`` (not in its repr) and is
never logged; writing it to disk is the caller's choice (``write_pem`` writes it mode 0600).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import Awaitable, Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, Protocol, cast

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from services.agent.backoff import Backoff, Uniform
from services.errors import HostgateError
from services.issuer.certificates import HOST_URN_PREFIX
from services.issuer.errors import SealedPayloadError
from services.issuer.sealing import MAX_PAYLOAD_BYTES, open_credential
from services.runtime.readers import groupless_consumer, rewind, topic_partitions
from services.runtime.topics import Topics
from services.tpm.credential import SealedCredential, pcr_selection
from services.tpm.errors import TpmError
from services.wire.subjects import CREDENTIAL_ISSUED

CREDENTIALS_TOPIC: Final = Topics().credentials
"""The default without a namespace; callers of a namespaced deployment pass its topic."""
#: Largest DER certificate accepted from the topic.
MAX_CERT_BYTES: Final = 16 * 1024
#: Largest marshalled TPM2B_PUBLIC / TPM2B_PRIVATE / TPM2B_ENCRYPTED_SECRET accepted.
MAX_BLOB_BYTES: Final = 2048
#: Most PCR-selection entries accepted (one per bank).
MAX_SELECTION_BANKS: Final = 5


class CredentialRejected(HostgateError):
    """A delivered credential that this host cannot or must not use (names the field/step)."""

    def __init__(self, message: str, *, credential_id: str | None = None,
                 field: str | None = None) -> None:
        self.credential_id = credential_id
        self.field = field
        where = ", ".join(p for p in (f"credential {credential_id}" if credential_id else "",
                                      f"field {field}" if field else "") if p)
        super().__init__(f"{message} ({where})" if where else message)


class CredentialNotDelivered(HostgateError):
    """No credential for this host arrived on the topic in time."""

    retriable = True


class Unsealer(Protocol):
    """What ``open_delivery`` needs from a TPM (``AgentTpm``, ``SimulatedHost``)."""

    def unseal(self, sealed: SealedCredential) -> bytes: ...


@dataclass(frozen=True)
class ReceivedCredential:
    """A credential this host's TPM opened and whose key matches its certificate."""

    credential_id: str
    host_id: str
    serial: str
    verdict_id: str
    certificate: x509.Certificate
    host_key: ec.EllipticCurvePrivateKey = field(repr=False)
    coordinates: str = ""

    def write_pem(self, directory: Path) -> tuple[Path, Path]:
        """Write ``<host>.crt`` and ``<host>.key`` (PKCS#8, mode 0600) into ``directory``
        (created mode 0700 if missing); returns both paths.

        Each file is written beside its target and renamed over it, so a reader never sees a
        half-written file and an existing key file's looser mode is not inherited."""
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        cert_path = directory / f"{self.host_id}.crt"
        key_path = directory / f"{self.host_id}.key"
        _write_replace(cert_path, self.certificate.public_bytes(serialization.Encoding.PEM),
                       0o644)
        _write_replace(key_path, self.host_key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption()), 0o600)
        return cert_path, key_path


def _write_replace(path: Path, data: bytes, mode: int) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, mode)  # the umask may have narrowed it; never widened past ``mode``
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def _bytes(record: Mapping[str, Any], name: str, limit: int, cid: str) -> bytes:
    value = record.get(name)
    if not isinstance(value, bytes | bytearray):
        raise CredentialRejected("missing or not bytes", credential_id=cid, field=name)
    if not 0 < len(value) <= limit:
        raise CredentialRejected(f"{len(value)} bytes, outside 1..{limit}", credential_id=cid,
                                 field=name)
    return bytes(value)


def untrusted_sealed_from_record(record: Mapping[str, Any]) -> SealedCredential:
    """The ``SealedCredential`` a ``CredentialIssued`` record carries (bounded, not yet
    opened: only the TPM can tell whether it is really for this EK and state)."""
    cid = str(record.get("credential_id", ""))[:80]
    sealed = record.get("sealed")
    if not isinstance(sealed, Mapping):
        raise CredentialRejected("missing", credential_id=cid, field="sealed")
    entries = record.get("pcr_selection") or []
    if not 0 < len(entries) <= MAX_SELECTION_BANKS:
        raise CredentialRejected(f"{len(entries)} banks, outside 1..{MAX_SELECTION_BANKS}",
                                 credential_id=cid, field="pcr_selection")
    try:
        selection = pcr_selection([(str(e["bank"]).lower(), list(e["pcrs"])) for e in entries])
    except (TpmError, KeyError, TypeError) as exc:
        raise CredentialRejected(f"invalid: {exc}", credential_id=cid,
                                 field="pcr_selection") from None
    return SealedCredential(
        public=_bytes(sealed, "public", MAX_BLOB_BYTES, cid),
        duplicate=_bytes(sealed, "duplicate", MAX_BLOB_BYTES, cid),
        encrypted_seed=_bytes(sealed, "encrypted_seed", MAX_BLOB_BYTES, cid),
        selection=selection, policy_digest=b"")


def _check_certificate(record: Mapping[str, Any], host_id: str, cid: str,
                       ca_certificate: x509.Certificate | None) -> x509.Certificate:
    der = _bytes(record, "certificate", MAX_CERT_BYTES, cid)
    try:
        cert = x509.load_der_x509_certificate(der)
        cns = [a.value for a in cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)]
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        uris = san.get_values_for_type(x509.UniformResourceIdentifier)
    except (ValueError, x509.ExtensionNotFound) as exc:
        raise CredentialRejected(f"certificate does not parse as a host certificate: "
                                 f"{type(exc).__name__}", credential_id=cid,
                                 field="certificate") from None
    if cns != [host_id] or uris != [HOST_URN_PREFIX + host_id]:
        raise CredentialRejected(f"certificate names {cns} / {uris}, not host {host_id}",
                                 credential_id=cid, field="certificate")
    if ca_certificate is not None:
        try:
            cert.verify_directly_issued_by(ca_certificate)
        except (ValueError, TypeError, InvalidSignature) as exc:
            raise CredentialRejected(f"certificate is not issued by the configured CA: "
                                     f"{type(exc).__name__}", credential_id=cid,
                                     field="certificate") from None
    return cert


def _unseal_refusal(exc: Any) -> str:
    """Why the TPM refused, in words. PolicyPCR failing at unseal means the blob did import
    under this TPM's EK (it is sealed to this TPM) but the PCRs moved; any other refusal comes
    from the import. Quirk ``libtpms-import-rc``: libtpms answers an import wrapped to another
    EK with TPM_RC_FAILURE (0x101) without entering failure mode, where a hardware TPM says
    TPM_RC_VALUE or TPM_RC_INTEGRITY, so no other code is singled out."""
    from tpm2_pytss.constants import TPM2_RC

    rc = int(exc.rc)
    if int(exc.error) in (int(TPM2_RC.POLICY_FAIL), int(TPM2_RC.PCR_CHANGED)):
        return (f"the TPM refused to import or unseal it: it is sealed to this TPM, but its "
                f"PCRs no longer hold the attested values (PolicyPCR failed, TPM RC 0x{rc:x}); "
                "the measured state changed since the attestation — attest again")
    return (f"the TPM refused to import or unseal it: it is not sealed to this TPM's EK "
            f"(import failed, TPM RC 0x{rc:x}) — a credential of another TPM, or this host "
            "enrolled with another TPM")


def open_delivery(record: Mapping[str, Any], tpm: Unsealer, *, host_id: str,
                  ca_certificate: x509.Certificate | None = None,
                  coordinates: str = "") -> ReceivedCredential:
    """Open one ``CredentialIssued`` record in this host's TPM (see the module docstring)."""
    from tpm2_pytss.TSS2_Exception import TSS2_Exception

    cid = record.get("credential_id")
    if not isinstance(cid, str) or not 0 < len(cid) <= 128:
        raise CredentialRejected("missing or over 128 characters", field="credential_id")
    if record.get("host_id") != host_id:
        raise CredentialRejected(f"credential is for host {str(record.get('host_id'))[:80]!r}, "
                                 f"not {host_id!r}", credential_id=cid, field="host_id")
    cert = _check_certificate(record, host_id, cid, ca_certificate)
    sealed = untrusted_sealed_from_record(record)
    payload = _bytes(record["sealed"], "encrypted_payload", MAX_PAYLOAD_BYTES, cid)
    try:
        content_key = tpm.unseal(sealed)
    except TSS2_Exception as exc:
        raise CredentialRejected(_unseal_refusal(exc), credential_id=cid,
                                 field="sealed") from None
    try:
        host_key = open_credential(content_key, payload, credential_id=cid,
                                   certificate_der=cert.public_bytes(
                                       serialization.Encoding.DER))
    except SealedPayloadError as exc:
        raise CredentialRejected(str(exc), credential_id=cid,
                                 field="sealed.encrypted_payload") from None
    cert_key = cert.public_key()
    if not isinstance(cert_key, ec.EllipticCurvePublicKey) or \
            cert_key.public_numbers() != host_key.public_key().public_numbers():
        raise CredentialRejected("the recovered key does not match the certificate's public "
                                 "key", credential_id=cid, field="certificate")
    return ReceivedCredential(cid, host_id, str(record.get("serial", "")),
                              str(record.get("verdict_id", "")), cert, host_key, coordinates)


Sleep = Callable[[float], Awaitable[None]]
"""``asyncio.sleep``'s shape; tests pass one that records the waits instead of waiting."""


async def wait_for_partitions(lookup: Callable[[], Awaitable[list[int]]], *, deadline: float,
                              waits: Iterator[float], sleep: Sleep = asyncio.sleep,
                              clock: Callable[[], float] = time.monotonic) -> list[int]:
    """``lookup()`` until it names partitions (the topic exists) or ``deadline`` (``clock``
    time) has passed, sleeping the next of ``waits`` between tries, never past the deadline;
    the partitions, or ``[]`` at the deadline."""
    parts = await lookup()
    while not parts and clock() < deadline:
        await sleep(max(0.0, min(next(waits), deadline - clock())))
        parts = await lookup()
    return parts


async def receive_credential(bootstrap: str, host_id: str, tpm: Unsealer, *,
                             topic: str = CREDENTIALS_TOPIC, verdict_id: str | None = None,
                             ca_certificate: x509.Certificate | None = None,
                             timeout_s: float = 60.0, backoff: Backoff | None = None,
                             jitter: Uniform | None = None) -> ReceivedCredential:
    """Wait for this host's credential on ``topic`` and open it.

    With ``verdict_id``: the credential issued for that verdict. Without: the newest one for
    the host already on the topic, or else the next to arrive. Records for other hosts on the
    same partition are skipped unread; a record that does not decode is skipped (it cannot be
    ours: the issuer writes Avro). Raises ``CredentialNotDelivered`` after ``timeout_s``.

    While the topic does not exist yet, and while the partition has nothing new, the waits are
    the agent's jittered ``backoff`` (default ``Backoff()``) drawn with ``jitter`` (see
    ``services.agent.backoff``), so a fleet waiting for its credentials after an outage does
    not poll the broker in lockstep.
    """
    from aiokafka import TopicPartition
    from aiokafka.partitioner import DefaultPartitioner

    from services.runtime.codec import Codec

    codec = Codec.load()
    waits = (backoff or Backoff()).waits(jitter)
    async with groupless_consumer(bootstrap) as consumer:
        deadline = time.monotonic() + timeout_s
        parts = await wait_for_partitions(lambda: topic_partitions(bootstrap, topic),
                                          deadline=deadline, waits=waits)
        if not parts:
            raise CredentialNotDelivered(f"topic {topic} does not exist at {bootstrap}")
        key = host_id.encode("utf-8")
        tp = TopicPartition(topic, DefaultPartitioner()(key, parts, parts))
        end = (await rewind(consumer, [tp]))[tp]
        found = await poll_for_record(consumer, tp, key, end, deadline=deadline, waits=waits,
                                      accept=lambda rec: _credential_of(codec, rec, verdict_id),
                                      newest=verdict_id is None)
        if found is not None:
            return open_delivery(found[0], tpm, host_id=host_id, ca_certificate=ca_certificate,
                                 coordinates=found[1])
        raise CredentialNotDelivered(
            f"no credential for host {host_id}"
            + (f" and verdict {verdict_id}" if verdict_id else "")
            + f" on {topic} within {timeout_s:.0f}s")


def _credential_of(codec: Any, rec: Any, verdict_id: str | None) -> Mapping[str, Any] | None:
    try:
        decoded = codec.decode(rec.value, expected={CREDENTIAL_ISSUED})
    except HostgateError:
        return None
    if verdict_id is None or decoded.record.get("verdict_id") == verdict_id:
        return cast(Mapping[str, Any], decoded.record)
    return None


class PartitionReader(Protocol):
    """What :func:`poll_for_record` needs of a consumer assigned ``tp`` (aiokafka's has it)."""

    async def getmany(self, *partitions: Any, timeout_ms: int = 0) -> dict[Any, list[Any]]: ...

    async def position(self, partition: Any) -> int: ...


async def poll_for_record(consumer: PartitionReader, tp: Any, key: bytes, end: int, *,
                          deadline: float, waits: Iterator[float],
                          accept: Callable[[Any], Mapping[str, Any] | None], newest: bool,
                          clock: Callable[[], float] = time.monotonic,
                          ) -> tuple[Mapping[str, Any], str] | None:
    """Read ``tp`` for a record keyed ``key`` that ``accept`` turns into a credential record.

    ``newest``: the last accepted one at or before ``end`` (the partition's end when reading
    began), else the first one after it; not ``newest``: the first accepted one. Each fetch
    waits at most the next of ``waits`` (never past ``deadline``) for records; the record and
    its coordinates, or None at the deadline."""
    found: tuple[Mapping[str, Any], str] | None = None
    while clock() < deadline:
        wait_ms = max(1, int(min(next(waits), deadline - clock()) * 1000))
        batch = await consumer.getmany(tp, timeout_ms=wait_ms)
        for rec in batch.get(tp, []):
            if rec.key != key or rec.value is None:
                continue
            record = accept(rec)
            if record is not None:
                found = (record, f"{rec.topic}[{rec.partition}]@{rec.offset}")
                if not newest or rec.offset >= end:
                    break
        if found is not None and (not newest or await consumer.position(tp) >= end):
            return found
    return None


__all__ = [
    "CredentialNotDelivered",
    "CredentialRejected",
    "PartitionReader",
    "ReceivedCredential",
    "Unsealer",
    "open_delivery",
    "poll_for_record",
    "receive_credential",
    "untrusted_sealed_from_record",
    "wait_for_partitions",
]
