"""The ``bootChain`` section: the boot applications in order, stage by stage, and the kernel
command line as the kernel reads it.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

from services.tpm.claims import Claims, LoadOptions
from services.verifier.policy import ids
from services.verifier.policy.events import shorten
from services.verifier.policy.kernel_params import (
    COMMAND_LINE_SIZE,
    UnreadableCommandLine,
    forbidden_hit,
    kernel_parameters,
    load_options_forms,
    missing_required,
)
from services.verifier.policy.model import BootChainSpec, CmdlineSpec
from services.verifier.policy.results import EventRef, RuleResult
from services.verifier.policy.rules._common import (
    BOOT_APPLICATION_PCR,
    FAIL,
    NA,
    PASS,
    Subject,
    _digest_matches,
    _judged,
    _r,
    code_in,
)


def check_boot_chain(spec: BootChainSpec, s: Subject) -> list[RuleResult]:
    out: list[RuleResult] = []
    if spec.stages is not None:
        out.append(_chain(spec, s))
    if spec.cmdline is not None:
        out.append(_cmdline(spec.cmdline, s))
    return out


def _chain(spec: BootChainSpec, s: Subject) -> RuleResult:
    stages = spec.stages or ()
    apps = code_in(s.claims, BOOT_APPLICATION_PCR)
    required = sum(1 for st in stages if not st.optional)
    names = " -> ".join(st.name for st in stages)
    if len(apps) < required or len(apps) > len(stages):
        last = apps[-1] if apps else None
        ref = s.index.ref(last.seq, last.file_path or last.device_path) if last else None
        return _r(ids.BOOTCHAIN_APPLICATIONS, FAIL,
                  f"The host started {len(apps)} boot application(s); the policy expects "
                  f"{required if required == len(stages) else f'{required} to {len(stages)}'} "
                  f"({names}).", ref)
    for i, (app, stage) in enumerate(zip(apps, stages, strict=False)):
        if _digest_matches(stage.digests, app.digests, s.trusted_banks) is None:
            label = app.file_path or app.device_path or f"image at event {app.seq}"
            shown = next((f"{b}:{app.digests[b].hex()}" for b in ("sha256", "sha384", "sha1")
                          if b in app.digests), "no digest")
            return _r(ids.BOOTCHAIN_APPLICATIONS, FAIL,
                      f"Boot stage {i + 1} ({stage.name}) ran {label}, whose digest {shown} is "
                      f"not approved for that stage (event {app.seq}).",
                      s.index.ref(app.seq, label, pcr=app.pcr))
    return _judged(s, ids.BOOTCHAIN_APPLICATIONS, PASS, lambda: (
        f"The boot chain ({', '.join(st.name for st in stages[:len(apps)])}) matches "
        "approved images."))


def _cmdline(spec: CmdlineSpec, s: Subject) -> RuleResult:
    """Every command line a bound measurement says the kernel may have run with is judged,
    parsed as Linux parses it (:mod:`.kernel_params`); the kernel's own measurement of its load
    options must be one of them."""
    rule = ids.BOOTCHAIN_CMDLINE
    if s.platform == "windows":
        return _r(rule, NA, "Kernel command line: a Windows boot has no Linux command line "
                  "(the host matched a windows reference group).")
    c = s.claims
    unverified = c.unverified_boot_strings
    if unverified:
        return _r(rule, FAIL, f"The kernel command line cannot be confirmed: event "
                  f"{unverified[0]} is a boot-loader string whose digest is not over its data "
                  "or whose data does not decode, so it could say anything.",
                  s.index.ref(unverified[0], "unbound string"))
    lines: list[tuple[str, str, EventRef | None]] = []
    for line in c.kernel_cmdlines:
        at, ref = _cmdline_event(line, s)
        lines.append((line, at, ref))
    for p in c.possible_cmdlines:
        lines.append((p.text, f" (event {p.seq}, labelled {p.event_type}, whose data is a "
                      "UTF-16 command line)", s.index.ref(p.seq, p.text)))
    if not lines:
        return _r(rule, FAIL, "No kernel command line was measured, so it cannot be checked.")
    unconfirmed = _unconfirmed_load_options(c, [line for line, _, _ in lines], s.trusted_banks)
    if unconfirmed is not None:
        return _r(rule, FAIL, f"The kernel command line cannot be confirmed: the kernel's load "
                  f"options (event {unconfirmed.seq}, PCR 9) hash to none of the {len(lines)} "
                  "command lines the boot loaders measured, so it ran with one nothing shows.",
                  s.index.ref(unconfirmed.seq, "load options"))
    for line, at, ref in lines:
        if spec.allowed is not None and line not in spec.allowed:
            return _r(rule, FAIL, f"The kernel command line is not one of the "
                      f"{len(spec.allowed)} approved ones: {shorten(line, 120)!r}{at}.", ref)
        try:
            params = kernel_parameters(line)
        except UnreadableCommandLine as exc:
            return _r(rule, FAIL, f"The kernel command line cannot be confirmed: "
                      f"{shorten(line, 80)!r}{at}: {exc}.", ref)
        hit = forbidden_hit(params, spec.forbidden)
        if hit is not None:
            param, entry = hit
            return _r(rule, FAIL, f"The kernel command line contains the forbidden option "
                      f"{shorten(param.written, 80)!r} (the kernel reads it as {entry!r}){at}.",
                      ref)
        missing = missing_required(params, spec.required)
        if missing is not None:
            return _r(rule, FAIL, f"The kernel command line does not apply the required option "
                      f"{missing!r} (absent, overridden by a later value, after '--' or past "
                      f"the kernel's {COMMAND_LINE_SIZE}-byte limit){at}.", ref)
    return _judged(s, rule, PASS, lambda: f"All {len(lines)} kernel command lines meet the policy.")


def _unconfirmed_load_options(c: Claims, lines: Sequence[str],
                              banks: frozenset[str] | None) -> LoadOptions | None:
    """The first load-options measurement that no form of any of ``lines`` hashes to in a
    bank the policy relies on (any hashable bank when it names none)."""
    if not c.kernel_load_options:
        return None
    forms = [form for line in lines for form in load_options_forms(line)]
    for lo in c.kernel_load_options:
        usable = [(b, d) for b, d in lo.digests.items()
                  if (banks is None or b in banks) and b in hashlib.algorithms_available]
        if not any(hashlib.new(b, form).digest() == d for b, d in usable for form in forms):
            return lo
    return None


def _cmdline_event(line: str, s: Subject) -> tuple[str, EventRef | None]:
    """(" (event N)", its reference) for the event that measured ``line``, or ("", None)."""
    seq = s.index.cmdline_event(line)
    if seq is None:
        return "", None
    return f" (event {seq})", s.index.ref(seq, line)
