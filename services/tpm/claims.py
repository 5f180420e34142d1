"""Claims: everything an attestation policy needs, read from replay-verified boot events.

:func:`extract_claims` walks the events of a log whose replay matched a quote
(:class:`~services.tpm.replay.ReplayResult`) and returns one frozen, JSON-serialisable
:class:`Claims`. Before any event's data is interpreted its binding to its digests is checked
(:mod:`services.tpm.bindings`); data that does not hash to its digest is never interpreted.

Fail-closed rules (the event type is not covered by the digest, so a forged type could hide
data from every check):

* in PCR 7 and PCRs 12-14 (for Intel TDX CCEL logs: MR 1 = RTMR0 and MR 3 = RTMR2), an event
  type outside the TCG spec, an event type not expected in PCR 7, data that cannot be decoded
  and data whose digest cannot be checked are *fatal* anomalies;
* anywhere, a digest mismatch of data that is hashed (``tpm.binding.digest_mismatch``), a
  duplicate or error separator, and a Secure Boot variable that is duplicated, measured after
  the separator or has an invalid value are fatal.

Other undecodable events become non-fatal anomalies (a broken event is itself suspicious) and
extraction continues. ``Claims.failed_closed`` is True when any anomaly is fatal: a policy must
then fail. Reason ids are listed in :data:`REASONS` (a wire contract: never rename one).
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, fields, is_dataclass
from typing import Any, Final, Literal

from services.tpm import sipa
from services.tpm._cache import BoundedCache
from services.tpm.bindings import bound_payload, check_binding_of_payload
from services.tpm.errors import MalformedInput
from services.tpm.eventlog import PCR_NOT_EXTENDED, Event, EventType
from services.tpm.ipl import (
    LINUX_EFI_INITRD_TAG,
    LINUX_EFI_LOAD_OPTIONS_TAG,
    IplString,
    decode_ipl,
)
from services.tpm.replay import ReplayResult
from services.tpm.uefi import (
    CACHED_VALUE_MAX,
    EFI_GLOBAL_VARIABLE_GUID,
    KEY_DATABASES,
    UefiVariableData,
    decode_boot_order,
    decode_firmware_blob,
    decode_firmware_blob2,
    decode_handoff_tables,
    decode_handoff_tables2,
    decode_image_load_event,
    decode_load_option,
    decode_signature_data,
    decode_signature_lists,
    decode_uefi_variable_data,
    decode_utf16_string,
    guid_name,
)

__all__ = [
    "REASONS",
    "Anomaly",
    "Authority",
    "BootApplication",
    "BootOption",
    "Claims",
    "DecodedEvent",
    "ImaClaim",
    "KeyDatabase",
    "KeyEntry",
    "QuirkUse",
    "extract_claims",
]

REASONS: Final[dict[str, str]] = {
    "tpm.binding.digest_mismatch": "event data does not hash to the digest it was extended with",
    "tpm.binding.unverifiable": "no bank of the event can be hashed here to check its data",
    "tpm.event.unknown_type": "event type outside the TCG PC Client spec",
    "tpm.event.unexpected_type": "event type not expected in this PCR",
    "tpm.event.undecodable": "event data does not decode as its type says",
    "tpm.separator.duplicate": "a second EV_SEPARATOR in the same PCR",
    "tpm.separator.error": "error separator (value 1 or 0xFFFFFFFF): firmware reported an error",
    "tpm.separator.unexpected_value": "EV_SEPARATOR data is neither 0, an error value nor WBCL",
    "tpm.secureboot.variable_empty": "SecureBoot variable measured with no data (read as off)",
    "tpm.secureboot.invalid_value": "SecureBoot variable is not one byte of 0 or 1",
    "tpm.secureboot.duplicate_variable": "a Secure Boot variable measured twice",
    "tpm.secureboot.variable_after_separator": "a Secure Boot variable measured after PCR 7's separator",
    "tpm.uefi.debug_mode": "EV_EFI_ACTION 'UEFI Debug Mode': a UEFI debugger was enabled",
}

_FAIL_CLOSED: Final = {"tpm": frozenset({7, 12, 13, 14}), "ccel": frozenset({1, 3})}
_SECURE_BOOT_PCR: Final = {"tpm": 7, "ccel": 1}
_WINDOWS_PCRS: Final = frozenset({12, 13, 14})
_PCR7_TYPES: Final = frozenset(
    {
        EventType.EV_EFI_VARIABLE_DRIVER_CONFIG,
        EventType.EV_EFI_VARIABLE_AUTHORITY,
        EventType.EV_SEPARATOR,
        EventType.EV_EFI_ACTION,
        EventType.EV_EFI_SPDM_DEVICE_POLICY,
        EventType.EV_EFI_SPDM_DEVICE_AUTHORITY,
    }
)
_KNOWN_TYPES: Final = frozenset(int(t) for t in EventType)
_NO_ACTION: Final = int(EventType.EV_NO_ACTION)
#: Authority variables whose value is an EFI_SIGNATURE_DATA (or shim's bare certificate);
#: others (SbatLevel, MokListTrusted, MokSBState...) are recorded by value digest.
_CERT_AUTHORITIES: Final = frozenset({"db", "dbx", "MokList", "MokListRT", "Shim", "vendor_db"})
_BOOT_OPTION: Final = re.compile(r"^Boot[0-9A-Fa-f]{4}$")
_SEPARATOR_OK: Final = (b"\x00\x00\x00\x00", b"WBCL")
_SEPARATOR_ERROR: Final = (b"\x01\x00\x00\x00", b"\xff\xff\xff\xff")
_IMAGE_TYPES: Final[dict[int, str]] = {
    EventType.EV_EFI_BOOT_SERVICES_APPLICATION: "application",
    EventType.EV_EFI_BOOT_SERVICES_DRIVER: "boot_driver",
    EventType.EV_EFI_RUNTIME_SERVICES_DRIVER: "runtime_driver",
}


# --- claim records ----------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Anomaly:
    """Something wrong or suspicious, tied to the event that showed it."""

    reason: str
    seq: int
    pcr: int
    event_type: str
    detail: str
    fatal: bool


@dataclass(frozen=True, slots=True)
class QuirkUse:
    """A named firmware quirk that was needed to bind or replay an event (``seq`` -1: replay)."""

    quirk: str
    seq: int


@dataclass(frozen=True, slots=True)
class KeyEntry:
    """One key-database entry: certificate (subject, SHA-256 of DER) or hash, with owner."""

    kind: str
    owner: str
    digest: bytes
    subject: str | None


@dataclass(frozen=True, slots=True)
class KeyDatabase:
    """A measured PK / KEK / db / dbx / dbt / MokList... value."""

    name: str
    variable_guid: str
    seq: int
    entries: tuple[KeyEntry, ...]


@dataclass(frozen=True, slots=True)
class Authority:
    """An EV_EFI_VARIABLE_AUTHORITY: the db/MOK entry (or other variable) that authorised an
    image. For SbatLevel and the like ``kind`` is ``"variable"`` and ``digest`` the value's
    SHA-256."""

    seq: int
    variable: str
    kind: str
    owner: str
    digest: bytes
    subject: str | None
    after_separator: bool


@dataclass(frozen=True, slots=True)
class BootApplication:
    """An EV_EFI_BOOT_SERVICES_APPLICATION / *_DRIVER image, in log order.

    ``digests`` are the event's (Authenticode) digests; ``authorities`` the seqs of authority
    events measured since the previous image (firmware logs an authority only the first time
    it is used, so an image may have none)."""

    seq: int
    pcr: int
    kind: str
    device_path: str
    file_path: str | None
    digests: Mapping[str, bytes]
    authorities: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class BootOption:
    """A measured Boot#### variable (``EFI_LOAD_OPTION``)."""

    name: str
    description: str
    device_path: str
    active: bool


@dataclass(frozen=True, slots=True)
class ImaClaim:
    """One Linux IMA measurement (filled from :mod:`services.tpm.ima` after its replay)."""

    pcr: int
    template: str
    file_hash_alg: str | None
    file_hash: bytes | None
    path: str | None


@dataclass(frozen=True, slots=True)
class DecodedEvent:
    """Provenance of folded claims: what extraction decoded from one event (a UEFI variable, an
    EV_IPL string, a SIPA block's own latched flags), so a policy can name the event behind a
    claim without decoding it again. Kept with the event's pcr, type and data: a lookup only
    uses it for an event with exactly those (:meth:`matches`). Not part of the JSON claims."""

    pcr: int
    event_type: int
    data: bytes
    variable: UefiVariableData | None = None
    ipl: IplString | None = None
    windows_flags: Mapping[str, bool | None] | None = None

    def matches(self, ev: Event) -> bool:
        """Whether this was decoded from ``ev`` (same PCR, type and data bytes)."""
        return ev.pcr == self.pcr and ev.event_type == self.event_type and ev.data == self.data


@dataclass(frozen=True)
class Claims:
    """Everything a policy reads. Only meaningful for events whose replay matched a quote
    (``replay_verified`` says whether the caller passed a :class:`ReplayResult`)."""

    replay_verified: bool
    banks: tuple[str, ...]
    pcrs: Mapping[str, Mapping[int, bytes]]
    secure_boot: bool | None
    uefi_debug_mode: bool
    dma_protection_disabled: bool
    key_databases: tuple[KeyDatabase, ...]
    authorities: tuple[Authority, ...]
    boot_applications: tuple[BootApplication, ...]
    boot_order: tuple[int, ...]
    boot_options: tuple[BootOption, ...]
    kernel_cmdlines: tuple[str, ...]
    grub_commands: int
    shim_mok_variables: tuple[str, ...]
    efi_actions: tuple[str, ...]
    s_crtm_version: tuple[str, ...]
    firmware_blobs: tuple[tuple[str | None, int, int], ...]
    handoff_tables: tuple[str, ...]
    platform_config_flags: tuple[str, ...]
    linux_efi_stub_tags: tuple[str, ...]
    windows: sipa.WindowsBootConfig | None
    quirks_applied: tuple[QuirkUse, ...]
    anomalies: tuple[Anomaly, ...]
    ima: tuple[ImaClaim, ...] | None = None
    decoded: Mapping[int, DecodedEvent] = field(
        default_factory=dict, compare=False, repr=False
    )
    """Provenance by event seq (:class:`DecodedEvent`); excluded from :meth:`to_json_dict`."""

    @property
    def failed_closed(self) -> bool:
        """True if any anomaly is fatal: a policy must fail this evidence."""
        return any(a.fatal for a in self.anomalies)

    def database(self, name: str) -> KeyDatabase | None:
        """The last measured key database called ``name`` (``"db"``), if any."""
        found = [d for d in self.key_databases if d.name == name]
        return found[-1] if found else None

    def to_json_dict(self) -> dict[str, Any]:
        """A JSON-ready dict: field order as declared, bytes as lowercase hex, mapping keys
        sorted (PCR indices as decimal strings, numerically ordered). Provenance
        (:attr:`decoded`) is not included."""
        out = _json(self)
        out["failed_closed"] = self.failed_closed
        assert isinstance(out, dict)
        return out


_NOT_JSON: Final = frozenset({"decoded"})
_SCALARS: Final = frozenset({str, int, bool, float, type(None)})
_FIELD_NAMES: dict[type, tuple[str, ...]] = {}


def _field_names(cls: type) -> tuple[str, ...]:
    names = _FIELD_NAMES.get(cls)
    if names is None:
        names = tuple(f.name for f in fields(cls) if f.name not in _NOT_JSON)
        _FIELD_NAMES[cls] = names
    return names


def _json(value: Any) -> Any:
    """JSON-ready form: bytes as hex, dataclasses by field, mappings with sorted keys. The
    common leaf types (str, int, bool, float, None, bytes) are converted inline."""
    t = type(value)
    if t in _SCALARS:
        return value
    if t is bytes:
        return value.hex()
    if t is tuple or t is list:
        return [v if type(v) in _SCALARS else v.hex() if type(v) is bytes else _json(v)
                for v in value]
    if isinstance(value, bytes):
        return value.hex()
    if is_dataclass(value) and not isinstance(value, type):
        out: dict[str, Any] = {}
        for name in _field_names(t):
            v = getattr(value, name)
            vt = type(v)
            out[name] = v if vt in _SCALARS else v.hex() if vt is bytes else _json(v)
        return out
    if isinstance(value, Mapping):
        keys = sorted(value, key=lambda k: (isinstance(k, str), k))
        out = {}
        for k in keys:
            v = value[k]
            vt = type(v)
            out[str(k)] = v if vt in _SCALARS else v.hex() if vt is bytes else _json(v)
        return out
    if isinstance(value, (tuple, list)):
        return [_json(v) for v in value]
    return value


# --- extraction ------------------------------------------------------------------------
@dataclass
class _State:
    """Mutable accumulator private to one :func:`extract_claims` call."""

    fail_closed: frozenset[int]
    sb_pcr: int
    windows: bool = True
    secure_boot: bool | None = None
    uefi_debug: bool = False
    dma_off: bool = False
    separators: set[int] = field(default_factory=set)
    sb_vars: set[str] = field(default_factory=set)
    dbs: list[KeyDatabase] = field(default_factory=list)
    authorities: list[Authority] = field(default_factory=list)
    pending_auth: list[int] = field(default_factory=list)
    apps: list[BootApplication] = field(default_factory=list)
    boot_order: tuple[int, ...] = ()
    options: list[BootOption] = field(default_factory=list)
    cmdlines: list[str] = field(default_factory=list)
    grub_cmds: int = 0
    moks: list[str] = field(default_factory=list)
    actions: list[str] = field(default_factory=list)
    crtm: list[str] = field(default_factory=list)
    blobs: list[tuple[str | None, int, int]] = field(default_factory=list)
    tables: list[str] = field(default_factory=list)
    config_flags: list[str] = field(default_factory=list)
    stub_tags: list[str] = field(default_factory=list)
    sipa_blocks: list[tuple[int | None, tuple[sipa.SipaEvent, ...]]] = field(default_factory=list)
    quirks: list[QuirkUse] = field(default_factory=list)
    anomalies: list[Anomaly] = field(default_factory=list)
    decoded: dict[int, DecodedEvent] = field(default_factory=dict)
    sipa_sources: dict[int, Event] = field(default_factory=dict)

    def flag(self, ev: Event, reason: str, detail: str, *, fatal: bool | None = None) -> None:
        is_fatal = ev.pcr in self.fail_closed if fatal is None else fatal
        self.anomalies.append(Anomaly(reason, ev.seq, ev.pcr, ev.type_name, detail, is_fatal))


def _separator(ev: Event, st: _State) -> None:
    if ev.pcr in st.separators:
        st.flag(ev, "tpm.separator.duplicate", f"duplicate separator at event {ev.seq}", fatal=True)
    st.separators.add(ev.pcr)
    if ev.data in _SEPARATOR_ERROR:
        st.flag(ev, "tpm.separator.error", f"separator value {ev.data.hex()}", fatal=True)
    elif ev.data not in _SEPARATOR_OK:
        st.flag(ev, "tpm.separator.unexpected_value", f"separator data {ev.data[:16].hex()}")


def _driver_config(ev: Event, st: _State) -> None:
    var = decode_uefi_variable_data(ev.data, base=ev.data_offset, seq=ev.seq)
    st.decoded[ev.seq] = DecodedEvent(ev.pcr, ev.event_type, ev.data, variable=var)
    if ev.pcr == st.sb_pcr:
        if var.name in st.sb_vars:
            st.flag(ev, "tpm.secureboot.duplicate_variable", var.name, fatal=True)
        if ev.pcr in st.separators:
            st.flag(ev, "tpm.secureboot.variable_after_separator", var.name, fatal=True)
        st.sb_vars.add(var.name)
    if var.name == "SecureBoot" and var.variable_guid == EFI_GLOBAL_VARIABLE_GUID:
        value = var.variable_data
        if not value:
            st.flag(ev, "tpm.secureboot.variable_empty", "SecureBoot has 0 bytes", fatal=False)
            st.secure_boot = False
        elif len(value) == 1 and value[0] in (0, 1):
            st.secure_boot = value[0] == 1
        else:
            st.flag(ev, "tpm.secureboot.invalid_value", f"SecureBoot = {value[:8].hex()}", fatal=True)
    elif var.name in KEY_DATABASES:
        st.dbs.append(KeyDatabase(var.name, var.variable_guid, ev.seq, _key_entries(var, ev.seq)))


_KEY_ENTRIES: BoundedCache[bytes, tuple[KeyEntry, ...]] = BoundedCache("key_entries", 64)


def _key_entries(var: UefiVariableData, seq: int) -> tuple[KeyEntry, ...]:
    """The entries of a PK/KEK/db/dbx value; remembered by the SHA-256 of the value (a fleet
    measures the same databases; entries hold no offsets, failures are not remembered)."""
    value = var.variable_data

    def decode() -> tuple[KeyEntry, ...]:
        lists = decode_signature_lists(value, base=var.data_offset, seq=seq)
        return tuple(
            KeyEntry(e.kind, e.owner, e.digest, e.subject) for lst in lists for e in lst.entries
        )

    if len(value) > CACHED_VALUE_MAX:
        return decode()
    return _KEY_ENTRIES.get_or_compute(hashlib.sha256(value).digest(), decode)


def _authority(ev: Event, st: _State) -> None:
    var = decode_uefi_variable_data(
        ev.data, base=ev.data_offset, seq=ev.seq, allow_trailing=True
    )
    after = st.sb_pcr in st.separators
    value = var.variable_data
    if var.name in _CERT_AUTHORITIES:
        e = decode_signature_data(value, base=var.data_offset, seq=ev.seq)
        auth = Authority(ev.seq, var.name, e.kind, e.owner, e.digest, e.subject, after)
    else:
        digest = hashlib.sha256(value).digest()
        auth = Authority(ev.seq, var.name, "variable", var.variable_guid, digest, None, after)
    st.authorities.append(auth)
    st.pending_auth.append(ev.seq)


def _image(ev: Event, st: _State) -> None:
    img = decode_image_load_event(ev.data, base=ev.data_offset, seq=ev.seq)
    kind = _IMAGE_TYPES[ev.event_type]
    st.apps.append(
        BootApplication(
            ev.seq, ev.pcr, kind, img.device_path.text, img.device_path.file_path,
            dict(ev.digests), tuple(st.pending_auth),
        )
    )
    st.pending_auth.clear()


def _boot_variable(ev: Event, st: _State) -> None:
    var = decode_uefi_variable_data(ev.data, base=ev.data_offset, seq=ev.seq)
    if var.name == "BootOrder":
        st.boot_order = decode_boot_order(var.variable_data, base=var.data_offset, seq=ev.seq)
    elif _BOOT_OPTION.match(var.name):
        opt = decode_load_option(var.variable_data, base=var.data_offset, seq=ev.seq)
        st.options.append(BootOption(var.name, opt.description, opt.device_path.text, opt.active))


def _ipl(ev: Event, st: _State, ipl: IplString) -> None:
    """``ipl`` is ``ev``'s data decoded by :func:`_check` (for its binding)."""
    st.decoded[ev.seq] = DecodedEvent(ev.pcr, ev.event_type, ev.data, ipl=ipl)
    if ipl.is_kernel_cmdline:
        st.cmdlines.append(ipl.text)
    elif ipl.kind in ("grub_cmd", "grub_legacy_cmd"):
        st.grub_cmds += 1
    elif ipl.kind == "shim_mok":
        st.moks.append(ipl.text)


def _action(ev: Event, st: _State) -> None:
    text = ev.data.decode("ascii", "replace")
    st.actions.append(text)
    if ev.pcr == st.sb_pcr and text == "UEFI Debug Mode":
        st.uefi_debug = True
        st.flag(ev, "tpm.uefi.debug_mode", text, fatal=False)
    elif ev.pcr == st.sb_pcr and text == "DMA Protection Disabled":
        st.dma_off = True


def _crtm_version(ev: Event, st: _State) -> None:
    """EV_S_CRTM_VERSION (PFP 10.4.1): UTF-16 text (UEFI), ASCII (some TCG 1.2 BIOSes), or
    binary such as a GUID (kept as hex). An empty UTF-16 string (``00 00``) is ``""``."""
    data = ev.data
    ascii_text = data.rstrip(b"\x00")
    if len(data) >= 2 and len(data) % 2 == 0 and data[1:2] == b"\x00":
        st.crtm.append(decode_utf16_string(data, base=ev.data_offset, seq=ev.seq))
    elif ascii_text and all(0x20 <= b < 0x7F for b in ascii_text):
        st.crtm.append(ascii_text.decode("ascii"))
    else:
        st.crtm.append(data.hex())


def _blob(ev: Event, st: _State) -> None:
    if ev.event_type == EventType.EV_EFI_PLATFORM_FIRMWARE_BLOB2:
        b = decode_firmware_blob2(ev.data, base=ev.data_offset, seq=ev.seq)
    elif len(ev.data) == 16:
        b = decode_firmware_blob(ev.data, base=ev.data_offset, seq=ev.seq)
    elif ev.event_type == EventType.EV_EFI_PLATFORM_FIRMWARE_BLOB:
        b = decode_firmware_blob(ev.data, base=ev.data_offset, seq=ev.seq)  # raises: wrong size
    else:  # EV_POST_CODE / EV_S_CRTM_CONTENTS carrying a string such as "ACPI DATA"
        st.blobs.append((ev.data.split(b"\x00", 1)[0].decode("ascii", "replace"), 0, 0))
        return
    st.blobs.append((b.description, b.blob_base, b.blob_length))


def _handoff(ev: Event, st: _State) -> None:
    if ev.event_type == EventType.EV_EFI_HANDOFF_TABLES2:
        t = decode_handoff_tables2(ev.data, base=ev.data_offset, seq=ev.seq)
    else:
        t = decode_handoff_tables(ev.data, base=ev.data_offset, seq=ev.seq)
    st.tables.extend(guid_name(g) for g, _ in t.tables)


def _config_flags(ev: Event, st: _State) -> None:
    """EV_PLATFORM_CONFIG_FLAGS is vendor-defined (PFP 10.4.1): printable ASCII is kept as
    text ("FeatureTME=0", "ACPI DATA"), anything else as hex, both cut at 256 bytes."""
    data = ev.data[:256]
    text = data.rstrip(b"\x00")
    if text and all(0x20 <= b < 0x7F for b in text):
        st.config_flags.append(text.decode("ascii"))
    else:
        st.config_flags.append(data.hex())


def _event_tag(ev: Event, st: _State) -> None:
    tag = sipa.decode_tagged_event(ev.data, base=ev.data_offset, seq=ev.seq)
    if tag.event_id == LINUX_EFI_INITRD_TAG:
        st.stub_tags.append("initrd")
    elif tag.event_id == LINUX_EFI_LOAD_OPTIONS_TAG:
        st.stub_tags.append("load_options")
    elif st.windows and ev.pcr in _WINDOWS_PCRS:
        events = sipa.decode_sipa_events(ev.data, base=ev.data_offset, seq=ev.seq)
        st.sipa_blocks.append((ev.seq, events))
        st.sipa_sources[ev.seq] = ev


#: Event type -> interpreter (EV_IPL is handled apart: :func:`_check` decodes it once).
_INTERPRETERS: Final[dict[int, Callable[[Event, _State], None]]] = {
    EventType.EV_SEPARATOR: _separator,
    EventType.EV_EFI_VARIABLE_DRIVER_CONFIG: _driver_config,
    EventType.EV_EFI_VARIABLE_AUTHORITY: _authority,
    **dict.fromkeys(_IMAGE_TYPES, _image),
    EventType.EV_EFI_VARIABLE_BOOT: _boot_variable,
    EventType.EV_EFI_VARIABLE_BOOT2: _boot_variable,
    EventType.EV_EFI_ACTION: _action,
    EventType.EV_S_CRTM_VERSION: _crtm_version,
    EventType.EV_EFI_PLATFORM_FIRMWARE_BLOB: _blob,
    EventType.EV_EFI_PLATFORM_FIRMWARE_BLOB2: _blob,
    EventType.EV_POST_CODE: _blob,
    EventType.EV_S_CRTM_CONTENTS: _blob,
    EventType.EV_EFI_HANDOFF_TABLES: _handoff,
    EventType.EV_EFI_HANDOFF_TABLES2: _handoff,
    EventType.EV_EVENT_TAG: _event_tag,
    EventType.EV_PLATFORM_CONFIG_FLAGS: _config_flags,
}


def _check(ev: Event, st: _State, registers: str) -> tuple[bool, IplString | None]:
    """Type and binding checks: (False, None) if the data must not be interpreted, else True
    and, for EV_IPL, its decoded data (decoded once, for the binding and for the claims)."""
    t = ev.event_type
    if t not in _KNOWN_TYPES:
        st.flag(ev, "tpm.event.unknown_type", f"event type 0x{t:08x}")
        return False, None
    if registers == "tpm" and ev.pcr == 7 and t not in _PCR7_TYPES:
        st.flag(ev, "tpm.event.unexpected_type", f"{ev.type_name} in PCR 7", fatal=True)
        return False, None
    ipl = None
    if t == EventType.EV_IPL:
        ipl = decode_ipl(ev.data, ev.pcr, base=ev.data_offset, seq=ev.seq)
        result = check_binding_of_payload(ev, ipl.bound)
    else:
        result = check_binding_of_payload(ev, bound_payload(ev))
    status = result.status
    if status == "mismatch":
        banks = ", ".join(result.banks)
        st.flag(ev, "tpm.binding.digest_mismatch", f"banks {banks}", fatal=True)
        return False, None
    if status == "unverifiable":
        st.flag(ev, "tpm.binding.unverifiable", "no hashable bank")
        return False, None
    if status == "quirk" and result.quirk is not None:
        st.quirks.append(QuirkUse(result.quirk, ev.seq))
    return True, ipl


def extract_claims(
    replayed: ReplayResult | Sequence[Event],
    *,
    pcr_values: Mapping[str, Mapping[int, bytes]] | None = None,
    banks: Sequence[str] | None = None,
    measurement_registers: Literal["tpm", "ccel"] = "tpm",
    ima: Iterable[ImaClaim] | None = None,
) -> Claims:
    """Extract :class:`Claims` from replay-verified events.

    Pass the :class:`ReplayResult` of :func:`~services.tpm.replay.verify_replay`: the claims
    are only meaningful for events whose replay matched a quote, and then ``replay_verified``
    is True and banks, PCR values and replay quirks come from it. A plain event sequence is
    accepted for inspection (``replay_verified`` False; ``pcr_values``/``banks`` as given).
    ``measurement_registers="ccel"`` reads an Intel TDX CCEL log (MR 1 holds what PCR 7 would).

    Never raises for bad event data: each undecodable event becomes an :class:`Anomaly`
    (fatal in the fail-closed PCRs, see the module docstring).
    """
    if isinstance(replayed, ReplayResult):
        events: Sequence[Event] = replayed.verified_events
        verified, pcrs = True, replayed.pcrs
        bank_names = tuple(replayed.banks)
        replay_quirks = [QuirkUse(q, -1) for q in replayed.applied_quirks]
    else:
        events, verified, pcrs = replayed, False, pcr_values or {}
        bank_names = tuple(banks) if banks is not None else tuple(pcrs)
        replay_quirks = []
    st = _State(
        _FAIL_CLOSED[measurement_registers],
        _SECURE_BOOT_PCR[measurement_registers],
        windows=measurement_registers == "tpm",
    )
    st.quirks.extend(replay_quirks)
    interpreters = _INTERPRETERS
    for ev in events:
        if ev.event_type == _NO_ACTION or ev.pcr == PCR_NOT_EXTENDED:  # Event.extends, inlined
            continue
        ok, ipl = _check(ev, st, measurement_registers)
        if not ok:
            continue
        try:
            if ipl is not None:
                _ipl(ev, st, ipl)
            else:
                interpret = interpreters.get(ev.event_type)
                if interpret is not None:
                    interpret(ev, st)
        except MalformedInput as exc:
            st.flag(ev, "tpm.event.undecodable", str(exc))
    win = None
    if st.sipa_blocks:
        try:
            win, per_block = sipa.fold_windows_config_with_blocks(st.sipa_blocks)
            for seq, own in per_block:
                src = st.sipa_sources[seq] if seq is not None else None
                if src is not None:
                    st.decoded[src.seq] = DecodedEvent(src.pcr, src.event_type, src.data,
                                                       windows_flags=own)
        except MalformedInput as exc:
            seq = exc.seq if exc.seq is not None else -1
            st.anomalies.append(
                Anomaly("tpm.event.undecodable", seq, 12, "EV_EVENT_TAG", str(exc), True)
            )
    return Claims(
        replay_verified=verified,
        banks=bank_names,
        pcrs={b: dict(v) for b, v in pcrs.items()},
        secure_boot=st.secure_boot,
        uefi_debug_mode=st.uefi_debug,
        dma_protection_disabled=st.dma_off,
        key_databases=tuple(st.dbs),
        authorities=tuple(st.authorities),
        boot_applications=tuple(st.apps),
        boot_order=st.boot_order,
        boot_options=tuple(st.options),
        kernel_cmdlines=tuple(st.cmdlines),
        grub_commands=st.grub_cmds,
        shim_mok_variables=tuple(st.moks),
        efi_actions=tuple(st.actions),
        s_crtm_version=tuple(st.crtm),
        firmware_blobs=tuple(st.blobs),
        handoff_tables=tuple(st.tables),
        platform_config_flags=tuple(st.config_flags),
        linux_efi_stub_tags=tuple(st.stub_tags),
        windows=win,
        quirks_applied=tuple(st.quirks),
        anomalies=tuple(st.anomalies),
        ima=tuple(ima) if ima is not None else None,
        decoded=st.decoded,
    )
