"""Windows boot claims against the public Windows logs of ``../shared/corpus`` (issue 19, item 3).

For every Windows log of the manifest (category ``windows-wbcl``): one module record per
Authenticode hash, with every measurement site (PCR, event seq) of that hash and the path and
signer wherever the log measured one; checked against a walk of the raw SIPA data that shares
only the container decoder with extraction.

Facts go-attestation's own tests assert, where we hold the log. ``attest/secureboot_test.go``
``TestSecureBootOptionRom`` reads ``testdata/option_rom_eventlog`` (our W04): its SHA-1 PCRs
0-7 verify, ``len(PostSeparatorAuthority) == 2``, and ``DriverLoadSourceHints ==
[PciMmioSource]`` (one driver loaded from a PCI option ROM, which its device path shows as an
``Offset`` node under ``PciRoot``). ``attest/win_events_test.go`` ``TestParseWinEvents`` and
``secureboot_test.go`` ``TestSecureBoot`` read ``testdata/windows_gcp_shielded_vm.json``,
which the corpus does not hold: its module, ELAM, boot-count and BitLocker figures cannot be
checked here. That test keys loaded modules by Authenticode hash (a map), which is the shape
checked below for every log we hold.
"""

from __future__ import annotations

from collections import defaultdict

import pytest

from services.tpm import sipa
from services.tpm.eventlog import EventType
from tests.unit.policy_helpers import golden, manifest

WINDOWS = sorted(i for i, e in manifest().items() if "windows-wbcl" in e["category"])


def _text(ev: sipa.SipaEvent) -> str:
    return ev.payload.decode("utf-16-le").rstrip("\x00")


def _raw_modules(entry_id: str) -> dict[bytes, list[tuple[int, int, dict[int, str]]]]:
    """Authenticode hash -> (pcr, seq, {FILE_PATH / AUTHORITY_PUBLISHER: text}) per record."""
    out: dict[bytes, list[tuple[int, int, dict[int, str]]]] = defaultdict(list)
    for ev in golden(entry_id).events:
        if ev.event_type != EventType.EV_EVENT_TAG or ev.pcr not in (12, 13, 14):
            continue
        for top in sipa.decode_sipa_events(ev.data):
            for node in top.walk():
                if node.type != sipa.LOADED_MODULE_AGGREGATION:
                    continue
                kids = {c.type: c for c in node.children}
                digest = kids[sipa.AUTHENTICODE_HASH].payload
                texts = {t: _text(kids[t]) for t in (sipa.FILE_PATH, sipa.AUTHORITY_PUBLISHER)
                         if t in kids}
                out[digest].append((ev.pcr, ev.seq, texts))
    return out


def test_the_corpus_holds_the_windows_logs() -> None:
    assert WINDOWS == ["W03", "W04"]


@pytest.mark.parametrize("entry_id", WINDOWS)
def test_module_records_are_unique_by_hash_with_every_site(entry_id: str) -> None:
    w = golden(entry_id).claims.windows
    assert w is not None
    raw = _raw_modules(entry_id)
    hashes = [m.authenticode_hash for m in w.loaded_modules]
    assert len(hashes) == len(set(hashes)) == len(raw)
    for m in w.loaded_modules:
        assert [(s.pcr, s.seq) for s in m.sites] == [(p, q) for p, q, _ in raw[m.authenticode_hash]]


@pytest.mark.parametrize("entry_id", WINDOWS)
def test_module_records_carry_path_and_signer_wherever_measured(entry_id: str) -> None:
    w = golden(entry_id).claims.windows
    assert w is not None
    raw = _raw_modules(entry_id)
    for m in w.loaded_modules:
        for kind, got in ((sipa.FILE_PATH, m.file_path), (sipa.AUTHORITY_PUBLISHER,
                                                            m.authority_publisher)):
            measured = {texts[kind] for _, _, texts in raw[m.authenticode_hash] if kind in texts}
            disputed = any(c.attribute == ("file_path" if kind == sipa.FILE_PATH else
                                           "authority_publisher") for c in m.conflicts)
            if len(measured) == 1:
                assert got == measured.pop(), m
            else:  # never measured, or measured differently: unknown, and said so
                assert got is None and disputed == bool(measured), m
        # every record here is validated and signed: each module has its signer
        assert m.signer is not None and m.signer[0] == m.authority_publisher, m


def test_module_counts() -> None:
    """The issue's figures: 184 and 218 measurements of 92 and 107 modules."""
    for entry_id, records, modules in (("W03", 184, 92), ("W04", 218, 107)):
        assert sum(len(v) for v in _raw_modules(entry_id).values()) == records
        w = golden(entry_id).claims.windows
        assert w is not None and len(w.loaded_modules) == modules


def test_w04_one_image_under_two_names_is_one_module_and_an_anomaly() -> None:
    c = golden("W04").claims
    assert c.windows is not None
    (m,) = [m for m in c.windows.loaded_modules if m.conflicts]
    assert [x.attribute for x in m.conflicts] == ["file_path"]
    assert m.conflicts[0].values == ("\\WINDOWS\\System32\\drivers\\iaStorA.sys",
                                     "\\WINDOWS\\System32\\drivers\\iaStorB.sys")
    assert m.signer == ("Intel Corporation \u2013 Non-Volatile Memory Solutions Group",
                        "Intel External Basic Issuing CA 3B")  # the signer is not in dispute
    (a,) = [a for a in c.anomalies if a.reason == "tpm.sipa.module_conflict"]
    assert not a.fatal and (a.pcr, a.seq) == (13, 52)


def test_w04_go_attestation_secure_boot_option_rom() -> None:
    g = golden("W04")
    expected = next(x["value"] for x in manifest()["W04"]["expected_from_source_repos"]
                    if x["kind"].startswith("pcr_values"))
    assert {str(p): v.hex() for p, v in g.claims.pcrs["sha1"].items() if p < 8} == expected["sha1"]
    assert g.claims.secure_boot is True
    assert sum(a.after_separator for a in g.claims.authorities) == 2  # PostSeparatorAuthority
    (driver,) = [a for a in g.claims.boot_applications if a.pcr == 2]  # DriverLoadSourceHints
    assert driver.kind == "boot_driver"
    assert driver.device_path.startswith("PciRoot(") and "/Offset(" in driver.device_path
