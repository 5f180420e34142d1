"""Windows loaded modules: one record per Authenticode hash, merged across blocks and PCRs.

Provenance: blocks are built here from the SIPA layouts cited in ``services/tpm/sipa.py`` (the
shapes of the corpus logs W03/W04: hash and image base in PCR 12, the full record in PCR 13).
"""

from __future__ import annotations

import struct

from services.tpm import sipa
from tests.unit.test_sipa_latch import boundary, ev

H = b"\x11" * 32
OTHER = b"\x22" * 32


def _text(s: str) -> bytes:
    return (s + "\x00").encode("utf-16-le")


def bare(digest: bytes, base: int) -> bytes:
    """A PCR 12 record: hash and image base only."""
    return ev(sipa.LOADED_MODULE_AGGREGATION, ev(sipa.AUTHENTICODE_HASH, digest)
              + ev(sipa.IMAGE_BASE, struct.pack("<Q", base)))


def full(digest: bytes, path: str = "\\Windows\\system32\\drivers\\a.sys",
         publisher: str | None = "Microsoft Windows", validated: bool = True,
         size: int = 4096) -> bytes:
    """A PCR 13 record: path, size, algorithm, hash, validation, issuer and publisher."""
    signer = (ev(sipa.AUTHORITY_ISSUER, _text("Microsoft Windows Production PCA 2011"))
              + ev(sipa.AUTHORITY_PUBLISHER, _text(publisher)) if publisher else b"")
    return ev(sipa.LOADED_MODULE_AGGREGATION, b"".join((
        ev(sipa.FILE_PATH, _text(path)), ev(sipa.IMAGE_SIZE, struct.pack("<Q", size)),
        ev(sipa.HASH_ALGORITHM_ID, struct.pack("<I", 0x800C)), ev(sipa.AUTHENTICODE_HASH, digest),
        ev(sipa.IMAGE_VALIDATED, b"\x01" if validated else b"\x00"), signer)))


def merged(*blocks: tuple[int, int, bytes]) -> sipa.WindowsBootConfig:
    """``(pcr, seq, block)`` in log order, merged as extraction merges them."""
    return sipa.merge_blocks(
        (sipa.summarise_block(seq, sipa.decode_sipa_events(b, seq=seq)) for _, seq, b in blocks),
        sites=[(pcr, seq) for pcr, seq, _ in blocks])


def test_one_module_per_hash_with_every_site() -> None:
    w = merged((12, 30, boundary(bare(H, 0x1000), bare(OTHER, 0x2000))),
               (13, 31, boundary(full(H), full(OTHER, "\\b.sys"))))
    a, b = w.loaded_modules
    assert (a.authenticode_hash, b.authenticode_hash) == (H, OTHER)  # order of first measurement
    assert a.file_path == "\\Windows\\system32\\drivers\\a.sys" and a.hash_algorithm == "sha256"
    assert a.signer == ("Microsoft Windows", "Microsoft Windows Production PCA 2011")
    assert a.sites == (sipa.ModuleSite(12, 30, 0x1000, False), sipa.ModuleSite(13, 31, None, True))
    assert a.conflicts == () and b.file_path == "\\b.sys"


def test_conflicting_signer_is_one_module_without_a_signer() -> None:
    w = merged((12, 1, boundary(bare(H, 0x1000))),
               (13, 2, boundary(full(H, publisher="Microsoft Windows"))),
               (13, 3, boundary(full(H, publisher="Someone Else"))))
    (m,) = w.loaded_modules
    assert m.authority_publisher is None and m.signer is None
    assert m.conflicts == (sipa.ModuleConflict("authority_publisher",
                                               ("Microsoft Windows", "Someone Else")),)
    assert m.file_path == "\\Windows\\system32\\drivers\\a.sys"  # undisputed: kept


def test_a_describing_record_without_a_signer_disputes_the_signer() -> None:
    w = merged((13, 1, boundary(full(H), full(H, publisher=None))))
    (m,) = w.loaded_modules
    assert m.signer is None
    assert {c.attribute for c in m.conflicts} == {"authority_publisher", "authority_issuer"}
    assert all(None in c.values for c in m.conflicts)


def test_a_path_or_size_conflict_keeps_the_signer() -> None:
    w = merged((13, 1, boundary(full(H, "\\iaStorA.sys"), full(H, "\\iaStorB.sys", size=1))))
    (m,) = w.loaded_modules
    assert m.file_path is None and m.image_size is None
    assert [c.attribute for c in m.conflicts] == ["file_path", "image_size"]
    assert m.conflicts[1].values == ("1", "4096")
    assert m.signer is not None


def test_unvalidated_image_has_no_signer() -> None:
    (m,) = merged((13, 1, boundary(full(H, validated=False)))).loaded_modules
    assert m.authority_publisher == "Microsoft Windows" and m.signer is None


def test_hash_only_module_has_no_signer_and_no_conflict() -> None:
    (m,) = merged((12, 1, boundary(bare(H, 1))), (12, 2, boundary(bare(H, 2)))).loaded_modules
    assert m.signer is None and m.file_path is None and m.conflicts == ()
    assert [s.image_base for s in m.sites] == [1, 2]


def test_modules_without_a_hash_are_never_merged() -> None:
    no_hash = ev(sipa.LOADED_MODULE_AGGREGATION, ev(sipa.FILE_PATH, _text("\\x.sys")))
    no_hash2 = ev(sipa.LOADED_MODULE_AGGREGATION, ev(sipa.FILE_PATH, _text("\\y.sys")))
    w = merged((13, 1, boundary(no_hash, no_hash2)))
    assert [m.file_path for m in w.loaded_modules] == ["\\x.sys", "\\y.sys"]
    assert all(m.conflicts == () for m in w.loaded_modules)


def test_fold_without_pcrs_names_the_seq() -> None:
    w = sipa.fold_windows_config([(7, sipa.decode_sipa_events(boundary(full(H))))])
    assert w.loaded_modules[0].sites == (sipa.ModuleSite(None, 7, None, True),)
