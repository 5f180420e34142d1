"""The attestation policy document model: frozen values, canonical JSON, digest.

A policy is what an operator writes and reviews (YAML, see :mod:`.loader`)::

    apiVersion: hostgate/v1
    kind: AttestationPolicy
    metadata: {id, version, description}
    spec: {banks, secureBoot, debug, codeIntegrity, bootChain, referenceGroups, evidence,
           customRules}

Every section is optional; a rule is only evaluated when its section asks for something
(except :data:`~.ids.EVIDENCE_ANOMALIES`, which is always on: a broken or suspicious log fails
unless the policy names the anomaly as accepted). Sets are stored sorted so that the canonical
form, and therefore :attr:`Policy.digest`, does not depend on the order an author wrote them in;
ordered things (boot-chain stages) keep their order.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import Any, Final

from services.tpm.algorithms import digest_sizes
from services.wire.banks import WIRE_BANKS

API_VERSION: Final = "hostgate/v1"
KIND: Final = "AttestationPolicy"

DIGEST_SIZES: Final[dict[str, int]] = digest_sizes(WIRE_BANKS)
"""Digest algorithms a reference value may name (the banks records name), with their sizes in
bytes."""


@dataclass(frozen=True, order=True)
class RefDigest:
    """One reference value: a digest (lowercase hex) in a named algorithm, with a label."""

    alg: str
    hex: str
    name: str = ""

    def to_json(self) -> dict[str, str]:
        out = {self.alg: self.hex}
        if self.name:
            out["name"] = self.name
        return out

    @property
    def text(self) -> str:
        """``alg:hex`` form, for messages."""
        return f"{self.alg}:{self.hex}"


def _sorted_refs(refs: tuple[RefDigest, ...]) -> tuple[RefDigest, ...]:
    return tuple(sorted(set(refs)))


EXTERNAL_LOGS: Final = frozenset({"ima"})
"""Logs other than the TCG boot log that may account for a quoted PCR."""
DEFAULT_REQUIRED_BANKS: Final[tuple[str, ...]] = ("sha256",)
"""Banks every quote must cover and every log must replay when a policy names none."""


@dataclass(frozen=True, order=True)
class ExternalPcr:
    """A PCR extended outside the TCG boot log, and the log that accounts for it (``ima``:
    the IMA measurement list, which is then required and must replay to the quoted value)."""

    pcr: int
    log: str

    def to_json(self) -> dict[str, Any]:
        return {"pcr": self.pcr, "log": self.log}


@dataclass(frozen=True)
class BankSpec:
    """What a quote must cover: banks (each also replayed from the log) and PCRs.

    ``require_pcrs`` is what the author wrote; the coverage a quote must meet also holds PCRs
    0-7 and every PCR a configured rule reads (:mod:`.coverage`). ``external_pcrs`` names PCRs
    extended by another log; every other quoted PCR must be accounted for by the boot log.
    """

    require_pcrs: tuple[int, ...] = ()
    refuse_sha1_only: bool = True
    require_banks: tuple[str, ...] = DEFAULT_REQUIRED_BANKS
    external_pcrs: tuple[ExternalPcr, ...] = ()

    def to_json(self) -> dict[str, Any]:
        return {"require": list(self.require_banks), "requirePcrs": list(self.require_pcrs),
                "refuseSha1Only": self.refuse_sha1_only,
                "externalPcrs": [e.to_json() for e in self.external_pcrs]}


@dataclass(frozen=True)
class SecureBootSpec:
    """Secure Boot state and key databases (entries by SHA-256 of the cert DER or the hash)."""

    enabled: bool | None = None
    pk: tuple[RefDigest, ...] | None = None
    kek: tuple[RefDigest, ...] | None = None
    db: tuple[RefDigest, ...] | None = None
    dbx_required: tuple[RefDigest, ...] | None = None
    pcr7_variables: tuple[str, ...] | None = None
    """Allowed variable names in PCR 7 (None: no check). Unknown event types always fail."""

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if self.enabled is not None:
            out["enabled"] = self.enabled
        for key, refs in (("pk", self.pk), ("kek", self.kek), ("db", self.db)):
            if refs is not None:
                out[key] = {"allowed": [r.to_json() for r in refs]}
        if self.dbx_required is not None:
            out["dbx"] = {"required": [r.to_json() for r in self.dbx_required]}
        if self.pcr7_variables is not None:
            out["pcr7Variables"] = list(self.pcr7_variables)
        return out


DEBUG_FLAGS: Final[tuple[tuple[str, str], ...]] = (
    ("bootDebugging", "boot_debugging"),
    ("kernelDebugger", "kernel_debugger"),
    ("hypervisorDebug", "hypervisor_debug"),
    ("testSigning", "test_signing"),
    ("flightSigning", "flight_signing"),
    ("safeMode", "safe_mode"),
    ("winPE", "win_pe"),
)
"""(YAML key, attribute) of every Windows debug-control flag."""


@dataclass(frozen=True)
class DebugSpec:
    """Required value of each Windows debug control (``False`` = must be off; None = unchecked)."""

    boot_debugging: bool | None = None
    kernel_debugger: bool | None = None
    hypervisor_debug: bool | None = None
    test_signing: bool | None = None
    flight_signing: bool | None = None
    safe_mode: bool | None = None
    win_pe: bool | None = None

    def to_json(self) -> dict[str, Any]:
        return {key: getattr(self, attr) for key, attr in DEBUG_FLAGS
                if getattr(self, attr) is not None}


@dataclass(frozen=True)
class ImageList:
    """Allowed/denied signers and image digests (a denial always wins over an allowance).

    With neither allow-list given (None) every image not denied passes; with either given, an
    image must match one of them. An *empty* allow-list allows nothing (a derived policy from
    logs without drivers says "no drivers").
    """

    allowed_signers: tuple[str, ...] | None = None
    denied_signers: tuple[str, ...] = ()
    allowed_digests: tuple[RefDigest, ...] | None = None
    denied_digests: tuple[RefDigest, ...] = ()

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "deniedSigners": list(self.denied_signers),
            "deniedDigests": [r.to_json() for r in self.denied_digests],
        }
        if self.allowed_signers is not None:
            out["allowedSigners"] = list(self.allowed_signers)
        if self.allowed_digests is not None:
            out["allowedDigests"] = [r.to_json() for r in self.allowed_digests]
        return out


@dataclass(frozen=True)
class ImaList:
    """IMA allow/deny digests for one class of files (kernel modules or executables).
    ``allowed`` None: no allow-list (only the deny-list applies)."""

    allowed: tuple[RefDigest, ...] | None = None
    denied: tuple[RefDigest, ...] = ()

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"denied": [r.to_json() for r in self.denied]}
        if self.allowed is not None:
            out["allowed"] = [r.to_json() for r in self.allowed]
        return out


@dataclass(frozen=True)
class CodeIntegritySpec:
    """Windows code integrity, DEP/HVCI, boot-image allow/deny lists, Linux IMA lists."""

    enabled: bool | None = None
    si_policies: tuple[RefDigest, ...] | None = None
    dep: bool | None = None
    hvci: bool | None = None
    boot_applications: ImageList | None = None
    drivers: ImageList | None = None
    ima_kernel_modules: ImaList | None = None
    ima_executables: ImaList | None = None

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for key, val in (("enabled", self.enabled), ("dep", self.dep), ("hvci", self.hvci)):
            if val is not None:
                out[key] = val
        if self.si_policies is not None:
            out["siPolicies"] = [r.to_json() for r in self.si_policies]
        if self.boot_applications is not None:
            out["bootApplications"] = self.boot_applications.to_json()
        if self.drivers is not None:
            out["drivers"] = self.drivers.to_json()
        ima: dict[str, Any] = {}
        if self.ima_kernel_modules is not None:
            ima["kernelModules"] = self.ima_kernel_modules.to_json()
        if self.ima_executables is not None:
            ima["executables"] = self.ima_executables.to_json()
        if ima:
            out["ima"] = ima
        return out


@dataclass(frozen=True)
class BootStage:
    """One position in the boot chain: the image there must be one of ``digests``."""

    name: str
    digests: tuple[RefDigest, ...]
    optional: bool = False

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "digests": [r.to_json() for r in self.digests],
                "optional": self.optional}


@dataclass(frozen=True)
class CmdlineSpec:
    """Kernel command-line rules: tokens required/forbidden, or an exact allowed set of lines.

    A forbidden ``key`` matches the token ``key`` and any ``key=value``; a forbidden
    ``key=value`` matches only itself.
    """

    required: tuple[str, ...] = ()
    forbidden: tuple[str, ...] = ()
    allowed: tuple[str, ...] | None = None

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"required": list(self.required), "forbidden": list(self.forbidden)}
        if self.allowed is not None:
            out["allowed"] = list(self.allowed)
        return out


@dataclass(frozen=True)
class BootChainSpec:
    """Ordered boot applications (shim -> grub -> kernel, bootmgr -> winload) and command line."""

    stages: tuple[BootStage, ...] | None = None
    cmdline: CmdlineSpec | None = None

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if self.stages is not None:
            out["applications"] = [s.to_json() for s in self.stages]
        if self.cmdline is not None:
            out["kernelCmdline"] = self.cmdline.to_json()
        return out


PLATFORMS: Final = ("linux", "other", "windows")
"""What a reference group may prove a host boots. ``windows`` makes the Linux-only rules (kernel
command line, IMA) not applicable; ``linux`` and ``other`` make the Windows-only rules (debug
controls, code integrity, DEP, HVCI, SI policy) not applicable. Nothing else ever does."""


@dataclass(frozen=True)
class ReferenceGroup:
    """A named set of reference values (one approved firmware/boot build).

    ``pcrs`` is ``((bank, ((pcr, hex), ...)), ...)`` sorted. A host matches the group when every
    listed value equals its own and, if ``first_boot_application`` is given, the first boot
    application of its replay-verified PCR 4 has one of those digests; a host passes when it
    matches any group. ``platform`` is what a match proves the host boots (see
    :data:`PLATFORMS`); only a group whose match is pinned by PCR 4 (a PCR 4 value or
    ``first_boot_application``) may name one, since firmware PCRs say nothing about the OS.
    """

    name: str
    pcrs: tuple[tuple[str, tuple[tuple[int, str], ...]], ...] = ()
    platform: str | None = None
    first_boot_application: tuple[RefDigest, ...] = ()

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "name": self.name,
            "pcrs": {bank: {str(p): v for p, v in vals} for bank, vals in self.pcrs}}
        if self.platform is not None:
            out["platform"] = self.platform
        if self.first_boot_application:
            out["firstBootApplication"] = [r.to_json() for r in self.first_boot_application]
        return out

    def pcr_indices(self) -> frozenset[int]:
        """Every PCR index the group lists, in any bank."""
        return frozenset(p for _, vals in self.pcrs for p, _ in vals)


TOLERANT_PCRS: Final = frozenset({0, 1, 3, 5, 6})
"""PCRs where a policy may accept an event type outside the PCR's table
(``evidence.allowedEventTypes``): no built-in rule reads claims from them, so an accepted event
is kept as an opaque measurement (its digest counts in the replay; its data is never read)."""


@dataclass(frozen=True, order=True)
class AllowedEventType:
    """An event type outside the per-PCR table that the operator accepts in one PCR."""

    pcr: int
    event_type: int

    def to_json(self) -> dict[str, Any]:
        return {"pcr": self.pcr, "type": self.event_type}


@dataclass(frozen=True)
class EvidenceSpec:
    """Claims anomalies (reason ids) and off-table event types the operator accepts; any other
    anomaly fails."""

    allowed_anomalies: tuple[str, ...] = ()
    allowed_event_types: tuple[AllowedEventType, ...] = ()
    allowed_quirks: tuple[str, ...] = ()
    """Firmware quirks of ``policy`` acceptance (``services.tpm.quirks``) the verifier may use;
    every quirk used is reported in the verdict's claims."""

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"allowedAnomalies": list(self.allowed_anomalies)}
        if self.allowed_event_types:
            out["allowedEventTypes"] = [t.to_json() for t in self.allowed_event_types]
        if self.allowed_quirks:  # absent when empty: the digests of older policies stand
            out["allowedQuirks"] = list(self.allowed_quirks)
        return out


@dataclass(frozen=True)
class TpmSpec:
    """Facts of the quote itself: the clock's ``safe`` flag (False after an unorderly shutdown
    may have rolled the clock back) and the TPM firmware version."""

    clock_safe: bool | None = None
    firmware_minimum: int | None = None
    firmware_allowed: tuple[int, ...] | None = None

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if self.clock_safe is not None:
            out["clockSafe"] = self.clock_safe
        fw: dict[str, Any] = {}
        if self.firmware_minimum is not None:
            fw["minimum"] = self.firmware_minimum
        if self.firmware_allowed is not None:
            fw["allowed"] = list(self.firmware_allowed)
        if fw:
            out["firmwareVersion"] = fw
        return out


@dataclass(frozen=True)
class CustomRule:
    """A CEL expression over ``claims`` that must evaluate to ``true``."""

    name: str
    expression: str
    description: str = ""

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "expression": self.expression,
                "description": self.description}


@dataclass(frozen=True)
class PolicySpec:
    """The rules of a policy, section by section (None = section absent)."""

    banks: BankSpec | None = None
    secure_boot: SecureBootSpec | None = None
    debug: DebugSpec | None = None
    code_integrity: CodeIntegritySpec | None = None
    boot_chain: BootChainSpec | None = None
    reference_groups: tuple[ReferenceGroup, ...] = ()
    evidence: EvidenceSpec = field(default_factory=EvidenceSpec)
    custom_rules: tuple[CustomRule, ...] = ()
    tpm: TpmSpec | None = None
    permissive: bool = False
    """The author's statement that this policy may admit any host (``hostgate policy lint``
    says what it leaves open); without it the loader refuses such a policy."""

    @property
    def bank_spec(self) -> BankSpec:
        """The banks section, or its defaults when absent (coverage is never optional)."""
        return self.banks if self.banks is not None else BankSpec()

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if self.permissive:
            out["permissive"] = True
        if self.banks is not None:
            out["banks"] = self.banks.to_json()
        if self.tpm is not None:
            out["tpm"] = self.tpm.to_json()
        if self.secure_boot is not None:
            out["secureBoot"] = self.secure_boot.to_json()
        if self.debug is not None:
            out["debug"] = self.debug.to_json()
        if self.code_integrity is not None:
            out["codeIntegrity"] = self.code_integrity.to_json()
        if self.boot_chain is not None:
            out["bootChain"] = self.boot_chain.to_json()
        if self.reference_groups:
            out["referenceGroups"] = [g.to_json() for g in self.reference_groups]
        out["evidence"] = self.evidence.to_json()
        if self.custom_rules:
            out["customRules"] = [r.to_json() for r in self.custom_rules]
        return out


@dataclass(frozen=True)
class Metadata:
    """Who the policy is: ``id`` and ``version`` name it in every verdict. ``version`` is a
    non-negative integer in decimal (the highest published version of an id is in force)."""

    id: str
    version: str
    description: str = ""

    def to_json(self) -> dict[str, str]:
        return {"id": self.id, "version": self.version, "description": self.description}


@dataclass(frozen=True)
class Policy:
    """A parsed, validated attestation policy. Build with :func:`.loader.load_policy`."""

    metadata: Metadata
    spec: PolicySpec

    def to_json(self) -> dict[str, Any]:
        """The normalised document (sets sorted, defaults filled) as plain JSON values."""
        return {"apiVersion": API_VERSION, "kind": KIND, "metadata": self.metadata.to_json(),
                "spec": self.spec.to_json()}

    def canonical_json(self) -> bytes:
        """Canonical JSON (sorted keys, no whitespace, ASCII): what :attr:`digest` hashes."""
        return canonical_json(self.to_json())

    @property
    def digest(self) -> str:
        """``sha256:<hex>`` over :meth:`canonical_json`; comments and layout do not change it."""
        return "sha256:" + hashlib.sha256(self.canonical_json()).hexdigest()


def canonical_json(value: Any) -> bytes:
    """Deterministic JSON bytes: sorted keys, compact separators, ASCII (non-ASCII escaped, so
    even a lone surrogate from a hostile string encodes), no NaN."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=True,
                      allow_nan=False).encode("utf-8")


def sorted_refs(refs: tuple[RefDigest, ...]) -> tuple[RefDigest, ...]:
    """``refs`` de-duplicated and sorted (the canonical order of a set of reference values)."""
    return _sorted_refs(refs)
