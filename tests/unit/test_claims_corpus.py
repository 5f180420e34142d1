"""Claims extracted from the real event-log corpus (read in place from ``$HOSTGATE_CORPUS``).

Truth, in order of authority: the source repositories' own expectations
(``expected_from_source_repos``: Secure Boot state, PCR values, known errors), then the
``independent_features`` of the manifest (a second parser's reading, used as a guide and
cross-checked here), then facts read by hand from the logs (named in each test).
"""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path
from typing import Any

import pytest

from services.tpm.claims import Claims, extract_claims
from services.tpm.eventlog import EventLog, parse_event_log
from services.tpm.ipl import decode_ipl
from services.tpm.replay import verify_replay
from tests.conftest import corpus_path

CORPUS = corpus_path()
if not (CORPUS / "manifest.json").is_file():  # fail loudly: a missing corpus is not a pass
    raise RuntimeError(f"event-log corpus not found at {CORPUS} (set HOSTGATE_CORPUS)")

MANIFEST: dict[str, dict[str, Any]] = {
    e["id"]: e for e in json.loads((CORPUS / "manifest.json").read_text())["entries"]
}
#: TCG boot logs (not IMA lists, not the malformed-on-purpose inputs).
TCG_IDS = sorted(
    i for i, e in MANIFEST.items()
    if e.get("independent_features") and not e["malformed_on_purpose"]
)
#: Logs whose Secure Boot state the guide parser read.
SB_IDS = [i for i in TCG_IDS if MANIFEST[i]["independent_features"]["secureboot_enabled"] is not None]
WINDOWS_IDS = sorted(i for i, e in MANIFEST.items() if "windows-wbcl" in e["category"])


@cache
def _log(entry_id: str) -> EventLog:
    return parse_event_log((CORPUS / MANIFEST[entry_id]["file"]).read_bytes())


@cache
def _claims(entry_id: str) -> Claims:
    log = _log(entry_id)
    if MANIFEST[entry_id]["category"] == "ccel-tdx":
        return extract_claims(log.events, banks=log.banks, measurement_registers="ccel")
    return extract_claims(log.events, banks=log.banks)


def _features(entry_id: str) -> dict[str, Any]:
    feats: dict[str, Any] = MANIFEST[entry_id]["independent_features"]
    return feats


def test_corpus_selection_is_not_empty() -> None:
    assert len(TCG_IDS) >= 40 and len(SB_IDS) >= 35 and WINDOWS_IDS == ["W03", "W04"]


@pytest.mark.parametrize("entry_id", SB_IDS)
def test_secure_boot_state_matches_manifest(entry_id: str) -> None:
    assert _claims(entry_id).secure_boot is _features(entry_id)["secureboot_enabled"]


@pytest.mark.parametrize(
    ("entry_id", "enabled"),
    [
        ("A39", False),  # keylime: create_mb_refstate needs -i (Secure Boot disabled)
        ("A40", True),  # keylime: "Secure Boot ENABLED"
        ("A31", False),  # go-attestation: ubuntu_2104_shielded_vm_no_secure_boot
        ("A35", False),  # go-eventlog: Ubuntu 21.04 GCE, Secure Boot disabled
        ("A32", False),  # go-eventlog: Arch workstation, Secure Boot disabled
        ("W04", True),  # go-attestation TestSecureBootOptionRom
    ],
)
def test_secure_boot_state_matches_source_repository(entry_id: str, enabled: bool) -> None:
    assert _claims(entry_id).secure_boot is enabled


@pytest.mark.parametrize("entry_id", TCG_IDS)
def test_only_known_defects_fail_closed(entry_id: str) -> None:
    fatal = [a for a in _claims(entry_id).anomalies if a.fatal]
    if entry_id in ("C03", "C04"):  # C04 is C03 without the 0xFF padding
        assert [a.reason for a in fatal] == ["tpm.separator.duplicate"]
    elif entry_id == "A42":  # Intel server firmware: vendor type 0x40e in PCR 0 (see
        # test_policy_corpus: a derived policy accepts exactly that pair)
        assert [(a.reason, a.pcr, a.event_type) for a in fatal] == [
            ("tpm.event.unknown_type", 0, "0x0000040e")]
    else:
        assert fatal == []


def test_c03_duplicate_separator_is_reported() -> None:
    c = _claims("C03")
    dup = [a for a in c.anomalies if a.reason == "tpm.separator.duplicate"]
    assert len(dup) == 1 and dup[0].fatal and dup[0].pcr == 1  # MR1 = RTMR0
    assert c.failed_closed
    assert not _claims("C05").failed_closed  # the same platform without the bug


def test_a32_empty_secure_boot_variable_is_an_anomaly() -> None:
    c = _claims("A32")
    empty = [a for a in c.anomalies if a.reason == "tpm.secureboot.variable_empty"]
    assert c.secure_boot is False
    assert len(empty) == 1 and not empty[0].fatal and empty[0].pcr == 7


@pytest.mark.parametrize("entry_id", [i for i in TCG_IDS if _features(i)["boot_applications"]])
def test_boot_applications_in_order(entry_id: str) -> None:
    want = [None if p.startswith("<devpath") else p for p in _features(entry_id)["boot_applications"]]
    got = [a.file_path for a in _claims(entry_id).boot_applications if a.kind == "application"]
    assert got == want


@pytest.mark.parametrize(
    "entry_id", [i for i in TCG_IDS if _features(i)["kernel_cmdline_like"]]
)
def test_kernel_cmdlines_listed_in_manifest_are_extracted(entry_id: str) -> None:
    # the manifest's samples are cut at ~200 characters: compare as prefixes. A sample whose
    # event's digest is not over its data (older systemd-boot in PCR 8, corpus A32 and A48) is
    # never read as a claim: it is listed as unverified instead.
    claims = _claims(entry_id)
    by_seq = {e.seq: e for e in _log(entry_id).events}
    unverified = [decode_ipl(by_seq[q].data, by_seq[q].pcr).text
                  for q in claims.unverified_boot_strings]
    got = (*claims.kernel_cmdlines, *unverified)
    checked = 0
    for sample in _features(entry_id)["kernel_cmdline_like"]:
        for prefix in ("kernel_cmdline: ", "grub_kernel_cmdline ", ""):
            if sample.startswith(prefix) and (prefix or not sample.startswith("grub_")):
                assert any(g.startswith(sample[len(prefix):]) for g in got), sample
                checked += 1
                break
        if sample.startswith("grub_cmd: set kernelopts="):  # GRUB BLS: root= reaches the kernel
            root = sample.split("kernelopts=", 1)[1].split()[0]
            assert any(root in g.split() for g in got), sample
            checked += 1
    assert checked >= 1 or entry_id == "A43"  # A43 only sets default_kernelopts
    assert got
    assert not set(unverified) & set(claims.kernel_cmdlines)


def test_grub_kernel_cmdline_a28() -> None:
    # read by hand: A28's GRUB logs "kernel_cmdline: /boot/vmlinuz-5.3.0-40-generic root=..."
    (line,) = _claims("A28").kernel_cmdlines
    assert line.startswith("/boot/vmlinuz-5.3.0-40-generic root=UUID=43eb5342")


@pytest.mark.parametrize("entry_id", [i for i in TCG_IDS if _features(i)["variable_authority_names"]])
def test_authority_variables(entry_id: str) -> None:
    got = {a.variable for a in _claims(entry_id).authorities}
    assert got == set(_features(entry_id)["variable_authority_names"])


def test_key_databases_a40() -> None:
    c = _claims("A40")
    db = c.database("db")
    assert db is not None
    subjects = [e.subject for e in db.entries if e.kind == "x509"]
    assert any("Microsoft Corporation UEFI CA 2011" in (s or "") for s in subjects)
    dbx = c.database("dbx")
    assert dbx is not None and all(e.kind == "sha256" and len(e.digest) == 32 for e in dbx.entries)
    # the shim that booted was authorised by a db certificate, named by subject
    assert any(a.variable == "db" and a.subject for a in c.authorities)


@pytest.mark.parametrize("entry_id", WINDOWS_IDS)
def test_windows_sipa_flags(entry_id: str) -> None:
    w = _claims(entry_id).windows
    assert w is not None
    assert w.boot_debugging is False and w.kernel_debugger is False
    assert w.test_signing is False and w.flight_signing is False
    assert w.code_integrity is True and w.dep is True  # nx OptIn (0), see sipa docstring
    assert w.safe_mode is False and w.win_pe is False
    paths = {m.file_path for m in w.loaded_modules}
    assert "\\WINDOWS\\system32\\winload.efi" in paths
    assert all(len(m.authenticode_hash) in (20, 32) for m in w.loaded_modules)


def test_windows_elam_and_counters() -> None:
    w3, w4 = _claims("W03").windows, _claims("W04").windows
    assert w3 is not None and w4 is not None
    assert w3.elam_drivers == ("Symantec",) and w3.boot_counter == 117
    assert w4.elam_drivers == ("Windows Defender",)
    assert w4.hypervisor_launch_type == (1, 1)  # Hyper-V on (hvloader.dll loaded)
    # one record per Authenticode hash (issue 19): 184 and 218 measurements before merging
    assert len(w3.loaded_modules) == 92 and len(w4.loaded_modules) == 107


def test_linux_logs_have_no_windows_claims() -> None:
    assert all(_claims(i).windows is None for i in TCG_IDS if i not in WINDOWS_IDS)


@pytest.mark.parametrize("entry_id", ["A31", "A32", "W04"])
def test_claims_from_verified_replay(entry_id: str) -> None:
    expected = next(
        x["value"] for x in MANIFEST[entry_id]["expected_from_source_repos"]
        if x["kind"].startswith("pcr_values")
    )
    quoted = {b: {int(p): bytes.fromhex(v) for p, v in vals.items()} for b, vals in expected.items()}
    result = verify_replay(_log(entry_id), quoted)
    c = extract_claims(result)
    assert c.replay_verified and c.secure_boot is _claims(entry_id).secure_boot
    assert c.pcrs[c.banks[0]][7] == quoted[c.banks[0]][7]
    assert [a.file_path for a in c.boot_applications] == [
        a.file_path for a in _claims(entry_id).boot_applications
    ]


def test_quirks_are_named_and_tied_to_events() -> None:
    c = _claims("A30")
    ids = {q.quirk for q in c.quirks_applied}
    assert ids == {"boot-variable-data-only", "shim-authority-extra-byte"}
    shim = [q.seq for q in c.quirks_applied if q.quirk == "shim-authority-extra-byte"]
    assert shim == [a.seq for a in c.authorities if a.variable == "Shim"]


def test_json_is_stable_and_hex() -> None:
    c = _claims("W04")
    doc = c.to_json_dict()
    assert list(doc)[:4] == ["replay_verified", "banks", "pcrs", "secure_boot"]
    assert doc["failed_closed"] is False
    text = json.dumps(doc)
    assert json.dumps(_claims("W04").to_json_dict()) == text
    db = next(d for d in doc["key_databases"] if d["name"] == "db")
    assert all(len(e["digest"]) == 64 and e["digest"] == e["digest"].lower() for e in db["entries"])


def test_uefi_debug_mode_is_claimed_a30() -> None:
    # A30 (fwupd test data) logs EV_EFI_ACTION "UEFI Debug Mode" in PCR 7
    c = _claims("A30")
    assert c.uefi_debug_mode is True
    assert any(a.reason == "tpm.uefi.debug_mode" for a in c.anomalies)
    assert _claims("A31").uefi_debug_mode is False


def test_repo_relative_corpus_path() -> None:
    assert isinstance(CORPUS, Path) and CORPUS.is_absolute()


@pytest.mark.parametrize("entry_id", [i for i in TCG_IDS if _features(i)["s_crtm_version"]])
def test_s_crtm_version(entry_id: str) -> None:
    # the guide keeps binary versions as hex cut at 40 bytes: compare as a prefix
    (want,) = _features(entry_id)["s_crtm_version"]
    (got,) = _claims(entry_id).s_crtm_version
    assert got.startswith(want) and (len(want) == 80 or got == want)


def test_platform_config_flags_a39() -> None:
    # read by hand: the Lenovo ThinkPad (A39) logs EV_PLATFORM_CONFIG_FLAGS "FeatureTME=0"
    assert _claims("A39").platform_config_flags == ("FeatureTME=0",)
