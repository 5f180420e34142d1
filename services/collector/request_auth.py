"""Authenticated challenge requests: what the agent's AK signs and what the collector checks.

Anyone who may write to ``attest.requests.v1`` can name any host, so a ``ChallengeRequested``
counts (against the host's rate limit and open-challenge bound, or for a nonce) only when the
host's enrolled AK vouches for it. A restricted signing key cannot sign an arbitrary digest, so
the agent makes a **TPM2_Quote** whose qualifying data (``extraData``) is the request binding::

    binding = SHA-256( "hostgate.challenge-request.v1" || 0x00
                       || u32be(len(host_id))    || host_id      (UTF-8 bytes)
                       || u32be(len(request_id)) || request_id ) (UTF-8 bytes)

and sends the quote's ``TPMS_ATTEST`` and ``TPMT_SIGNATURE`` in the request
(``request_attest``, ``request_signature``). The quote's PCR selection does not matter (the
agent uses one PCR). The domain tag keeps the binding apart from evidence quotes, whose
``extraData`` is a collector nonce.

The collector accepts the request when the signature verifies with the host's enrolled AK, the
structure is a quote, its ``extraData`` is exactly this binding (so a signature for another
host or another request id is useless), and the quote's clock ``(resetCount, restartCount,
clock)`` is strictly later than that of the host's last accepted request, so a captured request
cannot be replayed: the TPM's clock only moves forward (a TPM clear resets it, and a cleared
TPM needs re-enrolment anyway). Pure: no I/O, no clock.
"""

from __future__ import annotations

import hashlib
import hmac
import struct
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

from services.errors import HostgateError
from services.tpm.errors import InvalidQuoteSignature, MalformedInput, Unsupported
from services.tpm.keys import decode_public
from services.tpm.memo import Memo
from services.tpm.quote import TPM_ST_ATTEST_QUOTE, decode_attest, verify_attest_signature

REQUEST_TAG: Final = b"hostgate.challenge-request.v1\x00"
ROTATION_TAG: Final = b"hostgate.ak-rotation-request.v1\x00"
"""Domain tag of an AK rotation: an enrolled host's ``EnrollmentRequested`` for a new AK must
be signed by its *current* AK over ``rotation_binding`` (host id, request id and the new AK's
name), so copied EK material alone cannot open activations against an enrolled host."""
CLOCK_MASK: Final = 0x7FFF_FFFF_FFFF_FFFF
"""``clock`` is stored in an Avro long (as the evidence counters are): its low 63 bits."""


class RequestUnauthenticated(HostgateError):
    """A challenge request the host's enrolled AK does not vouch for; the message says why
    (it holds no key material)."""

    host_fault = True


def _binding(tag: bytes, *parts: bytes) -> bytes:
    h = hashlib.sha256(tag)
    for part in parts:
        h.update(struct.pack(">I", len(part)) + part)
    return h.digest()


def request_binding(host_id: str, request_id: str) -> bytes:
    """The 32-byte ``extraData`` that authenticates request ``request_id`` of ``host_id``."""
    return _binding(REQUEST_TAG, host_id.encode("utf-8"), request_id.encode("utf-8"))


def rotation_binding(host_id: str, request_id: str, new_ak_name: bytes) -> bytes:
    """The ``extraData`` of an AK rotation request: as :func:`request_binding` under
    :data:`ROTATION_TAG`, plus the TPM name of the AK to be enrolled (so the signature cannot
    be reused for another key)."""
    return _binding(ROTATION_TAG, host_id.encode("utf-8"), request_id.encode("utf-8"),
                    new_ak_name)


@dataclass(frozen=True, order=True)
class RequestClock:
    """The TPM clock of a request's quote; ordered as the TPM moves it forward."""

    reset_count: int
    restart_count: int
    clock: int

    def to_record(self, safe: bool = True) -> dict[str, Any]:
        """As a ``hostgate.QuoteCounters`` record."""
        return {"reset_count": self.reset_count, "restart_count": self.restart_count,
                "clock": self.clock, "safe": safe}

    @classmethod
    def from_record(cls, rec: Mapping[str, Any]) -> RequestClock:
        return cls(int(rec["reset_count"]), int(rec["restart_count"]), int(rec["clock"]))

    def __str__(self) -> str:
        return f"resetCount {self.reset_count}, restartCount {self.restart_count}, " \
               f"clock {self.clock} ms"


@dataclass(frozen=True)
class AuthenticatedRequest:
    """What a verified request proves: the host's AK signed it at ``clock``."""

    clock: RequestClock
    safe: bool


def verify_request(ak_public: bytes, host_id: str, request_id: str, attest: bytes | None,
                   signature: bytes | None, *, last: RequestClock | None,
                   max_attest_bytes: int, max_signature_bytes: int,
                   binding: bytes | None = None, memo: Memo | None = None
                   ) -> AuthenticatedRequest:
    """Check a request's quote against the enrolled AK ``ak_public`` (marshalled TPM2B_PUBLIC)
    and the host's ``last`` accepted request clock; ``RequestUnauthenticated`` says which check
    failed (see the module docstring for the order). ``binding`` is the ``extraData`` expected
    (default: :func:`request_binding` of ``host_id`` and ``request_id``). ``memo``: the
    caller's (``services.tpm.memo``), for the AK's decoded public area."""
    if attest is None or signature is None:
        raise RequestUnauthenticated("fields request_attest and request_signature are required: "
                                     "this request must be signed by the host's enrolled AK")
    for name, value, limit in (("request_attest", attest, max_attest_bytes),
                               ("request_signature", signature, max_signature_bytes)):
        if len(value) > limit:
            raise RequestUnauthenticated(f"field {name} has {len(value)} bytes (limit {limit})")
    ak = decode_public(ak_public, memo)  # the enrolled AK: decoded at enrolment, cannot fail
    try:
        verify_attest_signature(ak, attest, signature, memo)
        quoted = decode_attest(attest)
    except (InvalidQuoteSignature, Unsupported) as exc:
        raise RequestUnauthenticated(f"field request_signature: not a signature by the host's "
                                     f"enrolled AK: {exc}") from None
    except MalformedInput as exc:
        raise RequestUnauthenticated(f"field request_attest/request_signature: {exc}") from None
    if quoted.type != TPM_ST_ATTEST_QUOTE:
        raise RequestUnauthenticated(f"field request_attest: type {quoted.type:#06x} is not "
                                     "TPM_ST_ATTEST_QUOTE")
    expected = binding if binding is not None else request_binding(host_id, request_id)
    if not hmac.compare_digest(quoted.extra_data, expected):
        raise RequestUnauthenticated("field request_attest: extraData is not the binding of "
                                     "this host id and request id (a signature made for "
                                     "another request or another host)")
    ci = quoted.clock_info
    clock = RequestClock(ci.reset_count, ci.restart_count, ci.clock & CLOCK_MASK)
    if last is not None and not clock > last:
        raise RequestUnauthenticated(f"field request_attest: signed at TPM {clock}, not after "
                                     f"the host's last accepted request ({last}): a replayed "
                                     "or out-of-date request")
    return AuthenticatedRequest(clock, ci.safe)


__all__ = ["AuthenticatedRequest", "RequestClock", "RequestUnauthenticated", "request_binding",
           "rotation_binding", "verify_request"]
