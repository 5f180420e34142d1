"""``id-hostgate-attestation``: the certificate extension binding a host certificate to its
verdict.

A private, non-critical extension (``ATTESTATION_OID``, under the UUID arc 2.25 of X.667, which
needs no registration) holding the verdict id, the policy digest and the PolicyPCR digest the
key was sealed under, in strict DER (:class:`AttestationBinding`).
"""

from __future__ import annotations

from dataclasses import dataclass

from cryptography import x509

from services.issuer.errors import ExtensionError

__all__ = ["ATTESTATION_OID", "HOSTGATE_ARC", "MAX_VERDICT_ID", "AttestationBinding",
           "attestation_binding"]

#: The hostgate OID arc: a UUID under ``2.25`` (ITU-T X.667), so no registration is needed.
HOSTGATE_ARC = "2.25.10615221145863538997628321078442561070"
#: ``id-hostgate-attestation``: the certificate extension binding it to its verdict.
ATTESTATION_OID = x509.ObjectIdentifier(f"{HOSTGATE_ARC}.1.1")
#: Longest verdict id accepted into a certificate.
MAX_VERDICT_ID = 256


@dataclass(frozen=True)
class AttestationBinding:
    """What ``id-hostgate-attestation`` records::

        HostgateAttestation ::= SEQUENCE {
            version           INTEGER (1),
            verdictId         UTF8String (SIZE (1..256)),
            policyDigest      OCTET STRING (SIZE (32)),  -- SHA-256 of the policy document
            sealPolicyDigest  OCTET STRING (SIZE (32)) } -- PolicyPCR digest the key is sealed to
    """

    verdict_id: str
    policy_digest: bytes
    seal_policy_digest: bytes

    def to_der(self) -> bytes:
        """DER of ``HostgateAttestation``."""
        vid = self.verdict_id.encode("utf-8")
        body = (_der(0x02, b"\x01") + _der(0x0C, vid) + _der(0x04, self.policy_digest)
                + _der(0x04, self.seal_policy_digest))
        return _der(0x30, body)

    @classmethod
    def from_der(cls, data: bytes) -> AttestationBinding:
        """Parse strict DER (minimal lengths, no trailing bytes, exact field sizes)."""
        tag, body_start, end = _read_tlv(data, 0)
        if tag != 0x30:
            raise ExtensionError("HostgateAttestation is not a SEQUENCE", offset=0)
        if end != len(data):
            raise ExtensionError("trailing bytes after HostgateAttestation", offset=end)
        fields: list[bytes] = []
        pos = body_start
        for want in (0x02, 0x0C, 0x04, 0x04):
            tag, start, stop = _read_tlv(data, pos)
            if tag != want:
                raise ExtensionError(f"expected tag {want:#04x}, got {tag:#04x}", offset=pos)
            fields.append(data[start:stop])
            pos = stop
        if pos != end:
            raise ExtensionError("extra fields in HostgateAttestation", offset=pos)
        if fields[0] != b"\x01":
            raise ExtensionError("unsupported HostgateAttestation version", offset=body_start)
        try:
            verdict_id = fields[1].decode("utf-8")
        except UnicodeDecodeError:
            raise ExtensionError("verdictId is not UTF-8", offset=body_start) from None
        if not 1 <= len(fields[1]) <= MAX_VERDICT_ID:
            raise ExtensionError(f"verdictId must be 1..{MAX_VERDICT_ID} bytes",
                                 offset=body_start)
        if len(fields[2]) != 32 or len(fields[3]) != 32:
            raise ExtensionError("digests must be 32 bytes", offset=body_start)
        return cls(verdict_id, fields[2], fields[3])


def _der(tag: int, content: bytes) -> bytes:
    n = len(content)
    if n < 0x80:
        length = bytes([n])
    else:
        raw = n.to_bytes((n.bit_length() + 7) // 8, "big")
        length = bytes([0x80 | len(raw)]) + raw
    return bytes([tag]) + length + content


def _read_tlv(data: bytes, pos: int) -> tuple[int, int, int]:
    """(tag, content start, content end) of the TLV at ``pos``; at most 2 length octets."""
    if pos + 2 > len(data):
        raise ExtensionError("truncated TLV header", offset=pos)
    tag, first = data[pos], data[pos + 1]
    start = pos + 2
    if first < 0x80:
        length = first
    else:
        count = first & 0x7F
        if count == 0 or count > 2 or start + count > len(data):
            raise ExtensionError("bad or oversized DER length", offset=pos + 1)
        length = int.from_bytes(data[start:start + count], "big")
        if length < 0x80 or data[start] == 0:
            raise ExtensionError("non-minimal DER length", offset=pos + 1)
        start += count
    if start + length > len(data):
        raise ExtensionError("TLV runs past the end", offset=pos)
    return tag, start, start + length


def attestation_binding(cert: x509.Certificate) -> AttestationBinding:
    """The ``id-hostgate-attestation`` binding of a host certificate."""
    try:
        ext = cert.extensions.get_extension_for_oid(ATTESTATION_OID)
    except x509.ExtensionNotFound:
        raise ExtensionError("certificate has no hostgate attestation extension",
                             offset=0) from None
    value = ext.value
    if not isinstance(value, x509.UnrecognizedExtension):
        raise ExtensionError("unexpected extension type", offset=0)
    return AttestationBinding.from_der(value.value)
