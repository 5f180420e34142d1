"""Hypothesis fuzzing of every event-data decoder and of claims extraction.

Inputs: random bytes, and real event data from the corpus (``$HOSTGATE_CORPUS``) mutated by
byte flips, truncation and insertion. The property: nothing but ``services.tpm.errors``
exceptions escapes a decoder, and :func:`extract_claims` never raises at all (bad data becomes
anomalies). Bounded example counts, no deadline (the machine is shared).
"""

from __future__ import annotations

import contextlib
import struct
from collections.abc import Callable
from functools import cache
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from services.tpm import sipa, uefi
from services.tpm.bindings import check_binding
from services.tpm.claims import extract_claims
from services.tpm.devicepath import decode_device_path
from services.tpm.errors import LimitExceeded, TpmError
from services.tpm.eventlog import Event, EventType, parse_event_log
from services.tpm.ipl import decode_ipl
from tests.conftest import corpus_path

FUZZ = settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow], derandomize=True
)
LOGS = ("A31", "A39", "A40", "A30", "W03", "W04", "A32", "A51", "C05")


@cache
def corpus_events() -> tuple[Event, ...]:
    out: list[Event] = []
    for prefix in LOGS:
        (path,) = (corpus_path() / "logs").glob(f"{prefix}__*")
        out.extend(parse_event_log(path.read_bytes()).events)
    return tuple(out)


def samples(*types: int) -> list[bytes]:
    found = [e.data for e in corpus_events() if e.event_type in types and e.data]
    assert found, f"no corpus sample for {types}"
    return found[:40]


@st.composite
def mutated(draw: st.DrawFn, pool: list[bytes]) -> bytes:
    data = bytearray(draw(st.sampled_from(pool)))
    for _ in range(draw(st.integers(1, 4))):
        op = draw(st.sampled_from(["flip", "cut", "insert", "u32"]))
        pos = draw(st.integers(0, max(0, len(data) - 1)))
        if op == "flip" and data:
            data[pos] ^= 1 << draw(st.integers(0, 7))
        elif op == "cut":
            del data[pos:]
        elif op == "insert":
            data[pos:pos] = draw(st.binary(min_size=1, max_size=8))
        elif op == "u32" and len(data) >= pos + 4:
            data[pos : pos + 4] = struct.pack("<I", draw(st.sampled_from([0, 1, 0x7FFFFFFF, 0xFFFFFFFF])))
    return bytes(data)


def only_tpm_errors(fn: Callable[[bytes], Any], data: bytes) -> None:
    try:
        fn(data)
    except TpmError as exc:
        if not isinstance(exc, LimitExceeded):
            assert getattr(exc, "offset", 0) >= 0


DECODERS: dict[str, tuple[Callable[[bytes], Any], tuple[int, ...]]] = {
    "variable": (
        lambda d: uefi.decode_uefi_variable_data(d, base=9, seq=1),
        (EventType.EV_EFI_VARIABLE_DRIVER_CONFIG, EventType.EV_EFI_VARIABLE_BOOT),
    ),
    "signature_lists": (
        lambda d: uefi.decode_signature_lists(
            uefi.decode_uefi_variable_data(d, allow_trailing=True).variable_data
        ),
        (EventType.EV_EFI_VARIABLE_DRIVER_CONFIG,),
    ),
    "signature_data": (
        lambda d: uefi.decode_signature_data(
            uefi.decode_uefi_variable_data(d, allow_trailing=True).variable_data
        ),
        (EventType.EV_EFI_VARIABLE_AUTHORITY,),
    ),
    "load_option": (
        lambda d: uefi.decode_load_option(uefi.decode_uefi_variable_data(d).variable_data),
        (EventType.EV_EFI_VARIABLE_BOOT,),
    ),
    "image_load": (
        lambda d: uefi.decode_image_load_event(d),
        (EventType.EV_EFI_BOOT_SERVICES_APPLICATION, EventType.EV_EFI_BOOT_SERVICES_DRIVER),
    ),
    "handoff": (lambda d: uefi.decode_handoff_tables(d), (EventType.EV_EFI_HANDOFF_TABLES,)),
    "handoff2": (lambda d: uefi.decode_handoff_tables2(d), (EventType.EV_EFI_HANDOFF_TABLES2,)),
    "blob": (lambda d: uefi.decode_firmware_blob(d), (EventType.EV_EFI_PLATFORM_FIRMWARE_BLOB,)),
    "blob2": (lambda d: uefi.decode_firmware_blob2(d), (EventType.EV_EFI_PLATFORM_FIRMWARE_BLOB2,)),
    "sipa": (
        lambda d: sipa.fold_windows_config([(1, sipa.decode_sipa_events(d, base=5, seq=1))]),
        (EventType.EV_EVENT_TAG,),
    ),
    "tagged": (lambda d: sipa.decode_tagged_event(d), (EventType.EV_EVENT_TAG,)),
    "ipl": (lambda d: decode_ipl(d, 8), (EventType.EV_IPL,)),
    "crtm": (lambda d: uefi.decode_utf16_string(d), (EventType.EV_S_CRTM_VERSION,)),
    "boot_order": (lambda d: uefi.decode_boot_order(d), (EventType.EV_EFI_VARIABLE_BOOT,)),
}


def _random_test(name: str) -> Callable[[], None]:
    fn = DECODERS[name][0]

    @FUZZ
    @given(st.binary(max_size=512))
    def test(data: bytes) -> None:
        only_tpm_errors(fn, data)

    return test


def _mutated_test(name: str) -> Callable[[], None]:
    fn, types = DECODERS[name]

    @FUZZ
    @given(st.data())
    def test(data: st.DataObject) -> None:
        only_tpm_errors(fn, data.draw(mutated(samples(*types))))

    return test


for _name in DECODERS:
    globals()[f"test_random_{_name}"] = _random_test(_name)
    globals()[f"test_mutated_{_name}"] = _mutated_test(_name)


@FUZZ
@given(st.binary(max_size=512))
def test_random_device_path(data: bytes) -> None:
    only_tpm_errors(lambda d: decode_device_path(d, multiple=True).text, data)


@settings(max_examples=60, deadline=None, derandomize=True)
@given(st.data())
def test_extract_claims_never_raises_on_mutated_events(data: st.DataObject) -> None:
    events = list(corpus_events()[:400])
    for _ in range(data.draw(st.integers(1, 5))):
        i = data.draw(st.integers(0, len(events) - 1))
        ev = events[i]
        new_data = data.draw(mutated([ev.data or b"\x00"]))
        new_type = data.draw(st.sampled_from([ev.event_type, ev.event_type, *map(int, EventType)]))
        events[i] = ev._replace(data=new_data, event_type=new_type)
    claims = extract_claims(events, banks=("sha1", "sha256"))
    claims.to_json_dict()
    for ev in events:
        with contextlib.suppress(TpmError):
            check_binding(ev)


def test_random_sipa_nesting_is_bounded() -> None:
    block = struct.pack("<II", sipa.TEST_SIGNING, 1) + b"\x01"
    for _ in range(200):
        block = struct.pack("<II", sipa.TRUST_BOUNDARY, len(block)) + block
    try:
        sipa.decode_sipa_events(block)
    except LimitExceeded as exc:
        assert exc.field == "depth"
    else:
        raise AssertionError("200-deep SIPA nesting was accepted")
