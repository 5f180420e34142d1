"""Derive a policy from one or more golden boot logs (``hostgate policy from-log``).

Each golden log is parsed, replayed against itself and turned into claims (:func:`golden_from_log`:
a *log-only* reading — nothing is quoted, so it describes a log, it does not authenticate one).
:func:`derive_policy` then writes a reviewable YAML policy that every golden log passes:

* sets that must *contain* the host's values (PK/KEK/db, boot images, drivers, SI policies,
  command lines, PCR 7 variable names, accepted anomalies) are the **union** across the logs;
* sets the host must *hold* (dbx revocations) are the **intersection**;
* flags (Secure Boot, Windows debug controls, code integrity, DEP, HVCI) are written only where
  every log agrees; otherwise they are left out with a comment saying so;
* the boot chain is position-wise: stage *i* accepts the *i*-th application of every log
  (stages beyond the shortest chain are optional);
* coverage: the banks every golden log carries (SHA-256 when they all do) and every PCR any
  golden log extends, besides 0-7 — Windows boot configuration in 11-14, GRUB and kernel in
  8-9 — so a host cannot leave out what the policy's claims are read from;
* one reference group per distinct (firmware build, platform, first boot application): PCRs 0
  and 2 in the strongest bank, and the first code measured in PCR 4, which proves the platform
  (``windows`` with a Windows boot configuration, ``linux`` with GRUB or kernel measurements,
  else ``other``) and so which platform's rules do not apply;
* an event type outside its PCR's table in a PCR no rule reads (``TOLERANT_PCRS``) is accepted
  by that (PCR, type) pair alone, with a comment asking for review.

Every value carries a YAML comment naming the file and event it came from. A golden log whose
claims fail closed otherwise (a fatal anomaly) is refused: it cannot be a reference. A named
firmware quirk is never chosen here: a log that needs one is refused with a message naming it,
and only a log read with the quirk allowed (``golden_from_log(allowed_quirks=...)``, ``policy
from-log --allow-quirk``) yields a policy, which then lists it in ``evidence.allowedQuirks``
with a comment saying why.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Final, Literal

from services.tpm.algorithms import alg_by_name
from services.tpm.claim_records import UNVERIFIED_DATA
from services.tpm.claims import BootApplication, Claims, extract_claims
from services.tpm.decrepit import refuse_tpm12
from services.tpm.eventlog import Event, EventLog, EventType, parse_event_log
from services.tpm.quirks import Acceptance, quirk_by_id
from services.tpm.replay import initial_pcr_value, replay, startup_locality, verify_replay
from services.verifier.policy.errors import PolicyError
from services.verifier.policy.evaluate import subject
from services.verifier.policy.events import EventIndex
from services.verifier.policy.loader import load_policy
from services.verifier.policy.model import API_VERSION, DEBUG_FLAGS, KIND, TOLERANT_PCRS, Policy
from services.verifier.policy.rules import (
    BOOT_APPLICATION_PCR,
    DRIVER_PCR,
    Subject,
    code_in,
    hvci_on,
    hypervisor_launched,
)
from services.verifier.policy.rules.evidence import TYPE_REASONS
from services.verifier.policy.yamlout import Commented, dump
from services.wire.banks import BANK_PREFERENCE, SHA_BANK_OF_SIZE

__all__ = ["DerivedPolicy", "Golden", "derive_policy", "fully_quoted", "golden_from_log",
           "platform_of"]

_GROUP_PCRS: Final = (0, 2)
_FIRMWARE_PCRS: Final = frozenset(range(8))
_NAME_RE: Final = re.compile(r"[^A-Za-z0-9._-]+")


@dataclass(frozen=True)
class Golden:
    """One golden log read for derivation (or for a log-only ``check``)."""

    source: str
    log: EventLog
    claims: Claims
    events: tuple[Event, ...]

    def subject(self) -> Subject:
        """The log as a policy subject (active banks = the log's declared banks)."""
        return subject(self.claims, self.events, active_banks=self.log.banks)


@dataclass(frozen=True)
class DerivedPolicy:
    """The YAML text (with provenance comments) and the policy it loads to."""

    text: str
    policy: Policy


def golden_from_log(
    data: bytes, source: str, *, registers: Literal["tpm", "ccel"] | None = None,
    allowed_quirks: Sequence[str] = (),
) -> Golden:
    """Parse ``data``, replay it against itself and extract claims (log-only, untrusted).

    ``registers=None`` detects an Intel TDX CCEL log by its Spec ID event in MR index 1.
    ``allowed_quirks`` are the named firmware quirks (``services.tpm.quirks``) the reading may
    use, as a policy's ``spec.evidence.allowedQuirks`` would (:func:`derive_policy` then writes
    the ones used). Raises the ``services.tpm`` errors for a log that does not parse or replay
    (``Unsupported`` for an unknown quirk id).
    """
    log = parse_event_log(data)
    refuse_tpm12(log)  # a TPM 1.2 log cannot be a reference: say so, not a later by-product
    if registers is None:
        first = log.events[0] if log.events else None
        is_ccel = (first is not None and first.pcr == 1
                   and first.event_type == EventType.EV_NO_ACTION)
        registers = "ccel" if is_ccel else "tpm"
    result = verify_replay(log, fully_quoted(log), allowed_quirks=allowed_quirks)
    claims = extract_claims(result, measurement_registers=registers,
                            allowed_quirks=allowed_quirks)
    return Golden(source=source, log=log, claims=claims, events=result.verified_events)


def fully_quoted(log: EventLog) -> dict[str, dict[int, bytes]]:
    """The PCR values a quote of every PCR would show if the log told the whole truth: each
    PCR's replay, and the reset value of every PCR the log never extends (as a fleet host
    quoting its policy's whole coverage does). Still log-only: nothing vouches for them."""
    replayed = replay(log)
    touched = {ev.pcr for ev in log.events if ev.extends}
    locality = startup_locality(log)
    out: dict[str, dict[int, bytes]] = {}
    for bank, values in replayed.items():
        alg = alg_by_name(bank)
        assert alg is not None  # replay() only returns banks it can hash
        filled = dict(values)
        for pcr in range(24):
            if pcr not in touched:
                filled[pcr] = initial_pcr_value(pcr, alg.digest_size, locality)
        out[bank] = filled
    return out


def _best_bank(digests: Any) -> str | None:
    return next((b for b in BANK_PREFERENCE if b in digests), None)


class _Collector:
    """Union of reference values with the first place each was seen."""

    def __init__(self) -> None:
        self._items: dict[tuple[str, str], tuple[str, str]] = {}

    def add(self, alg: str, hex_value: str, name: str, where: str) -> None:
        self._items.setdefault((alg, hex_value), (name, where))

    def __len__(self) -> int:
        return len(self._items)

    def entries(self) -> list[Any]:
        out = []
        for (alg, hx), (name, where) in sorted(self._items.items()):
            entry: dict[str, Any] = {alg: hx}
            if name:
                entry["name"] = name
            out.append(Commented(entry, where))
        return out


def _where(g: Golden, seq: int | None) -> str:
    return f"{g.source} event {seq}" if seq is not None and seq >= 0 else g.source


def _all_agree(values: Iterable[Any]) -> tuple[bool, Any]:
    vals = list(values)
    if not vals or any(v is None for v in vals) or len(set(vals)) != 1:
        return False, None
    return True, vals[0]


def _banks(golden: Sequence[Golden]) -> dict[str, Any]:
    carried = [set(g.claims.banks) for g in golden]
    common = set.intersection(*carried) if carried else set()
    if "sha256" in common:
        banks = ["sha256"]
        note = "every golden log carries SHA-256: every quote must cover it, every log replay it"
    else:
        best = next((b for b in BANK_PREFERENCE if b in common), None)
        if best is None:
            have = "; ".join(f"{g.source}: {', '.join(g.claims.banks) or 'none'}" for g in golden)
            raise PolicyError(f"the golden logs share no bank ({have}): a policy requires banks "
                              "every quote covers and every log replays; derive one policy per "
                              "bank family")
        banks = [best]
        note = f"the golden logs share only {best}: review before use"
    extended: dict[int, str] = {}
    for g in golden:
        for ev in g.events:
            extended.setdefault(ev.pcr, _where(g, ev.seq))
    pcrs = sorted(_FIRMWARE_PCRS | set(extended))
    beyond = [f"{p} ({extended[p]})" for p in pcrs if p not in _FIRMWARE_PCRS]
    why = ("firmware PCRs 0-7" + (", and every PCR a golden log extends: " + ", ".join(beyond)
                                  if beyond else ""))
    return {"require": Commented(banks, note),
            "requirePcrs": Commented(pcrs, why),
            "refuseSha1Only": True}


def _secure_boot(golden: Sequence[Golden]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    agree, state = _all_agree(g.claims.secure_boot for g in golden)
    if agree:
        note = "every golden log" + (" has Secure Boot ON" if state else
                                     " has Secure Boot OFF: review before use")
        out["enabled"] = Commented(bool(state), note)
    for label in ("PK", "KEK", "db"):
        dbs = [(g, g.claims.database(label)) for g in golden]
        if any(db is None for _, db in dbs):
            continue
        col = _Collector()
        for g, db in dbs:
            assert db is not None
            for e in db.entries:
                col.add("sha256", e.digest.hex(), e.subject or f"{e.kind} hash",
                        _where(g, db.seq))
        out[label.lower()] = {"allowed": col.entries()}
    dbx = [(g, g.claims.database("dbx")) for g in golden]
    if all(db is not None for _, db in dbx):
        common: set[str] | None = None
        names: dict[str, tuple[str, str]] = {}
        for g, db in dbx:
            assert db is not None
            hexes = {e.digest.hex() for e in db.entries}
            common = hexes if common is None else common & hexes
            for e in db.entries:
                names.setdefault(e.digest.hex(), (e.subject or "", _where(g, db.seq)))
        col = _Collector()
        for hx in sorted(common or ()):
            col.add("sha256", hx, *names[hx])
        out["dbx"] = {"required": col.entries()}
    variables: dict[str, str] = {}
    for g in golden:
        for seq, name in EventIndex(g.events).pcr7_variables():
            variables.setdefault(name, _where(g, seq))
    out["pcr7Variables"] = [Commented(n, w) for n, w in sorted(variables.items())]
    return out


def _windows(golden: Sequence[Golden]) -> list[Golden]:
    return [g for g in golden if g.claims.windows is not None]


def _flag_sources(win: Sequence[Golden], attr: str, values: Sequence[Any]) -> str:
    where = []
    for g, v in zip(win, values, strict=True):
        seq = EventIndex(g.events).windows_flag_event(attr, v) if v is not None else None
        where.append(_where(g, seq) if seq is not None else f"{g.source} (not measured)")
    return "as measured in " + ", ".join(where)


def _debug(win: Sequence[Golden]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, attr in DEBUG_FLAGS:
        vals = []
        raw = []
        for g in win:
            w = g.claims.windows
            assert w is not None
            v = getattr(w, attr)
            raw.append(v)
            if v is None and attr == "hypervisor_debug" and not hypervisor_launched(w):
                v = False
            vals.append(v)
        agree, value = _all_agree(vals)
        if agree:
            out[key] = Commented(bool(value), _flag_sources(win, attr, raw))
    return out


def _image_digests(col: _Collector, g: Golden, app: BootApplication) -> None:
    bank = _best_bank(app.digests)
    if bank is not None:
        col.add(bank, app.digests[bank].hex(), app.file_path or "", _where(g, app.seq))


def _code_integrity(golden: Sequence[Golden], win: Sequence[Golden]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if win:
        ws = [g.claims.windows for g in win]
        for key, attr, vals in (("enabled", "code_integrity", [w.code_integrity for w in ws if w]),
                                ("dep", "dep", [w.dep for w in ws if w]),
                                ("hvci", "", [bool(hvci_on(w)) for w in ws if w])):
            agree, value = _all_agree(vals)
            if agree and len(vals) == len(ws):
                note = (_flag_sources(win, attr, vals) if attr else
                        "HVCI policy as measured in " + ", ".join(g.source for g in win))
                out[key] = Commented(bool(value), note)
        if all(w is not None and w.si_policies for w in ws):
            col = _Collector()
            for g in win:
                assert g.claims.windows is not None
                for p in g.claims.windows.si_policies:
                    alg = (p.hash_algorithm or SHA_BANK_OF_SIZE.get(len(p.digest), "sha256")).lower()
                    col.add(alg, p.digest.hex(), f"{p.name} v{p.version}", g.source)
            out["siPolicies"] = col.entries()
    apps = _Collector()
    drivers = _Collector()
    every_has_app = True
    for g in golden:
        chain = code_in(g.claims, BOOT_APPLICATION_PCR)
        for app in chain:
            _image_digests(apps, g, app)
        for app in code_in(g.claims, DRIVER_PCR):
            _image_digests(drivers, g, app)
        every_has_app = every_has_app and bool(chain)
    signers = _windows_modules(golden, drivers)
    if every_has_app:
        out["bootApplications"] = {"allowedDigests": apps.entries()}
    out["drivers"] = {"allowedDigests": drivers.entries()}
    if signers:
        out["drivers"]["allowedSigners"] = signers
    return out


def _signer_trusted(g: Golden) -> bool:
    """Whether ``g``'s module records can approve by signer: the drivers rule takes a signer
    only with Secure Boot and code integrity measured on and test signing measured off."""
    w = g.claims.windows
    return (g.claims.secure_boot is True and w is not None and w.code_integrity is True
            and w.test_signing is False)


def _windows_modules(golden: Sequence[Golden], drivers: _Collector) -> list[Any]:
    """Approve each Windows module by its publisher where every golden log that measured it
    names one it may be approved by (:attr:`~services.tpm.sipa.WindowsModule.signer`, with
    Secure Boot and code integrity on), so that an update signed by the same publisher passes;
    by its digest (added to ``drivers``) where any does not. Returns the publishers, each with
    where it was first seen."""
    seen: dict[tuple[str, bytes], list[tuple[Golden, int, Any]]] = {}
    for g in golden:
        if g.claims.windows is None:
            continue
        for i, m in enumerate(g.claims.windows.loaded_modules):
            alg = (m.hash_algorithm or SHA_BANK_OF_SIZE.get(len(m.authenticode_hash), "")).lower()
            if alg:
                seen.setdefault((alg, m.authenticode_hash), []).append((g, i, m))
    publishers: dict[str, tuple[str, int]] = {}
    for (alg, digest), found in seen.items():
        if all(m.signer is not None and _signer_trusted(g) for g, _, m in found):
            for g, _, m in found:
                first, count = publishers.get(m.signer[0], ("", 0))
                publishers[m.signer[0]] = (first or _module_where(g, m), count + 1)
            continue
        for g, i, m in found:
            drivers.add(alg, digest.hex(), m.file_path or "",
                        f"{_module_where(g, m)} (Windows module #{i}: "
                        f"{_why_digest(g, m)})")
    return [Commented(name, f"signs {count} Windows module(s) in the golden logs, first "
                      f"{where}; approves any module it signs while Secure Boot and code "
                      "integrity are on" + _THIRD_PARTY.get(name, "") + ": review")
            for name, (where, count) in sorted(publishers.items())]


_THIRD_PARTY: Final = {
    "Microsoft Windows Hardware Compatibility Publisher": (
        ". Microsoft signs other vendors' drivers under this name (WHQL and attestation "
        "signing), so this approves any vendor's driver Microsoft signed, known-vulnerable ones "
        "included, not only these modules: approve them by digest instead unless that is meant"),
}
"""Publishers under which Microsoft signs third parties' drivers: approving one by name approves
every vendor it signs for, which the derived comment must say."""


def _module_where(g: Golden, m: Any) -> str:
    site = next((x for x in m.sites if x.described), m.sites[0] if m.sites else None)
    return _where(g, site.seq if site is not None else None)


def _why_digest(g: Golden, m: Any) -> str:
    if not _signer_trusted(g):
        return ("Secure Boot or code integrity not on, or test signing not off, so approved "
                "by digest")
    if m.signer is None:
        return "no undisputed, validated signer measured, so approved by digest"
    return "another golden log measured it without one, so approved by digest"


def _boot_chain(golden: Sequence[Golden]) -> dict[str, Any]:
    chains = [(g, code_in(g.claims, BOOT_APPLICATION_PCR)) for g in golden]
    shortest = min(len(c) for _, c in chains)
    longest = max(len(c) for _, c in chains)
    out: dict[str, Any] = {}
    if longest:
        stages = []
        for i in range(longest):
            col = _Collector()
            name = ""
            for g, chain in chains:
                if i < len(chain):
                    _image_digests(col, g, chain[i])
                    path = chain[i].file_path or ""
                    name = name or path.replace("\\", "/").rsplit("/", 1)[-1]
            stages.append({"name": name or f"stage {i + 1}", "digests": col.entries(),
                           "optional": i >= shortest})
        out["applications"] = stages
    linux = [g for g in golden if g.claims.windows is None]
    if linux and all(g.claims.kernel_cmdlines for g in linux):
        lines: dict[str, str] = {}
        for g in linux:
            idx = EventIndex(g.events)
            for line in g.claims.kernel_cmdlines:
                lines.setdefault(line, _where(g, idx.cmdline_event(line)))
        out["kernelCmdline"] = {"required": [], "forbidden": [],
                                "allowed": [Commented(t, w) for t, w in sorted(lines.items())]}
    return out


def _group_name(source: str, taken: set[str]) -> str:
    base = _NAME_RE.sub("-", source.rsplit("/", 1)[-1]).strip("-._")[:100] or "golden"
    if not base[0].isalnum():
        base = "g" + base
    name, n = base, 2
    while name in taken:
        name, n = f"{base}-{n}", n + 1
    taken.add(name)
    return name


def platform_of(claims: Claims) -> str:
    """What a golden log boots: ``windows`` (a Windows boot configuration was measured),
    ``linux`` (GRUB commands, kernel command lines or kernel/initrd files were measured) or
    ``other``."""
    if claims.windows is not None:
        return "windows"
    if claims.kernel_cmdlines or claims.grub_commands or claims.linux_efi_stub_tags:
        return "linux"
    return "other"


def _groups(golden: Sequence[Golden]) -> list[Any]:
    seen: dict[tuple[Any, ...], int] = {}
    groups: list[dict[str, Any]] = []
    sources: list[list[str]] = []
    taken: set[str] = set()
    for g in golden:
        bank = _best_bank(g.claims.pcrs)
        if bank is None:
            continue
        unverified = _unverified_pcrs(g)
        values = {p: g.claims.pcrs[bank][p].hex() for p in sorted({*_GROUP_PCRS, *unverified})
                  if p in g.claims.pcrs[bank]}
        if not values:
            continue
        chain = code_in(g.claims, BOOT_APPLICATION_PCR)
        first = chain[0] if chain else None
        first_bank = _best_bank(first.digests) if first is not None else None
        pinned = (first_bank, first.digests[first_bank].hex()) if first and first_bank else None
        platform = platform_of(g.claims) if pinned is not None else None
        key = (bank, tuple(sorted(values.items())), platform, pinned)
        if key in seen:
            sources[seen[key]].append(g.source)
            continue
        seen[key] = len(groups)
        pinned_values: dict[int, Any] = {
            p: Commented(v, unverified[p]) if p in unverified else v for p, v in values.items()}
        group: dict[str, Any] = {"name": _group_name(g.source, taken),
                                 "pcrs": {bank: pinned_values}}
        if pinned is not None and first is not None:
            group["platform"] = Commented(platform, "proven by the first boot application "
                                          "below: the rules of other platforms do not apply")
            group["firstBootApplication"] = [Commented(
                {pinned[0]: pinned[1], **({"name": first.file_path} if first.file_path else {})},
                _where(g, first.seq))]
        groups.append(group)
        sources.append([g.source])
    return [Commented(grp, "firmware build of " + ", ".join(src))
            for grp, src in zip(groups, sources, strict=True)]


def _unverified_pcrs(g: Golden) -> dict[int, str]:
    """PCR -> why it is pinned, for each PCR holding an event whose informational data does
    not hash to its digest (``tpm.binding.data_unverified``): its data cannot be trusted, so
    the reference group pins what can be, the digest, through the PCR value it extended."""
    out: dict[int, str] = {}
    for a in g.claims.anomalies:
        if a.reason == UNVERIFIED_DATA and a.pcr not in out:
            out[a.pcr] = (f"pinned: {a.event_type} data at {_where(g, a.seq)} does not hash to "
                          "its digest, so its digest (through this value) is trusted, not its "
                          "data")
    return out


def _tolerated_types(golden: Sequence[Golden]) -> list[Any]:
    """(PCR, type) pairs outside the per-PCR table, seen in a PCR no rule reads."""
    found: dict[tuple[int, str], str] = {}
    for g in golden:
        for a in g.claims.anomalies:
            if a.fatal and a.reason in TYPE_REASONS and a.pcr in TOLERANT_PCRS:
                found.setdefault((a.pcr, a.event_type), _where(g, a.seq))
    out = []
    for (pcr, name), where in sorted(found.items()):
        value: int | str = int(name, 16) if name.startswith("0x") else name
        out.append(Commented({"pcr": pcr, "type": value}, f"seen in {where}: an event type "
                             "outside PCR's table (vendor firmware); review"))
    return out


def _anomalies(golden: Sequence[Golden]) -> list[Any]:
    found: dict[str, str] = {}
    for g in golden:
        for a in g.claims.anomalies:
            if a.fatal:
                continue  # accepted by (PCR, type) only, or the log was refused
            found.setdefault(a.reason, _where(g, a.seq))
    return [Commented(r, f"seen in {w}: " + (_UNVERIFIED_WHY if r == UNVERIFIED_DATA else "review"))
            for r, w in sorted(found.items())]


def _quirks(golden: Sequence[Golden]) -> list[Any]:
    """The named quirks a policy must accept for these logs: each ``policy`` quirk a golden
    log's reading used (allowed by the operator), with the defect and where it was used."""
    found: dict[str, str] = {}
    for g in golden:
        for use in g.claims.quirks_applied:
            quirk = quirk_by_id(use.quirk)
            if quirk is not None and quirk.acceptance is Acceptance.POLICY:
                found.setdefault(use.quirk, _where(g, use.seq))
    out = []
    for quirk_id, where in sorted(found.items()):
        quirk = quirk_by_id(quirk_id)
        assert quirk is not None
        what = quirk.defect or quirk.description.split(". ")[0]
        out.append(Commented(quirk_id, f"used in {where}: {what} ({quirk.layer.value} "
                             "quirk); accepting it lets hosts with this firmware defect pass, "
                             "review"))
    return out


_UNVERIFIED_WHY: Final = ("informational event data does not hash to its digest; the reference "
                          "group pins its digest instead, and a rule reading its claims fails")


def derive_policy(
    golden: Sequence[Golden],
    *,
    policy_id: str = "derived",
    version: str = "1",
    description: str | None = None,
) -> DerivedPolicy:
    """Write a policy every ``golden`` log passes; raise :class:`PolicyError` if one cannot."""
    if not golden:
        raise PolicyError("derivation needs at least one golden log")
    for g in golden:
        fatal = [a for a in g.claims.anomalies if a.fatal and not (
            a.reason in TYPE_REASONS and a.pcr in TOLERANT_PCRS)]
        if fatal:
            a = fatal[0]
            raise PolicyError(f"golden log {g.source} fails closed ({a.reason} at event {a.seq} "
                              f"in PCR {a.pcr}: {a.detail[:200]}); it cannot be a reference")
    win = _windows(golden)
    spec: dict[str, Any] = {"banks": _banks(golden), "secureBoot": _secure_boot(golden)}
    if win:
        spec["debug"] = _debug(win)
    spec["codeIntegrity"] = _code_integrity(golden, win)
    spec["bootChain"] = _boot_chain(golden)
    groups = _groups(golden)
    if groups:
        spec["referenceGroups"] = groups
    evidence: dict[str, Any] = {"allowedAnomalies": _anomalies(golden)}
    tolerated = _tolerated_types(golden)
    if tolerated:
        evidence["allowedEventTypes"] = tolerated
    quirks = _quirks(golden)
    if quirks:
        evidence["allowedQuirks"] = quirks
    spec["evidence"] = evidence
    desc = description or ("Derived from " + ", ".join(g.source for g in golden)
                           + ". Review every section before use.")
    doc = {"apiVersion": API_VERSION, "kind": KIND,
           "metadata": {"id": policy_id, "version": version, "description": desc},
           "spec": spec}
    header = ["hostgate attestation policy derived by `hostgate policy from-log`.",
              "Comments name the golden log and event each value came from."]
    text = dump(doc, header)
    return DerivedPolicy(text=text, policy=load_policy(text))


