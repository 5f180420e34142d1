"""Linux IMA measurement lists: parse the ASCII and binary formats into untrusted entries.

Two wire formats are read, both as the kernel writes them under ``securityfs/ima/``:

* ``binary_runtime_measurements`` (``ima_measurements_show`` in the kernel's ``ima_fs.c``):
  per entry ``u32 pcr | 20-byte SHA-1 template hash | u32 name_len | name |
  u32 template_data_len | template data`` in host byte order (little-endian unless the host is
  big-endian and ``ima_canonical_fmt`` is off). The legacy ``ima`` template has no
  ``template_data_len`` and its fields are not length-prefixed alike (see ``_parse_legacy``).
* ``ascii_runtime_measurements``: ``pcr template-hash template-name field...``, one line per
  entry, each field preceded by one space even when empty.

Everything here is **untrusted** until :func:`services.tpm.ima_replay.verify_replay` has matched
the list against a quoted PCR 10: a host can write anything into a measurement list. Replay to
PCR 10, the violation convention, template-hash checks and ``boot_aggregate`` live in
:mod:`services.tpm.ima_replay`; this module only parses, within :class:`Limits`.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Final, Literal

from services.tpm.algorithms import SHA_BANKS, digest_sizes
from services.tpm.errors import (
    LimitExceeded,
    MalformedImaList,
    MalformedInput,
    Unsupported,
)
from services.tpm.quirks import QUIRK_TRUNCATED_TAIL, Layer, of_layer

__all__ = [
    "DEFAULT_LIMITS",
    "QUIRK_TRUNCATED_TAIL",
    "ImaEntry",
    "ImaList",
    "ImaSignature",
    "Limits",
    "parse",
    "parse_ascii",
    "parse_binary",
]

SHA1_LEN = 20
LEGACY_NAME_LEN = 256  # IMA_EVENT_NAME_LEN_MAX + 1: legacy "ima" names are hashed NUL-padded

KNOWN_QUIRKS = frozenset(q.id for q in of_layer(Layer.IMA))
"""The ``ima`` quirks of :data:`services.tpm.quirks.QUIRKS`. With
:data:`~services.tpm.quirks.QUIRK_TRUNCATED_TAIL` the incomplete last entry of a list that ends
inside one is dropped and counted in ``ImaList.truncated_tail``; without it (the default) the
list is malformed."""

# The kernel's ``enum hash_algo`` (include/uapi/linux/hash_info.h), index = value, with the
# digest size of each; used for signature headers and for d-ng algorithm prefixes.
# The SHA-1/SHA-2 sizes are those of ``services.tpm.algorithms`` (the same fact).
_SHA: Final = digest_sizes(SHA_BANKS)
_KERNEL_HASH_ALGOS: tuple[tuple[str, int], ...] = (
    ("md4", 16), ("md5", 16), ("sha1", _SHA["sha1"]), ("rmd160", 20), ("sha256", _SHA["sha256"]),
    ("sha384", _SHA["sha384"]), ("sha512", _SHA["sha512"]), ("sha224", 28), ("rmd128", 16),
    ("rmd256", 32), ("rmd320", 40), ("wp256", 32), ("wp384", 48), ("wp512", 64), ("tgr128", 16), ("tgr160", 20),
    ("tgr192", 24), ("sm3", 32), ("streebog256", 32), ("streebog512", 64),
    ("sha3-256", 32), ("sha3-384", 48), ("sha3-512", 64),
)  # fmt: skip
_DIGEST_SIZES = dict(_KERNEL_HASH_ALGOS)
# "sm3-256" is how older kernels spelt sm3 in d-ng prefixes.
_DIGEST_SIZES["sm3-256"] = 32

# Template name -> field ids (``ima_template.c`` builtin templates).
_TEMPLATES: dict[str, tuple[str, ...]] = {
    "ima": ("d", "n"),
    "ima-ng": ("d-ng", "n-ng"),
    "ima-ngv2": ("d-ngv2", "n-ng"),
    "ima-sig": ("d-ng", "n-ng", "sig"),
    "ima-sigv2": ("d-ngv2", "n-ng", "sig"),
    "ima-buf": ("d-ng", "n-ng", "buf"),
    "ima-modsig": ("d-ng", "n-ng", "sig", "d-modsig", "modsig"),
}

# security.ima xattr types that carry a signature (enum evm_ima_xattr_type).
EVM_IMA_XATTR_DIGSIG = 0x03
IMA_VERITY_DIGSIG = 0x06
_SIG_HEADER = struct.Struct(">BBBIH")  # type, version, hash_algo, keyid (BE), sig_size (BE)


@dataclass(frozen=True)
class Limits:
    """Bounds applied while parsing hostile input; exceeding one raises ``LimitExceeded``."""

    max_input_bytes: int = 256 * 1024 * 1024
    max_entries: int = 1_000_000
    max_template_data: int = 64 * 1024
    max_template_name: int = 64
    max_line: int = 2 * 64 * 1024 + 1024


DEFAULT_LIMITS = Limits()


@dataclass(frozen=True)
class ImaSignature:
    """An untrusted ``security.ima`` signature (``signature_v2_hdr``) from an ima-sig entry.

    ``hash_alg`` is the kernel hash algorithm name the signature is over; ``key_id`` the last
    four bytes of the signing key's subject key identifier, as the header carries them.
    """

    xattr_type: int
    version: int
    hash_alg: str
    key_id: int
    signature: bytes
    raw: bytes


@dataclass(frozen=True)
class ImaEntry:
    """One untrusted IMA measurement (meaningful only after ``ima_replay.verify_replay``).

    ``template_hash`` is the SHA-1 template hash as listed (all zeros for a violation);
    ``template_data`` the bytes every bank's template digest is computed over. ``offset`` is
    the entry's byte offset in the input; ``line`` its 1-based line for ASCII lists.
    """

    seq: int
    offset: int
    pcr: int
    template_hash: bytes
    template_name: str
    file_hash_alg: str | None
    file_hash: bytes | None
    path: str | None
    signature: ImaSignature | None
    buf: bytes | None
    template_data: bytes
    modsig: bytes | None = None
    line: int | None = None

    @property
    def violation(self) -> bool:
        """True when the list marks this entry as a measurement violation (zero hash)."""
        return not any(self.template_hash)


@dataclass(frozen=True)
class ImaList:
    """An untrusted parsed IMA measurement list."""

    entries: tuple[ImaEntry, ...]
    format: Literal["binary", "ascii"]
    quirks_applied: frozenset[str] = field(default_factory=frozenset)
    truncated_tail: int = 0


# --------------------------------------------------------------------------- field decoding


def _digest_alg_size(alg: str, offset: int, seq: int, fld: str) -> int:
    size = _DIGEST_SIZES.get(alg)
    if size is None:
        raise MalformedImaList(
            f"unknown digest algorithm {alg!r}", offset=offset, seq=seq, field=fld
        )
    return size


def _decode_dng(data: bytes, offset: int, seq: int, fld: str) -> tuple[str, bytes]:
    """d-ng / d-ngv2 / d-modsig binary: ``[type ':'] alg ':' NUL digest``."""
    nul = data.find(b"\x00")
    if nul < 1 or data[nul - 1 : nul] != b":":
        raise MalformedImaList(
            f"{fld} lacks an 'alg:\\0' prefix", offset=offset, seq=seq, field=fld
        )
    prefix = data[: nul - 1].decode("ascii", "replace")
    if fld == "d-ngv2":
        kind, _, prefix = prefix.partition(":")
        if kind not in ("ima", "verity"):
            raise MalformedImaList(
                f"unknown digest type {kind!r}", offset=offset, seq=seq, field=fld
            )
    digest = data[nul + 1 :]
    if len(digest) != _digest_alg_size(prefix, offset, seq, fld):
        raise MalformedImaList(
            f"{prefix} digest has {len(digest)} bytes", offset=offset, seq=seq, field=fld
        )
    return prefix, digest


def _decode_signature(data: bytes, offset: int, seq: int) -> ImaSignature | None:
    """The ``sig`` field: empty, or an EVM_IMA_XATTR_DIGSIG / IMA_VERITY_DIGSIG v2/v3 header."""
    if not data:
        return None
    if len(data) < _SIG_HEADER.size:
        raise MalformedImaList(
            "signature shorter than its header", offset=offset, seq=seq, field="sig"
        )
    xtype, version, algo, key_id, sig_size = _SIG_HEADER.unpack_from(data)
    if xtype not in (EVM_IMA_XATTR_DIGSIG, IMA_VERITY_DIGSIG):
        raise MalformedImaList(
            f"signature xattr type {xtype:#x}", offset=offset, seq=seq, field="sig"
        )
    if version not in (2, 3):
        raise MalformedImaList(
            f"signature version {version}", offset=offset + 1, seq=seq, field="sig"
        )
    if algo >= len(_KERNEL_HASH_ALGOS):
        raise MalformedImaList(
            f"signature hash algo {algo}", offset=offset + 2, seq=seq, field="sig"
        )
    if sig_size != len(data) - _SIG_HEADER.size:
        raise MalformedImaList(
            f"signature size {sig_size} but {len(data) - _SIG_HEADER.size} bytes follow",
            offset=offset + 7, seq=seq, field="sig",
        )  # fmt: skip
    return ImaSignature(
        xattr_type=xtype,
        version=version,
        hash_alg=_KERNEL_HASH_ALGOS[algo][0],
        key_id=key_id,
        signature=data[_SIG_HEADER.size :],
        raw=data,
    )


def _path(data: bytes) -> str:
    return data.removesuffix(b"\x00").decode("utf-8", "surrogateescape")


def _entry_from_fields(
    *,
    seq: int,
    offset: int,
    pcr: int,
    template_hash: bytes,
    name: str,
    fields: Mapping[str, tuple[bytes, int]],
    template_data: bytes,
    line: int | None,
) -> ImaEntry:
    """Build an entry from decoded field values: ``fields[id] = (value, byte offset)``."""
    alg: str | None = None
    digest: bytes | None = None
    if "d" in fields:
        alg, digest = "sha1", fields["d"][0]
    for fid in ("d-ng", "d-ngv2"):
        if fid in fields:
            alg, digest = _decode_dng(fields[fid][0], fields[fid][1], seq, fid)
    path = None
    for fid in ("n", "n-ng"):
        if fid in fields:
            path = _path(fields[fid][0])
    sig = _decode_signature(*fields["sig"], seq) if "sig" in fields else None
    modsig = None
    if "d-modsig" in fields and fields["d-modsig"][0]:
        _decode_dng(fields["d-modsig"][0], fields["d-modsig"][1], seq, "d-modsig")
        modsig = fields["modsig"][0]
    return ImaEntry(
        seq=seq,
        offset=offset,
        pcr=pcr,
        template_hash=template_hash,
        template_name=name,
        file_hash_alg=alg,
        file_hash=digest,
        path=path,
        signature=sig,
        buf=fields["buf"][0] if "buf" in fields else None,
        template_data=template_data,
        modsig=modsig,
        line=line,
    )


# --------------------------------------------------------------------------- binary format


class _Reader:
    """Bounds-checked cursor over the binary list; every short read is a MalformedImaList."""

    def __init__(self, data: bytes, byteorder: Literal["little", "big"]) -> None:
        self.data = data
        self.pos = 0
        self.u32 = struct.Struct("<I" if byteorder == "little" else ">I")
        self.seq = 0
        self.hit_end = False

    def take(self, n: int, what: str) -> bytes:
        end = self.pos + n
        if end > len(self.data):
            self.hit_end = True
            raise MalformedImaList(
                f"{what} needs {n} bytes, {len(self.data) - self.pos} left",
                offset=self.pos, seq=self.seq, field=what,
            )  # fmt: skip
        out = self.data[self.pos : end]
        self.pos = end
        return out

    def uint32(self, what: str) -> int:
        value: int = self.u32.unpack(self.take(4, what))[0]
        return value


def _parse_legacy(r: _Reader) -> tuple[dict[str, tuple[bytes, int]], bytes]:
    """Legacy ``ima`` template: 20-byte digest (no length), ``u32 len | name`` (no NUL).

    Its template hash is over ``digest || name`` NUL-padded to 256 bytes (``ima_calc_field_array_hash_tfm``).
    """
    d_off = r.pos
    digest = r.take(SHA1_LEN, "d")
    n_len = r.uint32("n.len")
    if n_len >= LEGACY_NAME_LEN:
        raise MalformedImaList(
            f"legacy name of {n_len} bytes", offset=r.pos - 4, seq=r.seq, field="n"
        )
    n_off = r.pos
    name = r.take(n_len, "n")
    hashed = digest + name.ljust(LEGACY_NAME_LEN, b"\x00")
    return {"d": (digest, d_off), "n": (name, n_off)}, hashed


def _parse_fields(
    data: bytes, base: int, r: _Reader, ids: tuple[str, ...]
) -> dict[str, tuple[bytes, int]]:
    """Split ``template data`` into its ``u32 len | value`` fields, which must fill it exactly."""
    sub = _Reader(data, "little" if r.u32.format == "<I" else "big")
    sub.seq = r.seq
    out: dict[str, tuple[bytes, int]] = {}
    try:
        for fid in ids:
            n = sub.uint32(f"{fid}.len")
            out[fid] = (sub.take(n, fid), base + sub.pos - n)
    except MalformedImaList as exc:
        raise MalformedImaList(
            exc.message, offset=base + exc.offset, seq=r.seq, field=exc.field
        ) from exc
    if sub.pos != len(data):
        raise MalformedImaList(
            f"{len(data) - sub.pos} bytes after the last field of template data",
            offset=base + sub.pos, seq=r.seq, field="template_data",
        )  # fmt: skip
    return out


def parse_binary(
    data: bytes,
    *,
    limits: Limits = DEFAULT_LIMITS,
    quirks: Iterable[str] = (),
    byteorder: Literal["little", "big"] = "little",
) -> ImaList:
    """Parse an untrusted ``binary_runtime_measurements`` list.

    Raises ``MalformedImaList`` (with the byte offset) for anything that does not parse and
    ``LimitExceeded`` past ``limits``. ``quirks`` may enable :data:`QUIRK_TRUNCATED_TAIL`.
    Templates hostgate does not know are kept as opaque entries (no file hash) so they still
    replay; the legacy ``ima`` template is recognised by name.
    """
    enabled = frozenset(quirks)
    if enabled - KNOWN_QUIRKS:
        raise Unsupported(f"unknown IMA quirk(s): {sorted(enabled - KNOWN_QUIRKS)}")
    _check_size(len(data), limits)
    r = _Reader(data, byteorder)
    entries: list[ImaEntry] = []
    while r.pos < len(data):
        _check_count(len(entries), limits, r.pos)
        r.seq = len(entries)
        start = r.pos
        try:
            entries.append(_parse_binary_entry(r, limits))
        except MalformedImaList:
            if QUIRK_TRUNCATED_TAIL in enabled and r.hit_end:
                tail = len(data) - start
                return ImaList(tuple(entries), "binary", frozenset(enabled), truncated_tail=tail)
            raise
    return ImaList(tuple(entries), "binary")


def _parse_binary_entry(r: _Reader, limits: Limits) -> ImaEntry:
    start = r.pos
    pcr = r.uint32("pcr")
    template_hash = r.take(SHA1_LEN, "template_hash")
    name_len = r.uint32("template_name.len")
    if not 0 < name_len <= limits.max_template_name:
        raise _limit_or_malformed(
            f"template name of {name_len} bytes", r.pos - 4, r.seq, name_len > 0
        )
    raw_name = r.take(name_len, "template_name")
    try:
        name = raw_name.decode("ascii")
    except UnicodeDecodeError as exc:
        raise MalformedImaList(
            "template name is not ASCII", offset=r.pos - name_len, seq=r.seq
        ) from exc
    if name == "ima":
        fields, hashed = _parse_legacy(r)
    else:
        tlen = r.uint32("template_data.len")
        if tlen > limits.max_template_data:
            raise _limit_or_malformed(f"template data of {tlen} bytes", r.pos - 4, r.seq, True)
        base = r.pos
        hashed = r.take(tlen, "template_data")
        ids = _TEMPLATES.get(name)
        fields = _parse_fields(hashed, base, r, ids) if ids is not None else {}
    return _entry_from_fields(
        seq=r.seq, offset=start, pcr=pcr, template_hash=template_hash, name=name,
        fields=fields, template_data=hashed, line=None,
    )  # fmt: skip


def _limit_or_malformed(msg: str, offset: int, seq: int, limit: bool) -> MalformedInput:
    if limit:
        return LimitExceeded(msg, offset=offset, seq=seq)
    return MalformedImaList(msg, offset=offset, seq=seq)


def _check_size(n: int, limits: Limits) -> None:
    if n > limits.max_input_bytes:
        raise LimitExceeded(f"IMA list of {n} bytes exceeds {limits.max_input_bytes}", offset=0)


def _check_count(count: int, limits: Limits, offset: int) -> None:
    if count >= limits.max_entries:
        raise LimitExceeded(f"more than {limits.max_entries} IMA entries", offset=offset, seq=count)


# --------------------------------------------------------------------------- ASCII format

_HEX = frozenset(b"0123456789abcdefABCDEF")


def _hex(tok: bytes, offset: int, seq: int, fld: str) -> bytes:
    if len(tok) % 2 or not _HEX.issuperset(tok):
        raise MalformedImaList(f"{fld} is not even-length hex", offset=offset, seq=seq, field=fld)
    return bytes.fromhex(tok.decode("ascii"))


def _ascii_digest(tok: bytes, off: int, seq: int, fld: str) -> bytes:
    """ASCII ``[type:]alg:hex`` back to its binary field value ``[type:]alg:\\0digest``."""
    head, sep, hexpart = tok.rpartition(b":")
    if not sep:
        raise MalformedImaList(f"{fld} lacks 'alg:'", offset=off, seq=seq, field=fld)
    value = head + b":\x00" + _hex(hexpart, off + len(head) + 1, seq, fld)
    _decode_dng(value, off, seq, fld)
    return value


def _split_ascii_fields(name: str, rest: bytes, off: int, seq: int) -> list[tuple[str, bytes, int]]:
    """Split the fields after the template name; returns ``(field id, token, byte offset)``.

    Paths may contain spaces (the kernel prints them raw), so the fixed-width fields are taken
    from the left (the digest) and from the right (signature, buffer, modsig); the path is what
    remains. A path with a newline cannot be represented and fails the template-hash check.
    """
    ids = _TEMPLATES[name]
    first, sep, tail = rest.partition(b" ")
    if not sep:
        raise MalformedImaList(f"{name} entry has too few fields", offset=off, seq=seq)
    n_right = len(ids) - 2
    parts = tail.rsplit(b" ", n_right) if n_right else [tail]
    if len(parts) != n_right + 1:
        raise MalformedImaList(f"{name} entry needs {len(ids)} fields", offset=off, seq=seq)
    out = [(ids[0], first, off), (ids[1], parts[0], off + len(first) + 1)]
    pos = off + len(first) + 1 + len(parts[0]) + 1
    for fid, tok in zip(ids[2:], parts[1:], strict=True):
        out.append((fid, tok, pos))
        pos += len(tok) + 1
    return out


def _parse_ascii_line(
    line: bytes, off: int, seq: int, lineno: int, byteorder: Literal["little", "big"]
) -> ImaEntry:
    where = f"line {lineno}"
    try:
        pcr_s, hash_s, name_b, rest = line.split(b" ", 3)
    except ValueError as exc:
        raise MalformedImaList(f"{where}: fewer than 4 fields", offset=off, seq=seq) from exc
    if not pcr_s.isdigit() or len(pcr_s) > 10:
        raise MalformedImaList(
            f"{where}, column 1: PCR {pcr_s[:16]!r}", offset=off, seq=seq, field="pcr"
        )
    h_off = off + len(pcr_s) + 1
    template_hash = _hex(hash_s, h_off, seq, "template_hash")
    if len(template_hash) != SHA1_LEN:
        raise MalformedImaList(
            f"{where}, column {len(pcr_s) + 2}: template hash of {len(template_hash)} bytes",
            offset=h_off, seq=seq, field="template_hash",
        )  # fmt: skip
    name = name_b.decode("ascii", "replace")
    n_off = h_off + len(hash_s) + 1
    if name not in _TEMPLATES:
        raise MalformedImaList(
            f"{where}, column {n_off - off + 1}: unknown template {name[:32]!r}",
            offset=n_off, seq=seq, field="template_name",
        )  # fmt: skip
    fields: dict[str, tuple[bytes, int]] = {}
    for fid, tok, foff in _split_ascii_fields(name, rest, n_off + len(name_b) + 1, seq):
        if fid == "d":
            value = _hex(tok, foff, seq, fid)
            if len(value) != SHA1_LEN:
                raise MalformedImaList(
                    "legacy digest is not 20 bytes", offset=foff, seq=seq, field=fid
                )
        elif fid in ("d-ng", "d-ngv2") or (fid == "d-modsig" and tok):
            value = _ascii_digest(tok, foff, seq, fid)
        elif fid == "n":
            value = tok
        elif fid == "n-ng":
            value = tok + b"\x00"
        else:  # sig, buf, modsig, empty d-modsig
            value = _hex(tok, foff, seq, fid)
        fields[fid] = (value, foff)
    if name == "ima":
        if len(fields["n"][0]) >= LEGACY_NAME_LEN:
            raise MalformedImaList(
                "legacy name too long", offset=fields["n"][1], seq=seq, field="n"
            )
        hashed = fields["d"][0] + fields["n"][0].ljust(LEGACY_NAME_LEN, b"\x00")
    else:
        fmt = "<I" if byteorder == "little" else ">I"
        hashed = b"".join(
            struct.pack(fmt, len(fields[f][0])) + fields[f][0] for f in _TEMPLATES[name]
        )
    return _entry_from_fields(
        seq=seq, offset=off, pcr=int(pcr_s), template_hash=template_hash, name=name,
        fields=fields, template_data=hashed, line=lineno,
    )  # fmt: skip


def parse_ascii(
    data: bytes,
    *,
    limits: Limits = DEFAULT_LIMITS,
    byteorder: Literal["little", "big"] = "little",
) -> ImaList:
    """Parse an untrusted ``ascii_runtime_measurements`` list (bytes, one entry per line).

    The template data each bank hashes is rebuilt from the printed fields (lengths in
    ``byteorder``, the producing kernel's), so ``ima_replay.check_template_hashes`` can hold
    the printed hash to it. Errors name the line and carry the byte offset.
    """
    _check_size(len(data), limits)
    entries: list[ImaEntry] = []
    off = 0
    lineno = 0
    while off < len(data):
        lineno += 1
        end = data.find(b"\n", off)
        if end < 0:
            raise MalformedImaList(f"line {lineno} is not terminated by a newline", offset=off)
        if end - off > limits.max_line:
            raise LimitExceeded(f"line {lineno} longer than {limits.max_line}", offset=off)
        _check_count(len(entries), limits, off)
        entries.append(_parse_ascii_line(data[off:end], off, len(entries), lineno, byteorder))
        off = end + 1
    return ImaList(tuple(entries), "ascii")


def parse(data: bytes, *, limits: Limits = DEFAULT_LIMITS, quirks: Iterable[str] = ()) -> ImaList:
    """Parse either format: ASCII lists start with a decimal PCR number and a space."""
    head = data[:3]
    if head[:1].isdigit() and b" " in head:
        return parse_ascii(data, limits=limits)
    return parse_binary(data, limits=limits, quirks=quirks)
