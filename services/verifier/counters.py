"""Quote counters against the host's previous accepted quote: a reboot is fine, going back is not.

``TPMS_CLOCK_INFO`` (TPM 2.0 Part 2, 10.11.1) carries ``resetCount`` (TPM resets, i.e. reboots,
since the TPM was cleared), ``restartCount`` (restarts/resumes since the last reset, zeroed by a
reset) and ``clock`` (ms the TPM has been powered, monotonic unless ``safe`` is clear). Ordered
as the tuple ``(resetCount, restartCount, clock)`` a genuine TPM only moves forward between two
quotes; a quote that sorts *before* the previous one was made earlier (a replayed old quote), by
a TPM that was cleared (its identity then changes, so re-enrolment is due), or by something
that is not the enrolled TPM.

The collector hands the previous counters in the record (``previous_counters``); the verifier
reads no other state.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from services.tpm.quote import ClockInfo


class CounterChange(StrEnum):
    """How the quote's counters relate to the previous quote's."""

    FIRST = "first"
    """No previous quote (the host's first attestation)."""
    SAME_BOOT = "same_boot"
    """Same reset and restart count, clock moved forward (or stood still)."""
    RESUMED = "resumed"
    """Same reset count, restart count went up (a resume from hibernation or a TPM restart)."""
    REBOOTED = "rebooted"
    """Reset count went up (a reboot); restart count and clock start again."""
    WENT_BACKWARDS = "went_backwards"
    """Reset count, restart count or clock went backwards: never acceptable."""


@dataclass(frozen=True)
class CounterCheck:
    """The comparison's outcome with one plain sentence."""

    change: CounterChange
    sentence: str

    @property
    def ok(self) -> bool:
        """False only when the counters went backwards."""
        return self.change is not CounterChange.WENT_BACKWARDS


def compare(previous: ClockInfo | None, current: ClockInfo) -> CounterCheck:
    """Compare ``current`` (from a verified quote) with the host's ``previous`` accepted quote."""
    if previous is None:
        return CounterCheck(CounterChange.FIRST, "This is the host's first quote.")
    p, c = previous, current
    if c.reset_count < p.reset_count:
        return CounterCheck(CounterChange.WENT_BACKWARDS,
                            f"The TPM resetCount went backwards from {p.reset_count} to "
                            f"{c.reset_count} since the host's previous quote.")
    if c.reset_count > p.reset_count:
        return CounterCheck(CounterChange.REBOOTED,
                            f"The host rebooted (resetCount {p.reset_count} -> {c.reset_count}).")
    if c.restart_count < p.restart_count:
        return CounterCheck(CounterChange.WENT_BACKWARDS,
                            f"The TPM restartCount went backwards from {p.restart_count} to "
                            f"{c.restart_count} within reset {c.reset_count} since the host's "
                            "previous quote.")
    if c.restart_count > p.restart_count:
        return CounterCheck(CounterChange.RESUMED,
                            f"The TPM restarted (restartCount {p.restart_count} -> "
                            f"{c.restart_count}).")
    if c.clock < p.clock:
        return CounterCheck(CounterChange.WENT_BACKWARDS,
                            f"The TPM clock went backwards from {p.clock} ms to {c.clock} ms "
                            f"within reset {c.reset_count}, restart {c.restart_count}.")
    return CounterCheck(CounterChange.SAME_BOOT,
                        f"Same boot as the previous quote (clock {p.clock} -> {c.clock} ms).")
