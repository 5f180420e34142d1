"""YAML policy document -> :class:`~.model.Policy`, refusing anything malformed.

The YAML is composed into nodes (PyYAML's safe composer: no tags beyond the core schema, no
object construction) and then walked against the schema by hand, so every error names the
line, column and dotted field where it happened. Unknown keys (typos) fail, with the closest
known key as a hint; wrong types fail; digests must be lowercase or uppercase hex of the exact
size of their algorithm; duplicate keys and aliases fail (aliases would let a small document
expand without bound). Sizes, node counts and nesting are bounded before and while walking.
"""

from __future__ import annotations

import dataclasses
import difflib
import re
from collections.abc import Callable
from pathlib import Path
from typing import Final, TypeVar

import yaml
from yaml.constructor import SafeConstructor
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from services.tpm.eventlog import EventType
from services.tpm.quirks import QUIRKS, Acceptance, quirk_by_id
from services.verifier.policy import cel
from services.verifier.policy.errors import CelError, PolicyError
from services.verifier.policy.lint import admits_any_host
from services.verifier.policy.model import (
    API_VERSION,
    DEBUG_FLAGS,
    DIGEST_SIZES,
    EXTERNAL_LOGS,
    KIND,
    PLATFORMS,
    TOLERANT_PCRS,
    AllowedEventType,
    BankSpec,
    BootChainSpec,
    BootStage,
    CmdlineSpec,
    CodeIntegritySpec,
    CustomRule,
    DebugSpec,
    EvidenceSpec,
    ExternalPcr,
    ImageList,
    ImaList,
    Metadata,
    Policy,
    PolicySpec,
    RefDigest,
    ReferenceGroup,
    SecureBootSpec,
    TpmSpec,
    sorted_refs,
)

__all__ = ["MAX_NODES", "MAX_POLICY_BYTES", "load_policy", "load_policy_file"]

MAX_POLICY_BYTES: Final = 8 * 1024 * 1024
"""Largest policy document accepted (a derived policy for a big fleet is well under 1 MiB)."""
MAX_NODES: Final = 500_000
"""Most YAML nodes walked in one document."""
MAX_DEPTH: Final = 24
"""Deepest nesting the schema needs is 7; anything much deeper is refused early."""
MAX_STRING: Final = 64 * 1024
"""Longest scalar string accepted."""

_ID_RE: Final = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
_RULE_NAME_RE: Final = re.compile(r"^[a-z][a-z0-9_]{0,63}(\.[a-z][a-z0-9_]{0,63}){0,3}$")
_VERSION_RE: Final = re.compile(r"^[0-9]{1,18}$")
_HEX_RE: Final = re.compile(r"^[0-9a-fA-F]*$")
_BANK_RE: Final = frozenset(DIGEST_SIZES)

T = TypeVar("T")


class _Walker:
    """Schema walker over composed YAML nodes; raises :class:`PolicyError` with positions."""

    def __init__(self, *, require_asks: bool = True) -> None:
        self.require_asks = require_asks
        self._seen: set[int] = set()
        self._count = 0
        self._ctor = SafeConstructor()

    # -- positions and errors ------------------------------------------------------------
    @staticmethod
    def error(node: Node, field: str, message: str) -> PolicyError:
        mark = node.start_mark
        return PolicyError(message, line=mark.line + 1, column=mark.column + 1, field=field or None)

    def _visit(self, node: Node, field: str) -> None:
        if id(node) in self._seen:
            raise self.error(node, field, "YAML aliases/anchors are not allowed in a policy")
        self._seen.add(id(node))
        self._count += 1
        if self._count > MAX_NODES:
            raise self.error(node, field, f"policy has more than {MAX_NODES} YAML nodes")

    # -- containers ----------------------------------------------------------------------
    def mapping(
        self, node: Node, field: str, allowed: tuple[str, ...], required: tuple[str, ...] = ()
    ) -> dict[str, tuple[Node, str]]:
        """Keys -> (value node, dotted field). Unknown, duplicate or missing keys fail."""
        self._visit(node, field)
        if not isinstance(node, MappingNode):
            raise self.error(node, field, f"expected a mapping, got {_kind(node)}")
        out: dict[str, tuple[Node, str]] = {}
        for key_node, value_node in node.value:
            self._visit(key_node, field)
            if not isinstance(key_node, ScalarNode) or key_node.tag != "tag:yaml.org,2002:str":
                raise self.error(key_node, field, "mapping keys must be plain strings")
            key = str(key_node.value)
            sub = f"{field}.{key}" if field else key
            if key not in allowed:
                hint = difflib.get_close_matches(key, allowed, n=1)
                extra = f"; did you mean {hint[0]!r}?" if hint else ""
                raise self.error(key_node, sub, f"unknown key {key!r}{extra} "
                                 f"(allowed: {', '.join(allowed)})")
            if key in out:
                raise self.error(key_node, sub, f"duplicate key {key!r}")
            out[key] = (value_node, sub)
        for key in required:
            if key not in out:
                raise self.error(node, f"{field}.{key}" if field else key,
                                 f"missing required key {key!r}")
        return out

    def sequence(self, node: Node, field: str, limit: int = 100_000) -> list[tuple[Node, str]]:
        self._visit(node, field)
        if not isinstance(node, SequenceNode):
            raise self.error(node, field, f"expected a list, got {_kind(node)}")
        if len(node.value) > limit:
            raise self.error(node, field, f"list has {len(node.value)} items, at most {limit}")
        return [(item, f"{field}[{i}]") for i, item in enumerate(node.value)]

    def list_of(
        self, node: Node, field: str, item: Callable[[Node, str], T], limit: int = 100_000
    ) -> tuple[T, ...]:
        return tuple(item(n, f) for n, f in self.sequence(node, field, limit))

    # -- scalars -------------------------------------------------------------------------
    def _scalar(self, node: Node, field: str, tags: tuple[str, ...], what: str) -> object:
        self._visit(node, field)
        if not isinstance(node, ScalarNode) or node.tag not in tags:
            raise self.error(node, field, f"expected {what}, got {_kind(node)}")
        try:
            return self._ctor.construct_object(node, deep=True)
        except (yaml.YAMLError, ValueError, OverflowError) as exc:
            raise self.error(node, field, f"bad {what}: {exc}") from exc

    def string(self, node: Node, field: str, *, pattern: re.Pattern[str] | None = None,
               max_len: int = MAX_STRING) -> str:
        value = self._scalar(node, field, ("tag:yaml.org,2002:str",), "a string")
        assert isinstance(value, str)
        if len(value) > max_len:
            raise self.error(node, field, f"string is {len(value)} characters, at most {max_len}")
        if any(0xD800 <= ord(ch) <= 0xDFFF for ch in value):
            raise self.error(node, field, "string holds a lone UTF-16 surrogate")
        if pattern is not None and not pattern.match(value):
            raise self.error(node, field, f"{value[:80]!r} does not match {pattern.pattern}")
        return value

    def boolean(self, node: Node, field: str) -> bool:
        value = self._scalar(node, field, ("tag:yaml.org,2002:bool",), "true or false")
        assert isinstance(value, bool)
        return value

    def integer(self, node: Node, field: str, lo: int, hi: int) -> int:
        value = self._scalar(node, field, ("tag:yaml.org,2002:int",), "an integer")
        assert isinstance(value, int)
        if not lo <= value <= hi:
            raise self.error(node, field, f"{value} is outside {lo}..{hi}")
        return value

    def hex_digest(self, node: Node, field: str, alg: str) -> str:
        """Hex text of exactly the algorithm's size. Read raw, so ``0123`` is not an int."""
        self._visit(node, field)
        if not isinstance(node, ScalarNode) or node.tag in ("tag:yaml.org,2002:null",
                                                           "tag:yaml.org,2002:bool"):
            raise self.error(node, field, f"expected a hex {alg} digest, got {_kind(node)}")
        text = str(node.value)
        if not _HEX_RE.match(text):
            raise self.error(node, field, f"{alg} digest is not hex: {text[:80]!r}")
        want = DIGEST_SIZES[alg] * 2
        if len(text) != want:
            raise self.error(node, field, f"{alg} digest has {len(text)} hex digits, "
                             f"expected {want}")
        return text.lower()


def _kind(node: Node) -> str:
    if isinstance(node, MappingNode):
        return "a mapping"
    if isinstance(node, SequenceNode):
        return "a list"
    tag = str(node.tag).rsplit(":", 1)[-1]
    return f"{tag} {str(node.value)[:40]!r}"


# -- schema ------------------------------------------------------------------------------
def _ref(w: _Walker, node: Node, field: str, algs: frozenset[str] = _BANK_RE) -> RefDigest:
    allowed = (*sorted(algs), "name")
    m = w.mapping(node, field, allowed)
    present = [a for a in sorted(algs) if a in m]
    if len(present) != 1:
        raise w.error(node, field, "a reference value needs exactly one digest key "
                      f"({', '.join(sorted(algs))}); found {len(present)}")
    alg = present[0]
    vnode, vfield = m[alg]
    name = w.string(*m["name"], max_len=1024) if "name" in m else ""
    return RefDigest(alg=alg, hex=w.hex_digest(vnode, vfield, alg), name=name)


def _refs(w: _Walker, node: Node, field: str, algs: frozenset[str] = _BANK_RE
          ) -> tuple[RefDigest, ...]:
    return sorted_refs(w.list_of(node, field, lambda n, f: _ref(w, n, f, algs)))


_SHA256: Final = frozenset({"sha256"})


def _strings(w: _Walker, node: Node, field: str, max_len: int = 4096) -> tuple[str, ...]:
    return tuple(sorted(set(w.list_of(node, field, lambda n, f: w.string(n, f, max_len=max_len)))))


def _quirk_ids(w: _Walker, node: Node, field: str) -> tuple[str, ...]:
    """Quirk ids the policy accepts: each must be a known quirk that needs accepting."""
    def one(n: Node, f: str) -> str:
        quirk_id = w.string(n, f, max_len=64)
        quirk = quirk_by_id(quirk_id)
        if quirk is None:
            raise w.error(n, f, f"unknown firmware quirk {quirk_id!r} (known: "
                          f"{', '.join(sorted(q.id for q in QUIRKS))})")
        if quirk.acceptance is not Acceptance.POLICY:
            raise w.error(n, f, f"quirk {quirk_id!r} is always used where it applies and "
                          "reported in the verdict; a policy cannot accept or refuse it")
        return quirk_id
    return tuple(sorted(set(w.list_of(node, field, one, 32))))


def _banks(w: _Walker, node: Node, field: str) -> BankSpec:
    m = w.mapping(node, field, ("require", "requirePcrs", "refuseSha1Only", "externalPcrs"))
    pcrs = tuple(sorted(set(w.list_of(*m["requirePcrs"], lambda n, f: w.integer(n, f, 0, 23)))
                        )) if "requirePcrs" in m else ()
    refuse = w.boolean(*m["refuseSha1Only"]) if "refuseSha1Only" in m else True
    spec = BankSpec(require_pcrs=pcrs, refuse_sha1_only=refuse)
    if "require" in m:
        rnode, rfield = m["require"]
        banks = w.list_of(rnode, rfield, lambda n, f: w.string(n, f, max_len=16), 8)
        for (bnode, bfield), bank in zip(w_seq_nodes(rnode), banks, strict=True):
            if bank not in DIGEST_SIZES:
                raise w.error(bnode, f"{rfield}{bfield}", f"unknown bank {bank!r} (known: "
                              f"{', '.join(sorted(DIGEST_SIZES))})")
        if not banks:
            raise w.error(rnode, rfield, "a policy must require at least one bank: every quote "
                          "covers it and every log replays it")
        spec = dataclasses.replace(spec, require_banks=tuple(sorted(set(banks))))
    if "externalPcrs" in m:
        enode, efield = m["externalPcrs"]
        external = w.list_of(enode, efield, lambda n, f: _external(w, n, f), 24)
        _unique(w, m["externalPcrs"], [str(e.pcr) for e in external], "external PCR")
        spec = dataclasses.replace(spec, external_pcrs=tuple(sorted(external)))
    return spec


def _external(w: _Walker, node: Node, field: str) -> ExternalPcr:
    m = w.mapping(node, field, ("pcr", "log"), ("pcr", "log"))
    pcr = w.integer(*m["pcr"], 8, 23)
    log = w.string(*m["log"], max_len=16)
    if log not in EXTERNAL_LOGS:
        raise w.error(m["log"][0], m["log"][1], f"unknown log {log!r}: a PCR outside the TCG "
                      f"boot log can be accounted for by {', '.join(sorted(EXTERNAL_LOGS))}")
    return ExternalPcr(pcr=pcr, log=log)


def _allowed_list(w: _Walker, node: Node, field: str, key: str) -> tuple[RefDigest, ...]:
    m = w.mapping(node, field, (key,), (key,))
    return _refs(w, *m[key], _SHA256)


def _secure_boot(w: _Walker, node: Node, field: str) -> SecureBootSpec:
    m = w.mapping(node, field, ("enabled", "pk", "kek", "db", "dbx", "pcr7Variables"))
    return SecureBootSpec(
        enabled=w.boolean(*m["enabled"]) if "enabled" in m else None,
        pk=_allowed_list(w, *m["pk"], "allowed") if "pk" in m else None,
        kek=_allowed_list(w, *m["kek"], "allowed") if "kek" in m else None,
        db=_allowed_list(w, *m["db"], "allowed") if "db" in m else None,
        dbx_required=_allowed_list(w, *m["dbx"], "required") if "dbx" in m else None,
        pcr7_variables=_strings(w, *m["pcr7Variables"], 256) if "pcr7Variables" in m else None,
    )


def _debug(w: _Walker, node: Node, field: str) -> DebugSpec:
    m = w.mapping(node, field, tuple(k for k, _ in DEBUG_FLAGS))
    return DebugSpec(**{attr: w.boolean(*m[key]) for key, attr in DEBUG_FLAGS if key in m})


def _image_list(w: _Walker, node: Node, field: str) -> ImageList:
    keys = ("allowedSigners", "deniedSigners", "allowedDigests", "deniedDigests")
    m = w.mapping(node, field, keys)
    return ImageList(
        allowed_signers=_strings(w, *m["allowedSigners"]) if "allowedSigners" in m else None,
        denied_signers=_strings(w, *m["deniedSigners"]) if "deniedSigners" in m else (),
        allowed_digests=_refs(w, *m["allowedDigests"]) if "allowedDigests" in m else None,
        denied_digests=_refs(w, *m["deniedDigests"]) if "deniedDigests" in m else (),
    )


def _ima_list(w: _Walker, node: Node, field: str) -> ImaList:
    m = w.mapping(node, field, ("allowed", "denied"))
    return ImaList(allowed=_refs(w, *m["allowed"]) if "allowed" in m else None,
                   denied=_refs(w, *m["denied"]) if "denied" in m else ())


def _code_integrity(w: _Walker, node: Node, field: str) -> CodeIntegritySpec:
    m = w.mapping(node, field, ("enabled", "siPolicies", "dep", "hvci", "bootApplications",
                                "drivers", "ima"))
    kmods: ImaList | None = None
    exes: ImaList | None = None
    if "ima" in m:
        ima = w.mapping(*m["ima"], ("kernelModules", "executables"))
        kmods = _ima_list(w, *ima["kernelModules"]) if "kernelModules" in ima else None
        exes = _ima_list(w, *ima["executables"]) if "executables" in ima else None
    return CodeIntegritySpec(
        enabled=w.boolean(*m["enabled"]) if "enabled" in m else None,
        si_policies=_refs(w, *m["siPolicies"]) if "siPolicies" in m else None,
        dep=w.boolean(*m["dep"]) if "dep" in m else None,
        hvci=w.boolean(*m["hvci"]) if "hvci" in m else None,
        boot_applications=(_image_list(w, *m["bootApplications"])
                           if "bootApplications" in m else None),
        drivers=_image_list(w, *m["drivers"]) if "drivers" in m else None,
        ima_kernel_modules=kmods,
        ima_executables=exes,
    )


def _stage(w: _Walker, node: Node, field: str) -> BootStage:
    m = w.mapping(node, field, ("name", "digests", "optional"), ("name", "digests"))
    digests = _refs(w, *m["digests"])
    if not digests:
        raise w.error(m["digests"][0], m["digests"][1], "a boot stage needs at least one digest")
    return BootStage(name=w.string(*m["name"], max_len=256), digests=digests,
                     optional=w.boolean(*m["optional"]) if "optional" in m else False)


def _boot_chain(w: _Walker, node: Node, field: str) -> BootChainSpec:
    m = w.mapping(node, field, ("applications", "kernelCmdline"))
    stages = w.list_of(*m["applications"], lambda n, f: _stage(w, n, f), 64) \
        if "applications" in m else None
    if stages is not None:
        seen_optional = False
        for (snode, sfield), stage in zip(w_seq_nodes(m["applications"][0]), stages, strict=True):
            if seen_optional and not stage.optional:
                raise w.error(snode, f"{m['applications'][1]}{sfield}",
                              "a required stage cannot follow an optional one")
            seen_optional = seen_optional or stage.optional
    cmdline: CmdlineSpec | None = None
    if "kernelCmdline" in m:
        c = w.mapping(*m["kernelCmdline"], ("required", "forbidden", "allowed"))
        cmdline = CmdlineSpec(
            required=_strings(w, *c["required"]) if "required" in c else (),
            forbidden=_strings(w, *c["forbidden"]) if "forbidden" in c else (),
            allowed=_strings(w, *c["allowed"], MAX_STRING) if "allowed" in c else None,
        )
    return BootChainSpec(stages=stages, cmdline=cmdline)


def w_seq_nodes(node: Node) -> list[tuple[Node, str]]:
    """(item node, ``[i]``) of an already validated sequence node."""
    assert isinstance(node, SequenceNode)
    return [(n, f"[{i}]") for i, n in enumerate(node.value)]


def _group(w: _Walker, node: Node, field: str) -> ReferenceGroup:
    m = w.mapping(node, field, ("name", "pcrs", "platform", "firstBootApplication"),
                  ("name", "pcrs"))
    name = w.string(*m["name"], pattern=_ID_RE)
    pnode, pfield = m["pcrs"]
    banks = w.mapping(pnode, pfield, tuple(sorted(DIGEST_SIZES)))
    out: list[tuple[str, tuple[tuple[int, str], ...]]] = []
    for bank in sorted(banks):
        bnode, bfield = banks[bank]
        w._visit(bnode, bfield)
        if not isinstance(bnode, MappingNode):
            raise w.error(bnode, bfield, f"expected a mapping of PCR -> digest, got {_kind(bnode)}")
        vals: dict[int, str] = {}
        for knode, vnode in bnode.value:
            if (isinstance(knode, ScalarNode) and knode.tag == "tag:yaml.org,2002:str"
                    and str(knode.value).isdigit() and len(str(knode.value)) <= 2):
                knode = ScalarNode("tag:yaml.org,2002:int", knode.value, knode.start_mark,
                                   knode.end_mark)  # normalised (JSON-keyed) form: "0": ...
            idx = w.integer(knode, bfield, 0, 23)
            if idx in vals:
                raise w.error(knode, f"{bfield}.{idx}", f"duplicate PCR {idx}")
            vals[idx] = w.hex_digest(vnode, f"{bfield}.{idx}", bank)
        out.append((bank, tuple(sorted(vals.items()))))
    if not any(v for _, v in out):
        raise w.error(pnode, pfield, "a reference group needs at least one PCR value")
    group = ReferenceGroup(name=name, pcrs=tuple(out))
    if "firstBootApplication" in m:
        fnode, ffield = m["firstBootApplication"]
        first = _refs(w, fnode, ffield)
        if not first:
            raise w.error(fnode, ffield, "firstBootApplication needs at least one digest")
        group = dataclasses.replace(group, first_boot_application=first)
    if "platform" in m:
        platform = w.string(*m["platform"], max_len=16)
        if platform not in PLATFORMS:
            raise w.error(m["platform"][0], m["platform"][1], f"unknown platform {platform!r} "
                          f"(known: {', '.join(PLATFORMS)})")
        if 4 not in group.pcr_indices() and not group.first_boot_application:
            raise w.error(m["platform"][0], m["platform"][1], "a group proves a platform only "
                          "when its match is pinned by the boot loader: give PCR 4 or "
                          "firstBootApplication (firmware PCRs say nothing about the OS)")
        group = dataclasses.replace(group, platform=platform)
    return group


_EVENT_TYPES: Final = {t.name: int(t) for t in EventType}


def _allowed_type(w: _Walker, node: Node, field: str) -> AllowedEventType:
    m = w.mapping(node, field, ("pcr", "type"), ("pcr", "type"))
    pnode, pfield = m["pcr"]
    pcr = w.integer(pnode, pfield, 0, 23)
    if pcr not in TOLERANT_PCRS:
        raise w.error(pnode, pfield, f"PCR {pcr} holds measurements rules read: an event type "
                      f"outside its table is never accepted there (tolerant PCRs: "
                      f"{', '.join(map(str, sorted(TOLERANT_PCRS)))})")
    tnode, tfield = m["type"]
    if isinstance(tnode, ScalarNode) and tnode.tag == "tag:yaml.org,2002:int":
        value = w.integer(tnode, tfield, 0, 2**32 - 1)
    else:
        name = w.string(tnode, tfield, max_len=64)
        if name not in _EVENT_TYPES:
            raise w.error(tnode, tfield, f"unknown event type name {name!r} (give a number for "
                          "a vendor type)")
        value = _EVENT_TYPES[name]
    return AllowedEventType(pcr=pcr, event_type=value)


def _tpm(w: _Walker, node: Node, field: str) -> TpmSpec:
    m = w.mapping(node, field, ("clockSafe", "firmwareVersion"))
    spec = TpmSpec(clock_safe=w.boolean(*m["clockSafe"]) if "clockSafe" in m else None)
    if "firmwareVersion" in m:
        fw = w.mapping(*m["firmwareVersion"], ("minimum", "allowed"))
        minimum = w.integer(*fw["minimum"], 0, 2**64 - 1) if "minimum" in fw else None
        allowed = (tuple(sorted(set(w.list_of(*fw["allowed"],
                                              lambda n, f: w.integer(n, f, 0, 2**64 - 1),
                                              1024))))
                   if "allowed" in fw else None)
        spec = dataclasses.replace(spec, firmware_minimum=minimum, firmware_allowed=allowed)
    return spec


def _custom(w: _Walker, node: Node, field: str) -> CustomRule:
    m = w.mapping(node, field, ("name", "expression", "description"), ("name", "expression"))
    name = w.string(*m["name"], pattern=_RULE_NAME_RE)
    enode, efield = m["expression"]
    expression = w.string(enode, efield, max_len=cel.MAX_EXPRESSION_CHARS * 4)
    try:
        cel.compile_expression(expression)
    except CelError as exc:
        raise w.error(enode, efield, exc.message) from exc
    desc = w.string(*m["description"], max_len=1024) if "description" in m else ""
    return CustomRule(name=name, expression=expression, description=desc)


def _spec(w: _Walker, node: Node, field: str) -> PolicySpec:
    m = w.mapping(node, field, ("permissive", "banks", "tpm", "secureBoot", "debug",
                                "codeIntegrity", "bootChain", "referenceGroups", "evidence",
                                "customRules"))
    groups = w.list_of(*m["referenceGroups"], lambda n, f: _group(w, n, f), 1024) \
        if "referenceGroups" in m else ()
    _unique(w, m.get("referenceGroups"), [g.name for g in groups], "reference group name")
    rules = w.list_of(*m["customRules"], lambda n, f: _custom(w, n, f), 256) \
        if "customRules" in m else ()
    _unique(w, m.get("customRules"), [r.name for r in rules], "custom rule name")
    evidence = EvidenceSpec()
    if "evidence" in m:
        e = w.mapping(*m["evidence"], ("allowedAnomalies", "allowedEventTypes", "allowedQuirks"))
        if "allowedAnomalies" in e:
            evidence = EvidenceSpec(allowed_anomalies=_strings(w, *e["allowedAnomalies"], 256))
        if "allowedQuirks" in e:
            evidence = dataclasses.replace(evidence,
                                           allowed_quirks=_quirk_ids(w, *e["allowedQuirks"]))
        if "allowedEventTypes" in e:
            types = w.list_of(*e["allowedEventTypes"], lambda n, f: _allowed_type(w, n, f), 256)
            evidence = dataclasses.replace(evidence,
                                           allowed_event_types=tuple(sorted(set(types))))
    return PolicySpec(
        permissive=w.boolean(*m["permissive"]) if "permissive" in m else False,
        tpm=_tpm(w, *m["tpm"]) if "tpm" in m else None,
        banks=_banks(w, *m["banks"]) if "banks" in m else None,
        secure_boot=_secure_boot(w, *m["secureBoot"]) if "secureBoot" in m else None,
        debug=_debug(w, *m["debug"]) if "debug" in m else None,
        code_integrity=_code_integrity(w, *m["codeIntegrity"]) if "codeIntegrity" in m else None,
        boot_chain=_boot_chain(w, *m["bootChain"]) if "bootChain" in m else None,
        reference_groups=tuple(sorted(groups, key=lambda g: g.name)),
        evidence=evidence,
        custom_rules=tuple(sorted(rules, key=lambda r: r.name)),
    )


def _unique(w: _Walker, where: tuple[Node, str] | None, names: list[str], what: str) -> None:
    if where is None:
        return
    seen: set[str] = set()
    for (node, field), name in zip(w_seq_nodes(where[0]), names, strict=True):
        if name in seen:
            raise w.error(node, f"{where[1]}{field}", f"duplicate {what} {name!r}")
        seen.add(name)


def _document(w: _Walker, root: Node) -> Policy:
    m = w.mapping(root, "", ("apiVersion", "kind", "metadata", "spec"),
                  ("apiVersion", "kind", "metadata", "spec"))
    api = w.string(*m["apiVersion"], max_len=64)
    if api != API_VERSION:
        raise w.error(m["apiVersion"][0], "apiVersion", f"unsupported apiVersion {api!r} "
                      f"(this hostgate reads {API_VERSION!r})")
    kind = w.string(*m["kind"], max_len=64)
    if kind != KIND:
        raise w.error(m["kind"][0], "kind", f"kind must be {KIND!r}, got {kind!r}")
    md = w.mapping(*m["metadata"], ("id", "version", "description"), ("id", "version"))
    vnode, vfield = md["version"]
    if isinstance(vnode, ScalarNode) and vnode.tag == "tag:yaml.org,2002:int":
        version = str(w.integer(vnode, vfield, 0, 2**63 - 1))
    else:  # "7" is accepted (the normalised form); the version is an integer either way
        version = str(int(w.string(vnode, vfield, pattern=_VERSION_RE)))
    metadata = Metadata(
        id=w.string(*md["id"], pattern=_ID_RE),
        version=version,
        description=w.string(*md["description"], max_len=4096) if "description" in md else "",
    )
    spec = _spec(w, *m["spec"])
    if w.require_asks and not spec.permissive and admits_any_host(spec):
        raise w.error(m["spec"][0], "spec", "admits any host with a valid quote: it has "
                      "no Secure Boot, key-database, boot-chain, reference-group or "
                      "boot-application allow-list rule. Add one, or set spec.permissive: true "
                      "to mean it (`hostgate policy lint` explains what a policy leaves open)")
    return Policy(metadata=metadata, spec=spec)


def load_policy(text: str | bytes, *, require_asks: bool = True) -> Policy:
    """Parse and validate a policy document; raise :class:`PolicyError` naming line and field.

    A policy that would admit any host (``lint.admits_any_host``) is refused unless it says
    ``spec.permissive: true``; ``require_asks=False`` loads it anyway (for ``policy lint``)."""
    if isinstance(text, bytes):
        if len(text) > MAX_POLICY_BYTES:
            raise PolicyError(f"policy is {len(text)} bytes, at most {MAX_POLICY_BYTES}")
        try:
            text = text.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise PolicyError(f"policy is not UTF-8 (byte offset {exc.start})") from exc
    if len(text) > MAX_POLICY_BYTES:
        raise PolicyError(f"policy is {len(text)} characters, at most {MAX_POLICY_BYTES}")
    depth_error = _nesting_error(text)
    if depth_error is not None:
        raise depth_error
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark
        raise PolicyError(f"not valid YAML: {exc.problem or exc}",
                          line=mark.line + 1 if mark else None,
                          column=mark.column + 1 if mark else None) from exc
    except (yaml.YAMLError, RecursionError) as exc:
        raise PolicyError(f"not valid YAML: {type(exc).__name__}") from exc
    if root is None:
        raise PolicyError("policy document is empty")
    return _document(_Walker(require_asks=require_asks), root)


def _nesting_error(text: str) -> PolicyError | None:
    """Refuse flow-style nesting deeper than :data:`MAX_DEPTH` before PyYAML recurses on it."""
    depth = 0
    line = 1
    for ch in text:
        if ch in "[{":
            depth += 1
            if depth > MAX_DEPTH:
                return PolicyError(f"nesting deeper than {MAX_DEPTH}", line=line)
        elif ch in "]}":
            depth = max(0, depth - 1)
        elif ch == "\n":
            line += 1
    return None


def load_policy_file(path: str | Path, *, require_asks: bool = True) -> Policy:
    """Read and load a policy file (size-bounded before reading)."""
    p = Path(path)
    try:
        size = p.stat().st_size
        if size > MAX_POLICY_BYTES:
            raise PolicyError(f"{p}: policy is {size} bytes, at most {MAX_POLICY_BYTES}")
        data = p.read_bytes()
    except OSError as exc:
        raise PolicyError(f"cannot read policy {p}: {exc.strerror}") from exc
    return load_policy(data, require_asks=require_asks)
