"""Evidence hooks: the protocol tamper profiles, applied by the agent client over Kafka.

Profiles that work on the *protocol* (which challenge a host answers, and when) cannot live in
the simulated TPM: the host quotes the issued nonce honestly and the client hands the evidence
it is about to send (:class:`EvidenceDraft`) to its hook, which may change it
(``AgentClient(..., hook=hook_for(tamper))``):

* ``replayed_nonce`` (:func:`replay_previous_nonce`): answer with the previous round's challenge
  and nonce, and a fresh quote over that used nonce;
* ``stale_quote`` (:func:`hold_past_expiry`): quote at once, but hold the evidence until the
  nonce has expired.

Profiles on the TPM output or the log live in the simulated host (``services.agent.fleet``),
the protocol attacks that write records of their own in ``services.agent.attacks``, and the
profiles themselves, as data, in ``services.agent.tamper``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from services.agent.tpm import Quote, Selection

if TYPE_CHECKING:
    from services.agent.client import HostSide

__all__ = ["EvidenceDraft", "EvidenceHook", "hold_past_expiry", "hook_for",
           "replay_previous_nonce"]


@dataclass(frozen=True)
class EvidenceDraft:
    """The evidence about to be sent; a hook may return a changed copy."""

    challenge_id: str
    nonce: bytes
    quote: Quote
    boot_log: bytes
    ima_log: bytes | None
    selection: Selection
    """What the challenge asked to be quoted, bank by bank."""
    expires_at_ms: int
    hold_until_ms: int | None = None
    """Wall-clock time (ms) before which the evidence must not be sent."""


EvidenceHook = Callable[[EvidenceDraft, Sequence[EvidenceDraft], "HostSide"], EvidenceDraft]
"""(draft, earlier drafts sent by this client, host) -> the draft to send."""


def replay_previous_nonce(draft: EvidenceDraft, history: Sequence[EvidenceDraft],
                          host: HostSide) -> EvidenceDraft:
    """``replayed_nonce``: answer with the previous round's challenge and nonce, quoted anew."""
    if not history:
        return draft
    prev = history[-1]
    return dataclasses.replace(draft, challenge_id=prev.challenge_id, nonce=prev.nonce,
                               quote=host.quote(prev.nonce, prev.selection))


def hold_past_expiry(draft: EvidenceDraft, history: Sequence[EvidenceDraft],
                     host: HostSide) -> EvidenceDraft:
    """``stale_quote``: quote now, send one second after the nonce expired."""
    return dataclasses.replace(draft, hold_until_ms=draft.expires_at_ms + 1000)


def hook_for(tamper: str | None) -> EvidenceHook | None:
    """The client-side hook of an evidence tamper profile (None for the others)."""
    return {"replayed_nonce": replay_previous_nonce,
            "stale_quote": hold_past_expiry}.get(tamper or "")
