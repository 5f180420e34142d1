"""UEFI device paths (EFI_DEVICE_PATH_PROTOCOL) to text, bounded.

Reference: UEFI Specification 2.10, section 10.3 "Device Path Nodes" (node layouts) and
section 10.6 "Device Path Text Representation" (the text forms used here, e.g.
``PciRoot(0x0)/Pci(0x1,0x1)/HD(1,GPT,<guid>,0x800,0x100000)/\\EFI\\BOOT\\BOOTX64.EFI``).

Each node is ``Type u8, SubType u8, Length u16`` (length includes the 4-byte header) then
``Length - 4`` bytes. A path ends with the End node ``0x7F/0xFF``; ``0x7F/0x01`` ends one
instance of a multi-instance path (rendered as ``,``). Nodes hostgate does not name are kept as
``Path(type,subtype,hex)``, so the text never hides bytes.

The decoded text is *untrusted*: it says where firmware claims it loaded an image from, and is
only meaningful for events whose replay matched a quote.
"""

from __future__ import annotations

from dataclasses import dataclass

from services.tpm._datareader import DataReader, decode_utf16, format_guid
from services.tpm.memo import Memo

__all__ = [
    "MAX_DEVICE_PATH_BYTES",
    "MAX_DEVICE_PATH_NODES",
    "DevicePath",
    "DevicePathNode",
    "decode_device_path",
]

#: Largest device path accepted (real ones are < 300 bytes; a file path of 1 KiB is generous).
MAX_DEVICE_PATH_BYTES = 8192
#: Most nodes in one path (real ones have < 10).
MAX_DEVICE_PATH_NODES = 64

_HW, _ACPI, _MSG, _MEDIA, _BBS, _END = 0x01, 0x02, 0x03, 0x04, 0x05, 0x7F
_VENDOR_NODES = {(_HW, 0x04): "VenHw", (_MSG, 0x0A): "VenMsg", (_MEDIA, 0x03): "VenMedia"}


@dataclass(frozen=True, slots=True)
class DevicePathNode:
    """One decoded node: raw ``type``/``subtype``/``data`` plus its UEFI text form."""

    type: int
    subtype: int
    data: bytes
    text: str


@dataclass(frozen=True, slots=True)
class DevicePath:
    """A decoded device path (untrusted until replay-verified)."""

    nodes: tuple[DevicePathNode, ...]

    @property
    def text(self) -> str:
        """The UEFI text representation (nodes joined by ``/``, instances by ``,``)."""
        out: list[str] = []
        for node in self.nodes:
            if node.type == _END and node.subtype == 0x01:
                out.append(",")
            elif node.type != _END:
                if out and out[-1] != ",":
                    out.append("/")
                out.append(node.text)
        return "".join(out)

    @property
    def file_path(self) -> str | None:
        """The concatenated Media FilePath nodes (``\\EFI\\BOOT\\BOOTX64.EFI``), if any."""
        parts = [n.text for n in self.nodes if n.type == _MEDIA and n.subtype == 0x04]
        if not parts:
            return None
        joined = ""
        for part in parts:
            if joined and not joined.endswith("\\") and not part.startswith("\\"):
                joined += "\\"
            joined += part
        return joined

    def has_node(self, type_: int, subtype: int) -> bool:
        """Whether any node has this type/subtype (e.g. PCI ``(1, 1)``)."""
        return any(n.type == type_ and n.subtype == subtype for n in self.nodes)


def _eisa(hid: int) -> str:
    """Compressed EISA id (UEFI 10.3.3) to text such as ``PNP0A03``."""
    vendor = hid & 0xFFFF
    letters = "".join(chr(((vendor >> s) & 0x1F) + 0x40) for s in (10, 5, 0))
    return f"{letters}{hid >> 16:04X}"


def _node_text(t: int, s: int, r: DataReader) -> str:
    n = r.remaining
    if t == _HW and s == 0x01 and n == 2:
        function, device = r.u8("pci.function"), r.u8("pci.device")
        return f"Pci(0x{device:x},0x{function:x})"
    if t == _HW and s == 0x03 and n == 20:
        mtype, start, end = r.u32("mmap.type"), r.u64("mmap.start"), r.u64("mmap.end")
        return f"MemoryMapped(0x{mtype:x},0x{start:x},0x{end:x})"
    if (t, s) in _VENDOR_NODES and n >= 16:
        prefix = _VENDOR_NODES[(t, s)]
        guid = r.guid("vendor.guid")
        extra = r.rest().hex()
        return f"{prefix}({guid}{',' + extra if extra else ''})"
    if t == _ACPI and s == 0x01 and n == 8:
        hid, uid = r.u32("acpi.hid"), r.u32("acpi.uid")
        if hid == 0x0A0341D0:
            return f"PciRoot(0x{uid:x})"
        if hid == 0x0A0841D0:
            return f"PcieRoot(0x{uid:x})"
        return f"Acpi({_eisa(hid)},0x{uid:x})"
    if t == _ACPI and s == 0x03 and n >= 4:
        return f"AcpiAdr(0x{r.u32('acpi.adr'):x})"
    if t == _MSG and s == 0x01 and n == 4:
        prim, slave, lun = r.u8("ata.primary"), r.u8("ata.slave"), r.u16("ata.lun")
        return f"Ata({'Secondary' if prim else 'Primary'},{'Slave' if slave else 'Master'},0x{lun:x})"
    if t == _MSG and s == 0x02 and n == 4:
        return f"Scsi(0x{r.u16('scsi.pun'):x},0x{r.u16('scsi.lun'):x})"
    if t == _MSG and s == 0x05 and n == 2:
        return f"USB(0x{r.u8('usb.port'):x},0x{r.u8('usb.interface'):x})"
    if t == _MSG and s == 0x0B and n == 33:
        mac, iftype = r.take(32, "mac.address"), r.u8("mac.iftype")
        size = 6 if iftype in (0, 1) else 32
        return f"MAC({mac[:size].hex()},0x{iftype:x})"
    if t == _MSG and s == 0x0C and n >= 8:
        local, remote = r.take(4, "ipv4.local"), r.take(4, "ipv4.remote")
        return f"IPv4({'.'.join(map(str, remote))},{'.'.join(map(str, local))})"
    if t == _MSG and s == 0x0D:
        return "IPv6()"
    if t == _MSG and s == 0x12 and n == 6:
        hba, pm, lun = r.u16("sata.hba_port"), r.u16("sata.pm_port"), r.u16("sata.lun")
        return f"Sata(0x{hba:x},0x{pm:x},0x{lun:x})"
    if t == _MSG and s == 0x17 and n == 12:
        nsid, eui = r.u32("nvme.nsid"), r.take(8, "nvme.eui")
        return f"NVMe(0x{nsid:x},{'-'.join(f'{b:02X}' for b in reversed(eui))})"
    if t == _MSG and s == 0x18:
        return f"Uri({r.rest().decode('ascii', 'replace')})"
    if t == _MEDIA and s == 0x01 and n == 38:
        return _hard_drive(r)
    if t == _MEDIA and s == 0x02 and n == 20:
        entry, start, size = r.u32("cdrom.entry"), r.u64("cdrom.start"), r.u64("cdrom.size")
        return f"CDROM(0x{entry:x},0x{start:x},0x{size:x})"
    if t == _MEDIA and s == 0x04:
        at = r.pos
        return decode_utf16(r.rest(), r, "filepath.name", at=at)
    if t == _MEDIA and s == 0x05 and n == 16:
        return f"Media({r.guid('media.protocol')})"
    if t == _MEDIA and s == 0x06 and n == 16:
        return f"FvFile({r.guid('fvfile.name')})"
    if t == _MEDIA and s == 0x07 and n == 16:
        return f"Fv({r.guid('fv.name')})"
    if t == _MEDIA and s == 0x08 and n == 20:
        r.u32("offset.reserved")
        start, end = r.u64("offset.start"), r.u64("offset.end")
        return f"Offset(0x{start:x},0x{end:x})"
    if t == _BBS and s == 0x01 and n >= 4:
        dtype, _status = r.u16("bbs.type"), r.u16("bbs.status")
        desc = r.rest().split(b"\x00", 1)[0].decode("ascii", "replace")
        return f"BBS(0x{dtype:x},{desc})"
    return f"Path({t},{s},{r.rest().hex()})"


def _hard_drive(r: DataReader) -> str:
    part, start, size = r.u32("hd.partition"), r.u64("hd.start"), r.u64("hd.size")
    sig = r.take(16, "hd.signature")
    fmt, sigtype = r.u8("hd.format"), r.u8("hd.signature_type")
    if sigtype == 0x02:
        return f"HD({part},GPT,{format_guid(sig)},0x{start:x},0x{size:x})"
    if sigtype == 0x01:
        mbr = int.from_bytes(sig[:4], "little")
        return f"HD({part},MBR,0x{mbr:08x},0x{start:x},0x{size:x})"
    return f"HD({part},{fmt},{sigtype},0x{start:x},0x{size:x})"


def decode_device_path(
    data: bytes,
    *,
    base: int = 0,
    seq: int | None = None,
    multiple: bool = False,
    memo: Memo | None = None,
) -> DevicePath:
    """Decode ``data`` as an EFI device path (UEFI 2.10, 10.3).

    ``base`` is the absolute offset of ``data`` in the log, so errors name log offsets. Stops at
    the End-Entire node; bytes after it are an error, as is a node shorter than its header, a
    node overrunning the data, more than ``MAX_DEVICE_PATH_NODES`` nodes or more than
    ``MAX_DEVICE_PATH_BYTES`` bytes. An empty input is an empty path (some firmware logs one).
    ``multiple`` accepts further paths after End-Entire (an ``EFI_LOAD_OPTION``'s
    ``FilePathList`` may hold several, UEFI 3.1.3); they render like extra instances (``,``).

    With ``memo``, a result (it holds no offsets) is looked up and remembered in
    ``memo.device_paths`` by the exact bytes and ``multiple``: the same boot paths recur at
    every attestation.
    """
    if memo is None or len(data) > MAX_DEVICE_PATH_BYTES:
        return _decode_device_path(data, base, seq, multiple)  # over the limit: raises
    key = (bytes(data), multiple)
    found = memo.device_paths.get(key)
    if found is None:
        found = _decode_device_path(data, base, seq, multiple)
        memo.device_paths.put(key, found, len(data))
    return found


def _decode_device_path(data: bytes, base: int, seq: int | None, multiple: bool) -> DevicePath:
    r = DataReader(data, base=base, seq=seq)
    if len(data) > MAX_DEVICE_PATH_BYTES:
        raise r.limit(
            f"device path of {len(data)} bytes exceeds {MAX_DEVICE_PATH_BYTES}", "device_path"
        )
    nodes: list[DevicePathNode] = []
    while r.remaining:
        if len(nodes) >= MAX_DEVICE_PATH_NODES:
            raise r.limit(f"device path has more than {MAX_DEVICE_PATH_NODES} nodes", "node")
        start = r.pos
        t, s, length = r.u8("node.type"), r.u8("node.subtype"), r.u16("node.length")
        if length < 4:
            raise r.error(f"device path node length {length} < 4", "node.length", at=start + 2)
        body = r.sub(length - 4, "node.data")
        raw = body.data
        text = _node_text(t, s, body)
        if t == _END and s == 0xFF and r.remaining and multiple:
            s = 0x01  # further paths follow: render as an instance separator
        nodes.append(DevicePathNode(t, s, raw, text))
        if t == _END and s == 0xFF:
            r.expect_end("End-Entire device path node")
            break
    return DevicePath(tuple(nodes))
