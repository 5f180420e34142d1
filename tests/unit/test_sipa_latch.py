"""Windows SIPA decoding and latch semantics on hand-built WBCL blocks.

Provenance: blocks are built here from the ``TCG_PCClientTaggedEvent`` / SIPA layouts cited in
``services/tpm/sipa.py`` (type u32, size u32, payload; containers have class bits 0x00010000).
"""

from __future__ import annotations

import struct

import pytest

from services.tpm import sipa
from services.tpm.errors import LimitExceeded, MalformedEventData

BASE = 500
SEQ = 3


def ev(etype: int, payload: bytes) -> bytes:
    return struct.pack("<II", etype, len(payload)) + payload


def boundary(*children: bytes) -> bytes:
    return ev(sipa.TRUST_BOUNDARY, b"".join(children))


def fold(*blocks: bytes) -> sipa.WindowsBootConfig:
    return sipa.fold_windows_config(
        (i, sipa.decode_sipa_events(b, base=BASE, seq=i)) for i, b in enumerate(blocks)
    )


def test_nothing_measured_is_unknown() -> None:
    w = fold(boundary())
    assert w.boot_debugging is None and w.code_integrity is None and w.dep is None


def test_debug_flag_latches_on() -> None:
    w = fold(
        boundary(ev(sipa.BOOT_DEBUGGING, b"\x00"), ev(sipa.OS_KERNEL_DEBUG, b"\x00")),
        boundary(ev(sipa.BOOT_DEBUGGING, b"\x01")),
        boundary(ev(sipa.BOOT_DEBUGGING, b"\x00")),
    )
    assert w.boot_debugging is True and w.kernel_debugger is False


def test_code_integrity_latches_off() -> None:
    w = fold(
        boundary(ev(sipa.CODE_INTEGRITY, b"\x01")),
        boundary(ev(sipa.CODE_INTEGRITY, b"\x00")),
        boundary(ev(sipa.CODE_INTEGRITY, b"\x01")),
    )
    assert w.code_integrity is False
    assert fold(boundary(ev(sipa.CODE_INTEGRITY, b"\x01"))).code_integrity is True


@pytest.mark.parametrize(
    ("values", "dep"), [((0,), True), ((3, 1), True), ((0, 2), False), ((2, 3), False)]
)
def test_dep_policy(values: tuple[int, ...], dep: bool) -> None:
    blocks = [boundary(ev(sipa.DATA_EXECUTION_PREVENTION, struct.pack("<Q", v))) for v in values]
    w = fold(*blocks)
    assert w.dep is dep and w.dep_policy == values


def test_test_signing_flight_signing_hypervisor_debug() -> None:
    w = fold(
        boundary(
            ev(sipa.TEST_SIGNING, b"\x01"),
            ev(sipa.FLIGHT_SIGNING, b"\x00"),
            ev(sipa.HYPERVISOR_DEBUG, b"\x01"),
            ev(sipa.HYPERVISOR_LAUNCH_TYPE, struct.pack("<Q", 1)),
            ev(sipa.SAFE_MODE, b"\x00"),
            ev(sipa.WIN_PE, b"\x00"),
        )
    )
    assert (w.test_signing, w.flight_signing, w.hypervisor_debug) == (True, False, True)
    assert w.hypervisor_launch_type == (1,) and w.safe_mode is False and w.win_pe is False


def test_si_policy_and_loaded_module() -> None:
    name = "Microsoft Windows Driver Policy".encode("utf-16-le")
    digest = bytes(range(32))
    si = struct.pack("<QHHI", 0x0A0000000000C, len(name), 0x800C, len(digest)) + name + digest
    module = ev(
        sipa.LOADED_MODULE_AGGREGATION,
        ev(sipa.FILE_PATH, "\\Windows\\system32\\winload.efi\x00".encode("utf-16-le"))
        + ev(sipa.HASH_ALGORITHM_ID, struct.pack("<I", 0x800C))
        + ev(sipa.AUTHENTICODE_HASH, b"\x11" * 32)
        + ev(sipa.IMAGE_VALIDATED, b"\x01")
        + ev(sipa.AUTHORITY_PUBLISHER, "Microsoft Windows\x00".encode("utf-16-le")),
    )
    w = fold(boundary(ev(sipa.SI_POLICY, si), module))
    (policy,) = w.si_policies
    assert (policy.name, policy.version, policy.hash_algorithm, policy.digest) == (
        "Microsoft Windows Driver Policy", 0x0A0000000000C, "sha256", digest
    )
    (m,) = w.loaded_modules
    assert m.file_path == "\\Windows\\system32\\winload.efi" and m.hash_algorithm == "sha256"
    assert m.authenticode_hash == b"\x11" * 32 and m.image_validated is True
    assert m.authority_publisher == "Microsoft Windows"


def test_unknown_leaf_types_are_kept_not_fatal() -> None:
    w = fold(boundary(ev(0x000B0001, b"\x00" * 5), ev(sipa.TEST_SIGNING, b"\x00")))
    assert w.unknown_types == (0x000B0001,) and w.test_signing is False


def test_child_overrunning_container_names_offset() -> None:
    child = struct.pack("<II", sipa.BOOT_DEBUGGING, 50) + b"\x00"
    block = boundary(child)
    with pytest.raises(MalformedEventData) as exc:
        sipa.decode_sipa_events(block, base=BASE, seq=SEQ)
    assert exc.value.offset == BASE + 8 + 4 and exc.value.seq == SEQ
    assert exc.value.field == "SIPAEventSize"


def test_bad_boolean_payload_size() -> None:
    with pytest.raises(MalformedEventData) as exc:
        fold(boundary(ev(sipa.TEST_SIGNING, b"")))
    assert exc.value.offset == BASE + 16


def nested(depth: int) -> bytes:
    block = ev(sipa.TEST_SIGNING, b"\x01")
    for _ in range(depth):
        block = ev(sipa.TRUST_BOUNDARY, block)
    return block


def test_nesting_at_the_bound_decodes() -> None:
    assert fold(nested(sipa.MAX_SIPA_DEPTH)).test_signing is True


def test_nesting_beyond_the_bound_is_stopped() -> None:
    with pytest.raises(LimitExceeded) as exc:
        sipa.decode_sipa_events(nested(sipa.MAX_SIPA_DEPTH + 1), base=BASE, seq=SEQ)
    assert exc.value.field == "depth"
    assert exc.value.offset == BASE + 8 * (sipa.MAX_SIPA_DEPTH + 1)


def test_deep_hostile_nesting_does_not_recurse_unbounded() -> None:
    with pytest.raises(LimitExceeded):
        sipa.decode_sipa_events(nested(5000))


def test_event_count_is_bounded() -> None:
    flat = ev(sipa.TEST_SIGNING, b"\x00") * (sipa.MAX_SIPA_EVENTS + 1)
    with pytest.raises(LimitExceeded):
        sipa.decode_sipa_events(flat)


def test_tagged_event_size_must_match() -> None:
    data = struct.pack("<II", 0x8F3B22EC, 20) + b"Linux initrd\x00"
    with pytest.raises(MalformedEventData) as exc:
        sipa.decode_tagged_event(data, base=BASE, seq=SEQ)
    assert exc.value.offset == BASE + 4 and exc.value.field == "taggedEventDataSize"
    ok = sipa.decode_tagged_event(struct.pack("<II", 7, 2) + b"ab", base=BASE)
    assert (ok.event_id, ok.data, ok.data_offset) == (7, b"ab", BASE + 8)
