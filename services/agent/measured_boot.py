"""Synthesised measured boots: what a real host's firmware, shim/GRUB or bootmgr would log.

``synthesise(image, host_seed, config)`` returns the ordered events of one boot (crypto-agile,
SHA-1 + SHA-256). The simulator extends exactly these digests into its software TPM, so the
log built from them (``services.tpm.eventlog_builder.build_log``) replays to the quoted PCRs.

A small catalogue of golden images (``IMAGES``) fixes the vendor keys, boot binaries and
command lines; ``BootConfig`` holds the knobs a compromise changes (see ``agent.tamper``).
Everything is deterministic per ``(image, host_seed, config)``: keys are Ed25519 (deterministic
signatures) derived from the image name, certificates have fixed serials and dates. The host
seed only moves load addresses, which no digest covers, so all clean hosts of one image have
identical PCRs — which is what a golden-image policy expects.
"""

from __future__ import annotations

import datetime
import hashlib
import struct
import uuid
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Literal

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.x509.oid import NameOID

from services.agent import uefi
from services.agent.swtpm import PCR_BANKS
from services.errors import HostgateError
from services.tpm.eventlog_builder import (
    BANK_ALG_IDS,
    TPM_ALG_SHA256,
    LogEvent,
    build_log,
    expected_pcrs,
    hash_with,
    measure,
    measure_digests,
)

# TCG PC Client PFP 1.05, 10.4.1 event types.
EV_POST_CODE = 0x00000001
EV_SEPARATOR = 0x00000004
EV_ACTION = 0x00000005
EV_EVENT_TAG = 0x00000006
EV_S_CRTM_VERSION = 0x00000008
EV_IPL = 0x0000000D
EV_EFI_VARIABLE_DRIVER_CONFIG = 0x80000001
EV_EFI_VARIABLE_BOOT = 0x80000002
EV_EFI_BOOT_SERVICES_APPLICATION = 0x80000003
EV_EFI_ACTION = 0x80000007
EV_EFI_PLATFORM_FIRMWARE_BLOB = 0x80000008
EV_EFI_VARIABLE_AUTHORITY = 0x800000E0

#: The banks every simulated host allocates and logs (``swtpm.PCR_BANKS``), as algorithm ids.
ALGS: tuple[int, ...] = tuple(BANK_ALG_IDS[bank] for bank in PCR_BANKS)
SEPARATOR_DATA = b"\x00\x00\x00\x00"
WBCL_SEPARATOR = b"WBCL"
CALLING_BOOT_OPTION = b"Calling EFI Application from Boot Option"
EXIT_BOOT_SERVICES = b"Exit Boot Services Invocation"
EXIT_BOOT_SERVICES_OK = b"Exit Boot Services Returned with Success"
#: SIPA loaded-module records carry the image base inside hashed data (PCR 13), so it must not
#: vary per host or clean hosts of one image would differ.
_WINDOWS_MODULE_BASE = 0x140000000
_EPOCH = datetime.datetime(2020, 1, 1, tzinfo=datetime.UTC)
_NOT_AFTER = datetime.datetime(2049, 12, 31, tzinfo=datetime.UTC)


class UnknownImage(HostgateError):
    """A golden-image name that is not in the catalogue."""


@dataclass(frozen=True)
class BootBinary:
    """A boot binary. Its content is synthetic; its digests stand for Authenticode hashes."""

    name: str
    path: str
    content: bytes

    def authenticode(self, alg: int) -> bytes:
        """The image's (stand-in) Authenticode digest with ``alg``."""
        return hash_with(alg, self.content)


@dataclass(frozen=True)
class GoldenImage:
    """One approved OS image and its platform: vendor keys, boot chain, command line."""

    name: str
    family: Literal["linux", "windows"]
    firmware_version: str
    boot_entry: str
    boot_chain: tuple[str, ...]
    kernel_version: str = ""
    kernel_cmdline: str = ""


IMAGES: dict[str, GoldenImage] = {
    "ubuntu-24.04-shim": GoldenImage(
        name="ubuntu-24.04-shim", family="linux", firmware_version="SIM-FW 2.14.1",
        boot_entry="ubuntu", boot_chain=("shimx64.efi", "grubx64.efi", "vmlinuz"),
        kernel_version="6.8.0-45-generic",
        kernel_cmdline="root=UUID=5b1a0f2e-7a53-4d0e-9b52-0c1d2e3f4a5b ro quiet splash",
    ),
    "fedora-40-shim": GoldenImage(
        name="fedora-40-shim", family="linux", firmware_version="SIM-FW 1.22.0",
        boot_entry="Fedora", boot_chain=("shimx64.efi", "grubx64.efi", "vmlinuz"),
        kernel_version="6.10.6-200.fc40.x86_64",
        kernel_cmdline="root=UUID=1c2d3e4f-5a6b-4c7d-8e9f-a0b1c2d3e4f5 ro rhgb quiet",
    ),
    "windows-server-2022": GoldenImage(
        name="windows-server-2022", family="windows", firmware_version="SIM-FW 3.1.7",
        boot_entry="Windows Boot Manager",
        boot_chain=("bootmgfw.efi", "winload.efi", "ntoskrnl.exe", "hal.dll"),
    ),
}


@dataclass(frozen=True)
class BootConfig:
    """What a boot actually did. The defaults are the golden (clean) boot.

    ``bootloader`` selects the second-stage loader: ``golden`` (approved), ``unknown`` (a binary
    no policy knows) or ``revoked`` (an older build whose hash the image's dbx revokes);
    ``kernel`` the Linux kernel GRUB starts last (``golden`` or ``unknown``).
    """

    secure_boot: bool = True
    extra_db_cert: bool = False
    bootloader: Literal["golden", "unknown", "revoked"] = "golden"
    kernel: Literal["golden", "unknown"] = "golden"
    kernel_cmdline_suffix: str = ""
    boot_debugging: bool = False
    kernel_debugger: bool = False
    test_signing: bool = False
    code_integrity: bool = True


@dataclass(frozen=True)
class MeasuredBoot:
    """One synthesised boot: the events in measurement order and the banks they cover."""

    image: str
    host_seed: int
    config: BootConfig
    events: tuple[LogEvent, ...]
    algs: tuple[int, ...] = field(default=ALGS)

    def log_bytes(self) -> bytes:
        """The crypto-agile TCG log of this boot."""
        return build_log(self.events, self.algs)

    def pcrs(self) -> dict[int, dict[int, bytes]]:
        """PCR values (``alg -> pcr -> value``) a TPM that measured this boot holds."""
        return expected_pcrs(self.events, self.algs)


def get_image(name: str) -> GoldenImage:
    """The catalogue entry ``name``; raises ``UnknownImage`` listing the known ones."""
    try:
        return IMAGES[name]
    except KeyError as exc:
        raise UnknownImage(f"unknown golden image {name!r}; known: {', '.join(IMAGES)}") from exc


def _seed(*parts: str) -> bytes:
    return hashlib.sha256("\x1f".join(("hostgate-sim", *parts)).encode()).digest()


def _owner(image: str, role: str) -> uuid.UUID:
    return uuid.UUID(bytes=_seed(image, "owner", role)[:16], version=4)


@lru_cache(maxsize=64)
def _cert(image: str, role: str, common_name: str, issuer_role: str | None) -> bytes:
    """A deterministic DER certificate for ``role``, signed by ``issuer_role`` (or self)."""
    key = Ed25519PrivateKey.from_private_bytes(_seed(image, "key", role))
    issuer_key = key if issuer_role is None else Ed25519PrivateKey.from_private_bytes(
        _seed(image, "key", issuer_role))
    subject = x509.Name([
        x509.NameAttribute(NameOID.ORGANIZATION_NAME, "hostgate simulated vendor"),
        x509.NameAttribute(NameOID.COMMON_NAME, common_name),
    ])
    issuer = subject if issuer_role is None else x509.Name([
        x509.NameAttribute(NameOID.ORGANIZATION_NAME, "hostgate simulated vendor"),
        x509.NameAttribute(NameOID.COMMON_NAME, f"{image} {issuer_role}"),
    ])
    serial = int.from_bytes(_seed(image, "serial", role)[:16], "big") >> 1
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject).issuer_name(issuer)
        .public_key(key.public_key()).serial_number(serial)
        .not_valid_before(_EPOCH).not_valid_after(_NOT_AFTER)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(issuer_key, None)
    )
    return cert.public_bytes(serialization.Encoding.DER)


def image_cert(image: str, role: str) -> bytes:
    """The DER certificate an image uses in ``role`` (pk, kek, db-os, db-ca, db-extra, vendor)."""
    issuer = {"pk": None, "kek": "pk", "db-os": "kek", "db-ca": "kek", "vendor": "db-ca",
              "db-extra": None}[role]
    return _cert(image, role, f"{image} {role}", issuer)


def boot_binary(image: str, name: str, variant: str = "golden") -> BootBinary:
    """The synthetic binary ``name`` of ``image`` in ``variant`` (golden/unknown/revoked)."""
    paths = {
        "shimx64.efi": r"\EFI\BOOT\shimx64.efi",
        "grubx64.efi": r"\EFI\BOOT\grubx64.efi",
        "vmlinuz": r"\vmlinuz",
        "bootmgfw.efi": r"\EFI\Microsoft\Boot\bootmgfw.efi",
        "winload.efi": r"\Windows\system32\winload.efi",
        "ntoskrnl.exe": r"\Windows\system32\ntoskrnl.exe",
        "hal.dll": r"\Windows\system32\hal.dll",
    }
    content = b"MZ" + _seed(image, "binary", name, variant) * 64
    return BootBinary(name, paths[name], content)


def _dbx_hashes(image: str) -> list[bytes]:
    revoked = boot_binary(image, "grubx64.efi", "revoked").authenticode(TPM_ALG_SHA256)
    return [revoked, *(_seed(image, "dbx", str(i)) for i in range(3))]


def _variable_events(image: str, cfg: BootConfig) -> list[LogEvent]:
    """PCR 7 Secure Boot policy: SecureBoot, PK, KEK, db, dbx (EV_EFI_VARIABLE_DRIVER_CONFIG)."""
    owner = _owner(image, "vendor")
    db = [image_cert(image, "db-os"), image_cert(image, "db-ca")]
    if cfg.extra_db_cert:
        db.append(image_cert(image, "db-extra"))
    variables = [
        (uefi.EFI_GLOBAL_VARIABLE, "SecureBoot", b"\x01" if cfg.secure_boot else b"\x00"),
        (uefi.EFI_GLOBAL_VARIABLE, "PK", uefi.x509_signature_db(owner, [image_cert(image, "pk")])),
        (uefi.EFI_GLOBAL_VARIABLE, "KEK",
         uefi.x509_signature_db(owner, [image_cert(image, "kek")])),
        (uefi.EFI_IMAGE_SECURITY_DATABASE_GUID, "db", uefi.x509_signature_db(owner, db)),
        (uefi.EFI_IMAGE_SECURITY_DATABASE_GUID, "dbx",
         uefi.sha256_signature_db(owner, _dbx_hashes(image))),
    ]
    return [measure(7, EV_EFI_VARIABLE_DRIVER_CONFIG, uefi.uefi_variable_data(g, n, d), ALGS)
            for g, n, d in variables]


def _platform_events(img: GoldenImage, seed: int, cfg: BootConfig) -> list[LogEvent]:
    """Firmware up to and including the separators in PCRs 0-7."""
    fw_base = 0xFF000000 + (seed % 16) * 0x10000
    events = [
        measure(0, EV_S_CRTM_VERSION, uefi.ucs2(img.firmware_version), ALGS),
        measure(0, EV_EFI_PLATFORM_FIRMWARE_BLOB, uefi.firmware_blob(fw_base, 0x200000), ALGS,
                hashed=_seed(img.name, "fv-main") * 512),
        measure(0, EV_EFI_PLATFORM_FIRMWARE_BLOB, uefi.firmware_blob(fw_base + 0x200000, 0x80000),
                ALGS, hashed=_seed(img.name, "fv-dxe") * 512),
        *_variable_events(img.name, cfg),
        measure(1, EV_EFI_VARIABLE_BOOT,
                uefi.uefi_variable_data(uefi.EFI_GLOBAL_VARIABLE, "BootOrder",
                                        struct.pack("<H", 1)), ALGS),
        measure(1, EV_EFI_VARIABLE_BOOT,
                uefi.uefi_variable_data(uefi.EFI_GLOBAL_VARIABLE, "Boot0001",
                                        uefi.load_option(img.boot_entry,
                                                         boot_binary(img.name,
                                                                     img.boot_chain[0]).path)),
                ALGS),
        measure(4, EV_EFI_ACTION, CALLING_BOOT_OPTION, ALGS),
    ]
    events += [measure(pcr, EV_SEPARATOR, SEPARATOR_DATA, ALGS) for pcr in range(8)]
    return events


def _app(binary: BootBinary, base: int) -> LogEvent:
    data = uefi.image_load_event(base, len(binary.content), binary.path)
    return measure_digests(4, EV_EFI_BOOT_SERVICES_APPLICATION, data,
                           {a: binary.authenticode(a) for a in ALGS})


def _authority(guid: uuid.UUID, name: str, payload: bytes) -> LogEvent:
    """EV_EFI_VARIABLE_AUTHORITY: the db entry (or shim vendor cert) that verified an image."""
    return measure(7, EV_EFI_VARIABLE_AUTHORITY, uefi.uefi_variable_data(guid, name, payload),
                   ALGS)


def _ipl_string(pcr: int, prefix: str, text: str) -> LogEvent:
    """GRUB's string measurement: data ``"<prefix>: <text>\\0"``, digest over ``text`` only."""
    return measure(pcr, EV_IPL, f"{prefix}: {text}".encode() + b"\x00", ALGS,
                   hashed=text.encode())


#: Where the Linux boot loads each PCR 4 application, from the host's load base.
_LINUX_APP_OFFSETS = {"shimx64.efi": 0, "grubx64.efi": 0x100000, "vmlinuz": 0x400000}


def _linux_base(seed: int) -> int:
    return 0x7E000000 + (seed % 256) * 0x1000


def boot_application_event(image: str, host_seed: int, name: str,
                           variant: str = "golden") -> LogEvent:
    """The PCR 4 ``EV_EFI_BOOT_SERVICES_APPLICATION`` a Linux boot of ``image`` on host
    ``host_seed`` logs when it loads ``name`` in ``variant``: byte for byte what ``synthesise``
    logs (a rooted host appending "the approved kernel" writes exactly this)."""
    img = get_image(image)
    if img.family != "linux" or name not in _LINUX_APP_OFFSETS:
        raise UnknownImage(f"{image} does not load {name!r} as a PCR 4 application here")
    return _app(boot_binary(image, name, variant),
                _linux_base(host_seed) + _LINUX_APP_OFFSETS[name])


def _linux_events(img: GoldenImage, seed: int, cfg: BootConfig) -> list[LogEvent]:
    base = _linux_base(seed)
    shim = boot_binary(img.name, "shimx64.efi")
    grub = boot_binary(img.name, "grubx64.efi", cfg.bootloader)
    kernel = boot_binary(img.name, "vmlinuz", cfg.kernel)
    owner = _owner(img.name, "vendor")
    events: list[LogEvent] = []
    if cfg.secure_boot:
        events.append(_authority(uefi.EFI_IMAGE_SECURITY_DATABASE_GUID, "db",
                                 uefi.signature_data(owner, image_cert(img.name, "db-ca"))))
    events.append(_app(shim, base + _LINUX_APP_OFFSETS["shimx64.efi"]))
    if cfg.secure_boot:
        events.append(_authority(uefi.SHIM_LOCK_GUID, "Shim",
                                 image_cert(img.name, "vendor")))
    events.append(_app(grub, base + _LINUX_APP_OFFSETS["grubx64.efi"]))
    kernel_path = f"/vmlinuz-{img.kernel_version}"
    cmdline = img.kernel_cmdline + cfg.kernel_cmdline_suffix
    for cmd in ("set root='hd0,gpt2'", f"linux {kernel_path} {cmdline}",
                f"initrd /initrd.img-{img.kernel_version}"):
        events.append(_ipl_string(8, "grub_cmd", cmd))
    events.append(_ipl_string(8, "kernel_cmdline", f"{kernel_path} {cmdline}"))
    events.append(measure(9, EV_IPL, f"/boot{kernel_path}".encode() + b"\x00", ALGS,
                          hashed=kernel.content))
    events.append(measure(9, EV_IPL, f"/boot/initrd.img-{img.kernel_version}".encode() + b"\x00",
                          ALGS, hashed=_seed(img.name, "initrd") * 256))
    events.append(_app(kernel, base + _LINUX_APP_OFFSETS["vmlinuz"]))
    return events


def _windows_events(img: GoldenImage, seed: int, cfg: BootConfig) -> list[LogEvent]:
    base = 0x10000000 + (seed % 256) * 0x10000
    owner = _owner(img.name, "vendor")
    bootmgr = boot_binary(img.name, "bootmgfw.efi")
    events: list[LogEvent] = []
    if cfg.secure_boot:
        events.append(_authority(uefi.EFI_IMAGE_SECURITY_DATABASE_GUID, "db",
                                 uefi.signature_data(owner, image_cert(img.name, "db-os"))))
    events.append(_app(bootmgr, base))
    pre_os = uefi.tagged_event(uefi.SIPA_TRUST_BOUNDARY, b"".join((
        uefi.sipa(uefi.SIPA_BOOT_COUNTER, struct.pack("<Q", 1)),
        uefi.sipa_bool(uefi.SIPA_BOOT_DEBUGGING, cfg.boot_debugging),
    )))
    events.append(measure(12, EV_EVENT_TAG, pre_os, ALGS))
    modules = []
    for i, name in enumerate(img.boot_chain[1:]):
        binary = boot_binary(img.name, name)
        modules.append(uefi.loaded_module(binary.path, len(binary.content),
                                          binary.authenticode(TPM_ALG_SHA256),
                                          _WINDOWS_MODULE_BASE + (i + 1) * 0x200000))
    events.append(measure(13, EV_EVENT_TAG,
                          uefi.tagged_event(uefi.SIPA_TRUST_BOUNDARY, b"".join(modules)), ALGS))
    os_params = uefi.tagged_event(uefi.SIPA_TRUST_BOUNDARY, b"".join((
        uefi.sipa_bool(uefi.SIPA_OS_KERNEL_DEBUG, cfg.kernel_debugger),
        uefi.sipa_bool(uefi.SIPA_CODE_INTEGRITY, cfg.code_integrity),
        uefi.sipa_bool(uefi.SIPA_TEST_SIGNING, cfg.test_signing),
        uefi.sipa(uefi.SIPA_DATA_EXECUTION_PREVENTION, struct.pack("<Q", 1)),
        uefi.sipa_bool(uefi.SIPA_SAFE_MODE, False),
        uefi.sipa_bool(uefi.SIPA_WIN_PE, False),
        uefi.sipa(uefi.SIPA_HYPERVISOR_LAUNCH_TYPE, struct.pack("<Q", 0)),
    )))
    events.append(measure(12, EV_EVENT_TAG, os_params, ALGS))
    authority = hashlib.sha256(image_cert(img.name, "db-os")).digest()
    events.append(measure(14, EV_EVENT_TAG, uefi.tagged_event(
        uefi.SIPA_TRUST_BOUNDARY, uefi.sipa(uefi.SIPA_AUTHORITY_PUBKEY, authority)), ALGS))
    events.append(measure(12, EV_EVENT_TAG, uefi.tagged_event(
        uefi.SIPA_TRUST_BOUNDARY, uefi.sipa(uefi.SIPA_TRANSFER_CONTROL, struct.pack("<I", 1))),
        ALGS))
    return events


def synthesise(image: str, host_seed: int, config: BootConfig | None = None) -> MeasuredBoot:
    """The measured boot of ``image`` on host ``host_seed`` as configured by ``config``."""
    img = get_image(image)
    cfg = config or BootConfig()
    events = _platform_events(img, host_seed, cfg)
    if img.family == "linux":
        events += _linux_events(img, host_seed, cfg)
    else:
        events += _windows_events(img, host_seed, cfg)
    events += [measure(5, EV_EFI_ACTION, EXIT_BOOT_SERVICES, ALGS),
               measure(5, EV_EFI_ACTION, EXIT_BOOT_SERVICES_OK, ALGS)]
    if img.family == "windows":
        events += [measure(pcr, EV_SEPARATOR, WBCL_SEPARATOR, ALGS) for pcr in (12, 13, 14)]
    return MeasuredBoot(image, host_seed, cfg, tuple(events))
