"""Replay an event log per bank and check it against quoted PCR values.

Extend rule (TPM 2.0 Part 1, section 17.7): ``PCR_new = H(PCR_old || digest)``. Which events are
extended and where the chain starts (PFP spec 1.05 sections 3.3.4 and 10.4.5.3):

* ``EV_NO_ACTION`` events are never extended (Spec ID, StartupLocality, SP800-155 reference
  manifest events, Windows' trailing event). ``tpm2_eventlog`` 5.4 extends the non-Spec-ID ones
  into PCR 0; it is wrong there.
* Events with PCR index 0xFFFFFFFF (Windows) are never extended but are kept in the log.
* PCR 0 starts at ``00..00 || locality``: the locality of a ``StartupLocality`` EV_NO_ACTION
  event that precedes every PCR 0 measurement (3 when the S-CRTM ran at locality 3), else 4
  when the first PCR 0 measurement is an ``EV_EFI_HCRTM_EVENT`` (H-CRTM, _TPM_Hash_Start at
  locality 4), else 0. ``tpm2_eventlog`` 5.4 ignores both.
* PCRs 17..22 (DRTM) reset to all ``0xFF``; every other PCR (and every TDX RTMR) to all zero.

Results of :func:`replay` are still untrusted numbers; only :func:`verify_replay` compares them
with quoted (signature-checked) values and returns the events that are thereby vouched for.

Trust decisions and their reasons: ``docs/design/eventlog-trust.md``.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Final

from services.tpm.algorithms import alg_by_name, hash_constructor
from services.tpm.errors import MalformedLog, ReplayMismatch, Unsupported
from services.tpm.eventlog import (
    PCR_NOT_EXTENDED,
    Event,
    EventLog,
    EventType,
    startup_locality_of,
)
from services.tpm.memo import Memo
from services.tpm.quirks import QUIRK_IDS, Layer, accepted, of_layer, quirk_by_id

__all__ = [
    "ALWAYS_CHECKED_PCRS",
    "PcrBanks",
    "ReplayResult",
    "events_of_pcr",
    "initial_pcr_value",
    "replay",
    "startup_locality",
    "verify_replay",
]

_REPLAY_QUIRKS: Final = of_layer(Layer.REPLAY)
"""Tried in table order after a plain replay failed (:mod:`services.tpm.quirks`)."""

PcrBanks = Mapping[str, Mapping[int, bytes]]
"""Bank name -> {PCR index -> value}."""

ALWAYS_CHECKED_PCRS: frozenset[int] = frozenset(range(8))
"""Firmware PCRs a TCG boot log must always account for: a verifier requires them in every
quote (``services.verifier.policy.coverage``); :func:`verify_replay` checks every quoted PCR."""

_ALLOWED_LOCALITIES = frozenset({0, 3, 4})
_NO_ACTION = int(EventType.EV_NO_ACTION)


@dataclass(frozen=True)
class ReplayResult:
    """A log that reproduced the quoted PCRs. Only :func:`verify_replay` constructs one."""

    pcrs: PcrBanks
    """The replayed values of the checked PCRs, per compared bank (equal to the quote)."""
    checked_pcrs: frozenset[int]
    """PCR indices compared in every bank of :attr:`banks`."""
    banks: tuple[str, ...]
    """Quoted banks that were replayed and compared."""
    unverified_banks: tuple[str, ...]
    """Always empty: a quoted bank the log does not carry fails the replay (kept so readers of
    older results see the field)."""
    applied_quirks: tuple[str, ...]
    """Ids of the :mod:`~services.tpm.quirks` needed to match (empty for a plain replay)."""
    startup_locality: int
    verified_events: tuple[Event, ...]
    """Logged events extended into a checked PCR: their digests are vouched for by the quote.
    Their ``event_type`` and ``data`` still are not (check data against digests before use)."""
    external_events: tuple[Event, ...] = ()
    """Logged events that extend a PCR the caller said another log accounts for (``external``):
    never verified by this replay, never interpreted; a verifier refuses a log that has any."""


def initial_pcr_value(pcr: int, size: int, locality: int = 0) -> bytes:
    """The value PCR ``pcr`` of a ``size``-byte bank holds before the first extend."""
    if 17 <= pcr <= 22:
        return b"\xff" * size
    if pcr == 0 and locality:
        return bytes(size - 1) + bytes((locality,))
    return bytes(size)


def startup_locality(log: EventLog) -> int:
    """Locality PCR 0 starts from (0, 3 or 4), per the rules in the module docstring.

    Raises ``MalformedLog`` for a StartupLocality event after a PCR 0 measurement, a second
    one, or a locality other than 0, 3 or 4.
    """
    found: int | None = None
    for ev in log.events:
        if ev.pcr != 0:
            continue
        loc = startup_locality_of(ev)
        if loc is not None:
            if found is not None:
                raise MalformedLog("second StartupLocality event", offset=ev.offset,
                                   seq=ev.seq, field="event")
            if loc not in _ALLOWED_LOCALITIES:
                raise MalformedLog(f"StartupLocality {loc} is not 0, 3 or 4",
                                   offset=ev.data_offset + 16, seq=ev.seq, field="StartupLocality")
            found = loc
        elif ev.extends:
            if found is not None:
                return found
            return 4 if ev.event_type == EventType.EV_EFI_HCRTM_EVENT else 0
    return found if found is not None else 0


def _check_late_startup_locality(log: EventLog) -> None:
    seen_pcr0 = False
    for ev in log.events:
        if ev.pcr != 0:
            continue
        if ev.event_type != _NO_ACTION:
            seen_pcr0 = True
        elif seen_pcr0 and startup_locality_of(ev) is not None:
            raise MalformedLog("StartupLocality event after a PCR 0 measurement",
                               offset=ev.offset, seq=ev.seq, field="event")


def _replay_bank(
    events: Sequence[Event], bank: str, locality: int, memo: Memo | None
) -> tuple[dict[int, bytes], dict[int, int]]:
    """Replay one bank. Returns (values, unreplayable) where ``unreplayable`` maps each PCR
    with an event lacking a ``bank`` digest to the first such event's seq (``memo``: see
    :func:`verify_replay`)."""
    alg = alg_by_name(bank)
    if alg is None:
        raise Unsupported(f"cannot replay bank {bank!r}: unknown hash algorithm")
    new = hash_constructor(bank)
    size = alg.digest_size
    state: dict[int, bytes] = {}
    missing: dict[int, int] = {}
    get = state.get
    if memo is None:
        for ev in events:
            pcr = ev.pcr
            digest = ev.digests.get(bank)
            if digest is None:
                missing.setdefault(pcr, ev.seq)
                continue
            prev = get(pcr)
            if prev is None:
                prev = initial_pcr_value(pcr, size, locality)
            state[pcr] = new(prev + digest).digest()
        return state, missing
    table = memo.extends(bank)
    remembered, remember = table.get, table.put
    weight = 2 * size
    for ev in events:
        pcr = ev.pcr
        digest = ev.digests.get(bank)
        if digest is None:
            missing.setdefault(pcr, ev.seq)
            continue
        prev = get(pcr)
        if prev is None:
            prev = initial_pcr_value(pcr, size, locality)
        step = (prev, digest)
        value = remembered(step)
        if value is None:
            value = new(prev + digest).digest()
            remember(step, value, weight)
        state[pcr] = value
    return state, missing


def _extending(events: Iterable[Event]) -> list[Event]:
    """Events replay extends (same rule as ``Event.extends``, inlined: this is the hot path)."""
    return [ev for ev in events if ev.event_type != _NO_ACTION and ev.pcr != PCR_NOT_EXTENDED]


def replay(
    log: EventLog,
    *,
    quirks: Collection[str] = (),
    banks: Collection[str] | None = None,
    memo: Memo | None = None,
) -> dict[str, dict[int, bytes]]:
    """Replay ``log`` into PCR values: bank -> {PCR: value}, for the PCRs the log extends.

    UNTRUSTED numbers. ``quirks`` are applied unconditionally (for inspection; verification
    uses :func:`verify_replay`). By default every bank the log declares and hostgate can hash
    is replayed; a PCR with an event lacking that bank's digest is left out of that bank.
    Naming an unknown bank in ``banks`` raises ``Unsupported``. ``memo``: remembered extends
    (see :func:`verify_replay`).
    """
    for quirk_id in quirks:
        quirk = quirk_by_id(quirk_id)
        if quirk is None or quirk.apply is None:
            raise Unsupported(f"unknown replay quirk id {quirk_id!r}")
        log = quirk.apply(log)
    _check_late_startup_locality(log)
    locality = startup_locality(log)
    events = _extending(log.events)
    wanted = list(log.banks) if banks is None else list(banks)
    out: dict[str, dict[int, bytes]] = {}
    for bank in wanted:
        if banks is None and alg_by_name(bank) is None:
            continue
        if bank not in log.banks:
            raise Unsupported(f"the log does not carry bank {bank!r} (it has {log.banks})")
        state, missing = _replay_bank(events, bank, locality, memo)
        values = {pcr: v for pcr, v in sorted(state.items()) if pcr not in missing}
        if values:
            out[bank] = values
    return out


def events_of_pcr(log: EventLog, pcr: int) -> tuple[Event, ...]:
    """The events of ``log`` that extend ``pcr`` (untrusted unless the log was verified)."""
    return tuple(ev for ev in log.events if ev.pcr == pcr and ev.extends)


@dataclass(frozen=True, slots=True)
class _Diff:
    bank: str
    pcr: int
    replayed: bytes | None
    quoted: bytes
    missing_seq: int | None


def _compare(
    events: Sequence[Event],
    quoted: PcrBanks,
    banks: Sequence[str],
    pcrs: frozenset[int],
    locality: int,
    memo: Memo | None,
) -> tuple[list[_Diff], dict[str, dict[int, bytes]]]:
    """Replay the extending ``events`` in ``banks`` and compare ``pcrs`` with ``quoted``."""
    diffs: list[_Diff] = []
    values: dict[str, dict[int, bytes]] = {}
    for bank in banks:
        size = alg_by_name(bank).digest_size  # type: ignore[union-attr]  # checked by caller
        state, missing = _replay_bank(events, bank, locality, memo)
        values[bank] = {}
        for pcr in sorted(pcrs):
            want = quoted[bank].get(pcr)
            if want is None:
                continue
            if pcr in missing:
                diffs.append(_Diff(bank, pcr, None, want, missing[pcr]))
                continue
            got = state.get(pcr)
            if got is None:
                got = initial_pcr_value(pcr, size, locality)
            values[bank][pcr] = got
            if got != want:
                diffs.append(_Diff(bank, pcr, got, want, None))
    return diffs, values


def _mismatch(log: EventLog, diffs: list[_Diff], banks: Sequence[str]) -> ReplayMismatch:
    order = {b: i for i, b in enumerate(banks)}
    first = min(diffs, key=lambda d: (d.pcr, order[d.bank]))
    seqs = [ev.seq for ev in events_of_pcr(log, first.pcr)]
    invalid: dict[str, list[int]] = {}
    for d in diffs:
        invalid.setdefault(d.bank, []).append(d.pcr)
    shown = ", ".join(map(str, seqs[:20])) + (f", ... ({len(seqs)} events)" if len(seqs) > 20
                                              else "")
    if first.replayed is None:
        what = f"the log has no {first.bank} digest for event {first.missing_seq}"
    else:
        what = f"log replays to {first.replayed.hex()}, quote has {first.quoted.hex()}"
    msg = (f"PCR {first.pcr} ({first.bank}) does not match the quote: {what}; "
           f"built by events [{shown}]")
    others = {b: [p for p in ps if (b, p) != (first.bank, first.pcr)] for b, ps in invalid.items()}
    rest = "; ".join(f"{b} {ps}" for b, ps in others.items() if ps)
    if rest:
        msg += f"; also differ: {rest}"
    return ReplayMismatch(msg, invalid_pcrs=invalid, first=(first.bank, first.pcr),
                          event_seqs=seqs)


def _normalise(quoted: Mapping[str, Mapping[int, bytes]]) -> dict[str, dict[int, bytes]]:
    return {bank: {int(p): bytes(v) for p, v in values.items()} for bank, values in quoted.items()}


def verify_replay(
    log: EventLog,
    quoted: Mapping[str, Mapping[int, bytes]],
    *,
    allowed_quirks: Collection[str] = (),
    pcrs: Collection[int] | None = None,
    external: Collection[int] = (),
    memo: Memo | None = None,
) -> ReplayResult:
    """Replay ``log`` and require it to reproduce the ``quoted`` PCR values.

    ``quoted`` must come from a verified quote. Checked are ``pcrs`` if given, else **every
    quoted PCR** except those in ``external`` (extended by another log, e.g. IMA's PCR 10, which
    the caller checks against that log): a quoted PCR the log has no event for must hold its reset
    value, so nothing extended outside the log goes unnoticed. **Every quoted bank** must be
    carried by the log and is compared: a log that lacks a quoted bank raises ``ReplayMismatch``
    (a host cannot have a bank judged by the other one).

    On mismatch, each allowed quirk whose ``affected_pcrs`` cover every differing PCR is tried,
    in table order, on a copy of the log; the first that makes everything match is recorded in
    ``applied_quirks``. Otherwise raises ``ReplayMismatch`` naming the first differing PCR (lowest
    index; banks in quoted order) and the events that built it. Unknown quirk ids or quoted
    banks hostgate cannot hash raise ``Unsupported``.

    With ``memo``, PCR extends are looked up in and remembered by ``memo.extends(bank)``
    ((previous value, digest) -> H(previous || digest), weight: the two inputs' length). A
    fleet replays the same measurements in the same order on every host, so most extends
    recur byte for byte and a hit costs a dict lookup instead of a hash (4-5x less).
    """
    for quirk_id in allowed_quirks:
        if quirk_id not in QUIRK_IDS:
            raise Unsupported(f"unknown quirk id {quirk_id!r} (known: {sorted(QUIRK_IDS)})")
    wanted = {bank: values for bank, values in _normalise(quoted).items() if values}
    banks = list(wanted)
    missing_banks = [b for b in wanted if b not in log.banks]
    if not banks:
        raise ReplayMismatch(f"no PCR value to replay against (the log has banks "
                             f"{', '.join(log.banks) or 'none'})", invalid_pcrs={},
                             first=("", -1))
    if missing_banks:
        invalid = {b: sorted(wanted[b]) for b in missing_banks}
        first_bank = missing_banks[0]
        raise ReplayMismatch(
            f"the quote covers bank(s) {', '.join(missing_banks)} that the log does not carry "
            f"(it has {', '.join(log.banks) or 'none'}): every quoted bank must be replayed "
            "from the log",
            invalid_pcrs=invalid, first=(first_bank, min(wanted[first_bank])),
        )
    for bank in banks:
        if alg_by_name(bank) is None:
            raise Unsupported(f"cannot replay quoted bank {bank!r}: unknown hash algorithm")
    _check_late_startup_locality(log)
    locality = startup_locality(log)
    extending = _extending(log.events)
    outside = frozenset(external)
    if pcrs is None:
        # every quoted (bank, PCR) is compared; only a PCR compared in every quoted bank is
        # "checked", so no claim rests on a digest of a bank that was not replayed for it
        compared = frozenset(p for values in wanted.values() for p in values) - outside
        checked = frozenset.intersection(*(frozenset(v) for v in wanted.values())) - outside
    else:
        compared = checked = frozenset(pcrs) - outside
    diffs, values = _compare(extending, wanted, banks, compared, locality, memo)
    applied: tuple[str, ...] = ()
    if diffs:
        bad = {d.pcr for d in diffs}
        for quirk in _REPLAY_QUIRKS:
            if not accepted(quirk, allowed_quirks) or not bad <= quirk.affected_pcrs:
                continue
            assert quirk.apply is not None
            q_diffs, q_values = _compare(_extending(quirk.apply(log).events), wanted, banks,
                                         compared, locality, memo)
            if not q_diffs:
                applied, values = (quirk.id,), q_values
                break
        else:
            raise _mismatch(log, diffs, banks)
    verified = tuple(ev for ev in extending if ev.pcr in checked)
    return ReplayResult(
        pcrs=values,
        checked_pcrs=checked,
        banks=tuple(banks),
        unverified_banks=(),
        applied_quirks=applied,
        startup_locality=locality,
        verified_events=verified,
        external_events=tuple(ev for ev in extending if ev.pcr in outside),
    )
