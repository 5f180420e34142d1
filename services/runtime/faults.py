"""One mapping from an exception to whose fault it is, for every stage.

A stage's ``decide`` answers what it expects (malformed evidence, an unknown nonce) with a
decision of its own. What it raises instead is one of three faults, decided here and nowhere
else (``services.runtime.plan`` acts on it):

* ``HOST``: the input's sender is at fault: a :class:`~services.errors.HostgateError` with
  ``host_fault`` (the TPM library's parse and verification errors, which name the field and
  byte offset; an unsigned request). The stage's ``on_host_fault`` turns it into the refusal
  the sender and the SOC see (a rejection, a failed verdict); a stage without one dead-letters
  the record.
* ``TRANSIENT``: trying again can succeed (``retriable``: a schema registry or topic that is
  not there yet). The runtime aborts the transaction and retries the batch, so nothing is
  decided on a half-read world and nothing is lost.
* ``BUG``: anything else. Never blamed on the host, always counted in
  ``hostgate_internal_errors``. A stage whose silence would favour the host answers it with
  ``on_bug``: the verifier fails the evidence with ``verifier.internal_error`` (the verifier's
  fault, not the host's), because a dead letter would leave a host whose evidence crashes the
  verifier TRUSTED on its last credential. Any other stage dead-letters the record with the
  error in its headers (the host gets no decision, so nothing it asked for).
"""

from __future__ import annotations

from enum import StrEnum

from services.errors import HostgateError

__all__ = ["Fault", "classify"]


class Fault(StrEnum):
    """Whose fault an exception raised by ``decide`` is."""

    HOST = "host"
    TRANSIENT = "transient"
    BUG = "bug"


def classify(exc: BaseException) -> Fault:
    """The fault ``exc`` is (see the module docstring); transient wins over host."""
    if isinstance(exc, HostgateError):
        if exc.retriable:
            return Fault.TRANSIENT
        if exc.host_fault:
            return Fault.HOST
    return Fault.BUG
