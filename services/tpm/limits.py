"""Bounds on hostile input, checked while parsing so that a bad log fails early.

Every byte of an event log comes from the host being judged. The parser checks these limits as
it reads (before allocating or looping), and raises
:class:`~services.tpm.errors.LimitExceeded` naming the byte offset where the bound was hit.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["DEFAULT_LIMITS", "Limits"]


@dataclass(frozen=True, slots=True)
class Limits:
    """Upper bounds for one event log.

    The defaults are far above any real log in the corpus (largest: 256 KiB, a few hundred
    events, 15 KiB of dbx data) and low enough that one log cannot exhaust a worker.
    """

    max_log_bytes: int = 16 * 1024 * 1024
    """Size of the whole log, padding included (a TDX CCEL region is 64 KiB-several MiB)."""
    max_events: int = 200_000
    """Number of events, EV_NO_ACTION included."""
    max_event_data: int = 1024 * 1024
    """``eventSize`` of a single event."""
    max_digests_per_event: int = 16
    """``TPML_DIGEST_VALUES.count`` of an event; ``numberOfAlgorithms`` of the Spec ID event."""
    max_pcr_index: int = 31
    """Highest PCR / MR index accepted, besides Windows' 0xFFFFFFFF (never extended)."""


DEFAULT_LIMITS = Limits()
