"""Data-to-digest binding and fail-closed rules, on real corpus events altered by hand.

The events come from real logs (``$HOSTGATE_CORPUS``); each test changes one field the way an
attacker editing the log would (the digests stay those the TPM was extended with).
"""

from __future__ import annotations

import hashlib
from functools import cache

import pytest

from services.tpm.bindings import (
    QUIRK_BOOT_VARIABLE_DATA_ONLY,
    QUIRK_SHIM_AUTHORITY_EXTRA_BYTE,
    check_binding,
    require_binding,
)
from services.tpm.claims import REASONS, extract_claims
from services.tpm.errors import DigestMismatch
from services.tpm.eventlog import Event, EventLog, EventType, parse_event_log
from tests.conftest import corpus_path

CORPUS = corpus_path()


@cache
def log(prefix: str) -> EventLog:
    (path,) = (CORPUS / "logs").glob(f"{prefix}__*")
    return parse_event_log(path.read_bytes())


def first(prefix: str, etype: int, pcr: int | None = None, name: bytes = b"") -> Event:
    return next(
        e for e in log(prefix).events
        if e.event_type == etype and (pcr is None or e.pcr == pcr) and name in e.data
    )


def claims_with(prefix: str, replaced: Event) -> list[tuple[str, bool]]:
    events = [replaced if e.seq == replaced.seq else e for e in log(prefix).events]
    c = extract_claims(events, banks=log(prefix).banks)
    return [(a.reason, a.fatal) for a in c.anomalies if a.seq == replaced.seq]


def test_secure_boot_variable_binds() -> None:
    ev = first("A40", EventType.EV_EFI_VARIABLE_DRIVER_CONFIG, 7, "SecureBoot".encode("utf-16-le"))
    assert check_binding(ev).status == "bound"


def test_flipping_secure_boot_byte_is_a_fatal_mismatch() -> None:
    ev = first("A39", EventType.EV_EFI_VARIABLE_DRIVER_CONFIG, 7, "SecureBoot".encode("utf-16-le"))
    forged = ev._replace(data=ev.data[:-1] + b"\x01")
    assert check_binding(forged).status == "mismatch"
    assert claims_with("A39", forged) == [("tpm.binding.digest_mismatch", True)]
    events = [forged if e.seq == ev.seq else e for e in log("A39").events]
    assert extract_claims(events, banks=log("A39").banks).secure_boot is None  # never read
    with pytest.raises(DigestMismatch) as exc:
        require_binding(forged)
    assert exc.value.seq == ev.seq and exc.value.offset == ev.data_offset


def test_forged_grub_kernel_cmdline_is_caught() -> None:
    ev = first("A31", EventType.EV_IPL, 8, b"kernel_cmdline: ")
    assert check_binding(ev).status == "bound"
    forged = ev._replace(data=ev.data.replace(b" ro", b" rw init=/bin/sh", 1))
    assert claims_with("A31", forged) == [("tpm.binding.digest_mismatch", True)]


def test_changed_event_type_in_pcr7_fails_closed() -> None:
    ev = first("A40", EventType.EV_EFI_VARIABLE_DRIVER_CONFIG, 7, "db".encode("utf-16-le"))
    assert claims_with("A40", ev._replace(event_type=0x0000DEAD)) == [
        ("tpm.event.unknown_type", True)
    ]
    assert claims_with("A40", ev._replace(event_type=EventType.EV_POST_CODE)) == [
        ("tpm.event.unexpected_type", True)
    ]


def test_unknown_type_is_fatal_in_every_pcr() -> None:
    # real: A42 (Intel server) logs an event of type 0x40e in PCR 0; a policy may accept that
    # one (PCR, type) pair explicitly (evidence.allowedEventTypes), nothing accepts it silently
    c = extract_claims(log("A42").events, banks=log("A42").banks)
    assert [(a.reason, a.pcr, a.fatal) for a in c.anomalies] == [("tpm.event.unknown_type", 0, True)]


@pytest.mark.parametrize(("pcr", "event_type"), [
    (4, EventType.EV_POST_CODE),  # code hidden as a POST code in the boot-loader PCR
    (8, EventType.EV_EFI_VARIABLE_DRIVER_CONFIG),  # a variable where GRUB measures strings
    (2, EventType.EV_EFI_BOOT_SERVICES_APPLICATION),  # an application among option ROMs
    (10, EventType.EV_IPL),  # IMA's PCR: no TCG-log event belongs there
    (16, EventType.EV_EFI_ACTION),  # the debug PCR
])
def test_type_outside_its_pcr_row_is_fatal(pcr: int, event_type: int) -> None:
    base = first("A31", EventType.EV_EFI_ACTION, 4, b"Calling")
    moved = base._replace(pcr=pcr, event_type=event_type)
    assert claims_with("A31", moved) == [("tpm.event.unexpected_type", True)]


def test_opaque_code_in_pcr4_stays_in_the_boot_chain() -> None:
    """An EFI application logged as EV_IPL (its image digest cannot be checked against the
    data) is still code that ran in PCR 4: it is listed with the boot applications."""
    lg = log("A31")
    app = first("A31", EventType.EV_EFI_BOOT_SERVICES_APPLICATION, 4, b"")
    relabelled = app._replace(event_type=EventType.EV_IPL, data=b"harmless\x00")
    events = [relabelled if e.seq == app.seq else e for e in lg.events]
    c = extract_claims(events, banks=lg.banks)
    listed = [a for a in c.boot_applications if a.seq == app.seq]
    assert len(listed) == 1 and listed[0].kind == "opaque" and listed[0].pcr == 4
    assert listed[0].digests == dict(app.digests)


def test_undecodable_data_in_pcr7_fails_closed_elsewhere_not() -> None:
    ev = first("A40", EventType.EV_EFI_VARIABLE_DRIVER_CONFIG, 7, "KEK".encode("utf-16-le"))
    short = ev.data[:40]
    digests = {b: hashlib.new(b, short).digest() for b in ev.digests}
    broken = ev._replace(data=short, digests=digests)
    assert claims_with("A40", broken) == [("tpm.event.undecodable", True)]
    boot = first("A32", EventType.EV_EFI_VARIABLE_BOOT, 1, "Boot0000".encode("utf-16-le"))
    cut = boot.data[:-30]
    broken_boot = boot._replace(
        data=cut, digests={b: hashlib.new(b, cut).digest() for b in boot.digests}
    )
    assert claims_with("A32", broken_boot) == [("tpm.event.undecodable", False)]


def test_error_separator_is_fatal() -> None:
    ev = first("A31", EventType.EV_SEPARATOR, 4)
    err = b"\x01\x00\x00\x00"
    forged = ev._replace(data=err, digests={b: hashlib.new(b, err).digest() for b in ev.digests})
    assert claims_with("A31", forged) == [("tpm.separator.error", True)]


def test_quirk_boot_variable_data_only() -> None:
    ev = first("A31", EventType.EV_EFI_VARIABLE_BOOT, 1, "BootOrder".encode("utf-16-le"))
    result = check_binding(ev)
    assert (result.status, result.quirk) == ("quirk", QUIRK_BOOT_VARIABLE_DATA_ONLY)
    require_binding(ev)  # a "reported" quirk: used where it applies, named in the result
    other = ev.data[:-2] + bytes([ev.data[-2] ^ 1]) + ev.data[-1:]
    with pytest.raises(DigestMismatch):  # the quirk's framing must still hash to the digest
        require_binding(ev._replace(data=other))


def test_quirk_shim_authority_extra_byte() -> None:
    ev = first("S10", EventType.EV_EFI_VARIABLE_AUTHORITY, 7, "Shim".encode("utf-16-le"))
    result = check_binding(ev)
    assert (result.status, result.quirk) == ("quirk", QUIRK_SHIM_AUTHORITY_EXTRA_BYTE)


def test_image_loads_are_not_bound() -> None:
    ev = first("A31", EventType.EV_EFI_BOOT_SERVICES_APPLICATION)
    assert check_binding(ev).status == "not_bound"


def test_reason_ids_are_dotted_and_listed() -> None:
    assert all(r.startswith("tpm.") and r.count(".") == 2 for r in REASONS)
