"""TPM 2.0 and TCG evidence formats: pure functions, bytes in, frozen values out.

Event logs: :func:`parse_event_log` (bytes -> untrusted :class:`EventLog`), :func:`replay`
(untrusted PCR values), :func:`verify_replay` (log + quoted PCRs -> :class:`ReplayResult`, whose
``verified_events`` are the only events later stages should interpret). Firmware workarounds are
named in :mod:`services.tpm.quirks`; bounds on hostile input in :mod:`services.tpm.limits`.
Other modules (UEFI/SIPA decoders, claims, IMA, quotes, keys) are imported from their own
``services.tpm.<module>``. Nothing here remembers anything between calls; the few functions whose
inputs recur across a fleet take an optional caller-owned ``memo=`` (:mod:`services.tpm.memo`).
"""

from services.tpm.algorithms import ALGORITHMS, Algorithm, alg_by_id, alg_by_name, hash_constructor
from services.tpm.eventlog import (
    PCR_NOT_EXTENDED,
    DeclaredAlgorithm,
    Event,
    EventLog,
    EventType,
    SpecIdEvent,
    event_type_name,
    parse_event_log,
)
from services.tpm.limits import DEFAULT_LIMITS, Limits
from services.tpm.quirks import QUIRK_IDS, QUIRKS, Quirk
from services.tpm.replay import (
    PcrBanks,
    ReplayResult,
    events_of_pcr,
    initial_pcr_value,
    replay,
    startup_locality,
    verify_replay,
)

__all__ = [
    "ALGORITHMS",
    "DEFAULT_LIMITS",
    "PCR_NOT_EXTENDED",
    "QUIRKS",
    "QUIRK_IDS",
    "Algorithm",
    "DeclaredAlgorithm",
    "Event",
    "EventLog",
    "EventType",
    "Limits",
    "PcrBanks",
    "Quirk",
    "ReplayResult",
    "SpecIdEvent",
    "alg_by_id",
    "alg_by_name",
    "event_type_name",
    "events_of_pcr",
    "hash_constructor",
    "initial_pcr_value",
    "parse_event_log",
    "replay",
    "startup_locality",
    "verify_replay",
]
