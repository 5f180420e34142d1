"""Claim records: the frozen, JSON-serialisable values :func:`~services.tpm.claims.extract_claims`
returns (:class:`Claims` and the records it holds).

They are defined apart from extraction so the per-event readings
(:mod:`services.tpm.readings`) and the fold (:mod:`services.tpm.claims`) share them;
:mod:`services.tpm.claims` re-exports every name here.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields, is_dataclass
from types import MappingProxyType
from typing import Any, Final

from services.tpm import sipa
from services.tpm.eventlog import Event, event_type_name
from services.tpm.ipl import IplString
from services.tpm.pcr_types import allowed_types
from services.tpm.uefi import UefiVariableData

__all__ = [
    "CLAIMS_FROM_DATA",
    "UNVERIFIED_DATA",
    "Anomaly",
    "Authority",
    "BootApplication",
    "BootOption",
    "Claims",
    "DecodedEvent",
    "ImaClaim",
    "KeyDatabase",
    "KeyEntry",
    "LoadOptions",
    "PossibleCmdline",
    "QuirkUse",
    "claims_an_unverified_event_may_hold",
]


UNVERIFIED_DATA: Final = "tpm.binding.data_unverified"
"""The anomaly of informational data that does not hash to its digest
(:mod:`services.tpm.binding_consequences`)."""

CLAIMS_FROM_DATA: Final[Mapping[str, frozenset[str]]] = MappingProxyType({
    "EV_S_CRTM_VERSION": frozenset({"s_crtm_version"}),
    "EV_EFI_VARIABLE_BOOT": frozenset({"boot_order", "boot_options"}),
    "EV_EFI_VARIABLE_BOOT2": frozenset({"boot_order", "boot_options"}),
    "EV_EFI_GPT_EVENT": frozenset(),
    "EV_ACTION": frozenset(),
    # what the fold reads from the other labels of PCRs 0, 1, 3, 5 and 6 (section below)
    "EV_EFI_VARIABLE_DRIVER_CONFIG": frozenset({"secure_boot", "key_databases"}),
    "EV_EFI_ACTION": frozenset({"efi_actions", "uefi_debug_mode", "dma_protection_disabled"}),
    "EV_SEPARATOR": frozenset(),
    **dict.fromkeys(("EV_POST_CODE", "EV_S_CRTM_CONTENTS", "EV_EFI_PLATFORM_FIRMWARE_BLOB",
                     "EV_EFI_PLATFORM_FIRMWARE_BLOB2"), frozenset({"firmware_blobs"})),
    **dict.fromkeys(("EV_EFI_HANDOFF_TABLES", "EV_EFI_HANDOFF_TABLES2"),
                    frozenset({"handoff_tables"})),
    "EV_PLATFORM_CONFIG_FLAGS": frozenset({"platform_config_flags"}),
    "EV_EVENT_TAG": frozenset({"linux_efi_stub_tags", "kernel_load_options", "windows"}),
    **dict.fromkeys(("EV_POST_CODE2", "EV_NONHOST_CODE", "EV_NONHOST_CONFIG", "EV_NONHOST_INFO",
                     "EV_EFI_HCRTM_EVENT", "EV_EFI_SPDM_FIRMWARE_BLOB",
                     "EV_EFI_SPDM_FIRMWARE_CONFIG", "EV_TABLE_OF_DEVICES", "EV_CPU_MICROCODE",
                     "EV_EFI_GPT_EVENT2", "EV_IPL_PARTITION_DATA", "EV_COMPACT_HASH"),
                    frozenset()),
})
"""Event type -> the :class:`Claims` fields the fold reads from its data, for every type a PCR
whose data may be informational allows (``services.tpm.claims`` folds these; the GPT and
``EV_ACTION`` are bound and not read). Any other type is taken to affect every claim. The type
of an event is not covered by its digest, so an unverified event is taken to be any type its
PCR allows (:func:`claims_an_unverified_event_may_hold`)."""


def claims_an_unverified_event_may_hold(pcr: int) -> frozenset[str] | None:
    """The claims an event of ``pcr`` whose data does not hash to its digest may have been meant
    to feed, whatever its (unhashed) label says: what every type allowed in ``pcr`` feeds (None:
    every claim). Informational data exists only in TPM logs (every CCEL register is
    security-relevant), so the TPM table is the one."""
    out: set[str] = set()
    for t in sorted(allowed_types("tpm", pcr)):
        read = CLAIMS_FROM_DATA.get(event_type_name(t))
        if read is None:
            return None
        out |= read
    return frozenset(out)


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
    """Code that ran, in log order: an EV_EFI_BOOT_SERVICES_APPLICATION / *_DRIVER image, or
    (``kind`` ``"opaque"``) any other event of a code PCR whose digest is not over its data.

    ``digests`` are the event's (Authenticode) digests. ``authorities`` are the seqs of the
    authority events the log happens to place since the previous image: informational only,
    since nothing covers the order of events in different PCRs (rules never pair on it)."""

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
    violation: bool = False
    """A measurement violation: the kernel extended all-``0xFF``, so nothing covers the entry's
    path or file hash (``services.tpm.ima_replay``)."""


@dataclass(frozen=True, slots=True)
class LoadOptions:
    """The Linux EFI stub's measurement of the load options it took its command line from
    (``EV_EVENT_TAG``, tag ``LINUX_EFI_LOAD_OPTIONS_TAG``, PCR 9): only their digests are in
    the log, so a policy confirms them against the command lines the boot loaders measured."""

    seq: int
    digests: Mapping[str, bytes]


@dataclass(frozen=True, slots=True)
class PossibleCmdline:
    """An event of a command-line PCR that is not labelled as a boot-loader string but whose
    data, hashed whole, could be the UTF-16 command line systemd-stub measures there (no NUL
    before its end): the label is not hashed, so the data is judged as a command line too."""

    seq: int
    event_type: str
    text: str


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
    unverified_boot_strings: tuple[int, ...] = ()
    """Seqs of boot-loader strings (EV_IPL in PCRs 8 and 12, where command lines are measured)
    whose digest is not over their data (older systemd-boot, pre-upstream GRUB): what they say
    cannot be confirmed, so a command-line rule fails while any is present. Also every such
    string whose data does not decode, and every bound event of those PCRs whose data would be
    a UTF-16 command line that does not decode."""
    kernel_load_options: tuple[LoadOptions, ...] = ()
    possible_cmdlines: tuple[PossibleCmdline, ...] = ()
    decoded: Mapping[int, DecodedEvent] = field(
        default_factory=dict, compare=False, repr=False
    )
    """Provenance by event seq (:class:`DecodedEvent`); excluded from :meth:`to_json_dict`."""

    @property
    def failed_closed(self) -> bool:
        """True if any anomaly is fatal: a policy must fail this evidence."""
        return any(a.fatal for a in self.anomalies)

    def unverified_claim(self, name: str) -> Anomaly | None:
        """The first ``tpm.binding.data_unverified`` anomaly of an event whose data the claim
        ``name`` (a field of this class) would have been read from, or None. A claim so marked
        is incomplete: a rule reading it cannot be confirmed (issue 20)."""
        for a in self.anomalies:
            if a.reason != UNVERIFIED_DATA:
                continue
            read = claims_an_unverified_event_may_hold(a.pcr)  # any label its PCR allows
            if read is None or name in read:  # an unlisted type: any claim may be affected
                return a
        return None

    def database(self, name: str) -> KeyDatabase | None:
        """The last measured key database called ``name`` (``"db"``), if any."""
        found = [d for d in self.key_databases if d.name == name]
        return found[-1] if found else None

    def to_json_dict(
        self, *, key_entries: Callable[[tuple[KeyEntry, ...]], Any] | None = None
    ) -> dict[str, Any]:
        """A JSON-ready dict: field order as declared, bytes as lowercase hex, mapping keys
        sorted (PCR indices as decimal strings, numerically ordered). Provenance
        (:attr:`decoded`) is not included. ``key_entries``, if given, writes each key
        database's entry list instead (a verdict writer that has them as JSON text already)."""
        if key_entries is None:
            out = _json(self)
        else:
            out = {}
            for name in _field_names(Claims):
                if name == "key_databases":
                    out[name] = [{f: key_entries(db.entries) if f == "entries"
                                  else _json(getattr(db, f)) for f in _field_names(KeyDatabase)}
                                 for db in self.key_databases]
                else:
                    out[name] = _json(getattr(self, name))
        out["failed_closed"] = self.failed_closed
        assert isinstance(out, dict)
        return out


def key_entries_json(entries: tuple[KeyEntry, ...]) -> list[dict[str, Any]]:
    """A key database's entries as :meth:`Claims.to_json_dict` writes them."""
    out = _json(entries)
    assert isinstance(out, list)
    return out


_NOT_JSON: Final = frozenset({"decoded"})
_SCALARS: Final = frozenset({str, int, bool, float, type(None)})


def _names_of(cls: type) -> tuple[str, ...]:
    return tuple(f.name for f in fields(cls) if f.name not in _NOT_JSON)


def _field_names(cls: type) -> tuple[str, ...]:
    names = _FIELD_NAMES.get(cls)
    return names if names is not None else _names_of(cls)


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
    names = _FIELD_NAMES.get(t)
    if names is None and t is not dict and is_dataclass(value) and not isinstance(value, type):
        names = _field_names(t)
    if names is not None:
        out: dict[str, Any] = {}
        for name in names:
            v = getattr(value, name)
            vt = type(v)
            if vt in _SCALARS:
                out[name] = v
            elif vt is bytes:
                out[name] = v.hex()
            elif vt is tuple and not v:  # most record lists of a log are empty
                out[name] = []
            else:
                out[name] = _json(v)
        return out
    if t is not dict and isinstance(value, bytes):
        return value.hex()
    if t is dict or isinstance(value, Mapping):
        try:
            keys = sorted(value)  # one key type (PCR indices, bank names): its natural order
        except TypeError:
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


def _record_classes() -> list[type]:
    """The dataclasses defined here and in :mod:`services.tpm.sipa`: what a Claims holds."""
    found = [*globals().values(), *vars(sipa).values()]
    return [v for v in found if isinstance(v, type) and is_dataclass(v)
            and v.__module__ in (__name__, sipa.__name__)]


_FIELD_NAMES: Final[Mapping[type, tuple[str, ...]]] = MappingProxyType(
    {cls: _names_of(cls) for cls in _record_classes()})
"""JSON field names per record class, computed at import; :func:`_json` reflects on any other
dataclass afresh."""
