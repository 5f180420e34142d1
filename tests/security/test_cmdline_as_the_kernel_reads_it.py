"""The kernel command-line rule judges what the kernel ran with, as the kernel reads it.

Attacker (a): a host with a genuine TPM and root after a bad boot. The bad boot is the
attacker's own (root edited the boot configuration before rebooting); afterwards root may
extend any PCR and write any log, but cannot undo an extend. Two ways, found by the second
red-team pass, to run a forbidden option past ``policy.bootchain.kernel_cmdline``, each of them
now refused:

1. **The line the kernel got is measured where the rule did not look, and root appends an
   approved one where it does.** GRUB's ``chainloader FILE ARGS`` hands ``ARGS`` to the image
   as its UEFI load options (the Linux EFI stub's command line) and measures only
   ``grub_cmd: chainloader ...``; the stub measures the options into PCR 9 as a tagged event
   (digest only). A systemd-stub PCR 12 line built to parse as a Linux-stub tag could be
   relabelled ``EV_EVENT_TAG``; a PCR 8 string rewritten as undecodable data vanished from the
   fold when the policy accepted ``tpm.event.undecodable``. Now: every GRUB command that starts
   a kernel carries a command line (``IplString.command_line``); any bound event of PCR 12
   whose data could be a systemd-stub line is read as one (``Claims.possible_cmdlines``);
   Linux-stub tags count only in PCR 9; an undecodable boot-loader string makes the line
   unconfirmable; and the kernel's own load-options measurement must hash to a line the rule
   read (``kernel_params.load_options_forms``), so PCR 9 is in the rule's coverage.
2. **The rule's tokenizer was not the kernel's parser.** Linux strips a leading ``"``, treats
   ``-`` and ``_`` alike in names, splits on byte 0xA0 but not on 0x1C-0x1F, and hands what
   follows ``--`` to init. The rule now parses as Linux does (``kernel_params``).

Every quote is a real swtpm quote; the verifier is the real core. The hosts' measured boots are
the simulator's clean Ubuntu boot with their PCR 8 (and 9 or 12) measurements replaced by what
the bad boot measured (``_booting``); nothing else differs from the golden boot the policy was
derived from. Each attack test failed (the verdict was PASS) on the code before the fix.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from services.agent import fleet as fleet_mod
from services.agent import uefi
from services.agent.fleet import HostSpec, SimulatedHost
from services.agent.measured_boot import BootConfig, MeasuredBoot, synthesise
from services.tpm.eventlog import EventType as T
from services.tpm.eventlog_builder import TPM_ALG_SHA1, TPM_ALG_SHA256, LogEvent, measure
from services.tpm.ipl import LINUX_EFI_LOAD_OPTIONS_TAG
from services.verifier.policy.derive import derive_policy, golden_from_log
from services.verifier.policy.model import CmdlineSpec
from services.verifier.policy_in_force import PolicyInForce
from tests.security.appraisal_support import appraised, in_force, lab, log_of, reasons, with_spec

pytestmark = pytest.mark.swtpm

LINUX = "ubuntu-24.04-shim"
ALGS = (TPM_ALG_SHA1, TPM_ALG_SHA256)
KERNEL = "/vmlinuz-6.8.0-45-generic"
GOLDEN_OPTIONS = b"root=UUID=5b1a0f2e-7a53-4d0e-9b52-0c1d2e3f4a5b ro quiet splash"
CMDLINE_RULE = "policy.bootchain.kernel_cmdline"


def _golden_policy() -> PolicyInForce:
    """``hostgate policy from-log`` of the clean Ubuntu boot (its kernelCmdline is the exact
    ``allowed`` list of the golden line)."""
    golden = golden_from_log(synthesise(LINUX, 0).log_bytes(), "golden")
    return in_force(derive_policy([golden], policy_id="cmdline-tests", version="1").text)


def _forbidding_policy(**cmdline: Any) -> PolicyInForce:
    """The derived policy with its command-line rule as a policy author writes one by hand."""
    base = _golden_policy()
    chain = base.prepared.policy.spec.boot_chain
    assert chain is not None
    return with_spec(base, boot_chain=dataclasses.replace(chain, cmdline=CmdlineSpec(**cmdline)))


def _grub(prefix: bytes, text: bytes) -> LogEvent:
    """GRUB's string measurement: data ``prefix: text\\0``, digest over ``text`` only."""
    return measure(8, T.EV_IPL, prefix + b": " + text + b"\x00", ALGS, hashed=text)


def _stub_cmdline(text: str) -> LogEvent:
    """systemd-stub's PCR 12 measurement: the UTF-16LE command line with its NUL, hashed whole."""
    data = text.encode("utf-16-le") + b"\x00\x00"
    return measure(12, T.EV_IPL, data, ALGS)


def _boot(pcr8: Sequence[LogEvent] = (), extra: Sequence[LogEvent] = (), *,
          drop_initrd: bool = False) -> MeasuredBoot:
    """The clean Ubuntu boot with its PCR 8 strings replaced by ``pcr8`` and ``extra`` measured
    right after the kernel's PCR 4 load (what the kernel's EFI stub measures)."""
    events: list[LogEvent] = []
    for e in synthesise(LINUX, 0).events:
        if e.pcr == 8:
            continue
        if drop_initrd and e.pcr == 9 and b"initrd" in e.data:
            continue
        events.append(e)
    at = next(i for i, e in enumerate(synthesise(LINUX, 0).events) if e.pcr == 8)
    events[at:at] = list(pcr8)
    kernel = max(i for i, e in enumerate(events) if e.pcr == 4)
    events[kernel + 1:kernel + 1] = list(extra)
    return MeasuredBoot(LINUX, 0, BootConfig(), tuple(events))


@contextmanager
def _booting(tmp_path: Path, boots: Mapping[str, MeasuredBoot]) -> Iterator[dict[str, SimulatedHost]]:
    """One swtpm host per entry, whose TPM measured exactly that boot (the fleet's synthesiser
    is replaced for these hosts only, keyed by the host's seed)."""
    by_seed = {i + 1: boot for i, boot in enumerate(boots.values())}
    real = synthesise

    def synth(image: str, seed: int, config: BootConfig | None = None) -> MeasuredBoot:
        return by_seed[seed] if seed in by_seed else real(image, seed, config)

    specs = [HostSpec(name, LINUX, seed=i + 1) for i, name in enumerate(boots)]
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(fleet_mod, "synthesise", synth)
        with lab(tmp_path, specs) as fleet:
            yield {name: fleet.host(name) for name in boots}


def _extend(host: SimulatedHost, ev: LogEvent) -> LogEvent:
    """Root after boot: extend ``ev``'s digests in every bank and log it."""
    host.extend(ev.pcr, {"sha1": ev.digest(TPM_ALG_SHA1), "sha256": ev.digest(TPM_ALG_SHA256)})
    return ev


# --- 1. the real command line measured where the rule does not look --------------------------
def test_chainloaded_kernel_cmdline_in_pcr9_hidden_behind_an_appended_golden_line(
        tmp_path: Path) -> None:
    """Attack: root sets the boot entry to ``chainloader /vmlinuz-... <options> init=/bin/sh``
    (the approved GRUB starts the approved, signed kernel through LoadImage, so PCR 4 is the
    golden shim -> GRUB -> kernel chain). GRUB measures ``grub_cmd: chainloader ...`` in PCR 8;
    the kernel's EFI stub measures its LoadOptions into PCR 9 (EV_EVENT_TAG, load-options tag,
    digest of the UTF-16 options). After boot root extends PCR 8 with the golden
    ``kernel_cmdline: /vmlinuz-... <golden options>`` and logs it.
    Gets: the derived policy (exact ``allowed`` command line) passes every rule, the kernel
    command-line rule included; the kernel ran ``init=/bin/sh``."""
    options = GOLDEN_OPTIONS + b" init=/bin/sh"
    load_options = options.decode().encode("utf-16-le") + b"\x00\x00"
    stub_tag = measure(9, T.EV_EVENT_TAG, uefi.tagged_event(
        LINUX_EFI_LOAD_OPTIONS_TAG, b"LOADED_IMAGE::LoadOptions\x00"), ALGS, hashed=load_options)
    boot = _boot([_grub(b"grub_cmd", b"set root='hd0,gpt2'"),
                  _grub(b"grub_cmd", b"chainloader " + KERNEL.encode() + b" " + options)],
                 [stub_tag], drop_initrd=True)
    policy = _golden_policy()
    with _booting(tmp_path, {"rt2-chain": boot}) as hosts:
        host = hosts["rt2-chain"]
        honest = appraised(host, policy, label="honest")
        assert reasons(honest) == {CMDLINE_RULE}, honest.reason_ids  # "no command line measured"
        golden_line = _extend(host, _grub(b"kernel_cmdline", KERNEL.encode() + b" " + GOLDEN_OPTIONS))
        verdict = appraised(host, policy, log=log_of([*boot.events, golden_line]), label="forged")
    assert not verdict.passed, ("a kernel started with init=/bin/sh passed the command-line rule: "
                                "its real command line sits in PCR 9 (load options) and in a "
                                "'chainloader' command, and an appended golden line was read")


def _tagged_cmdline(options: str) -> str:
    """A command line whose UTF-16LE encoding (with systemd's NUL) is also a well-formed
    ``TCG_PCClientTaggedEvent`` with the Linux EFI stub's *initrd* tag: characters U+22EC U+8F3B
    are the tag id 0x8F3B22EC, the next two characters the data size (65,542 needs the second
    to be U+0001: no NUL, which would end the measured string), then ``options`` and padding.
    The kernel's EFI stub keeps the first COMMAND_LINE_SIZE bytes: its parameters are the
    (unknown, ignored) first word and ``options``."""
    chars = 32_775  # with the NUL: 65,550 bytes = 8 header bytes + 65,542
    size = chars * 2 - 8
    head = chr(0x22EC) + chr(0x8F3B) + chr(size & 0xFFFF) + chr(size >> 16) + " " + options + " "
    return head + "x" * (chars - 1 - len(head))


def test_systemd_stub_cmdline_relabelled_as_a_linux_stub_tag_in_pcr12(tmp_path: Path) -> None:
    """Attack: the host boots through systemd-boot (a type-1 entry whose ``options`` line the
    attacker wrote), which measures the kernel command line into PCR 12 as UTF-16 EV_IPL, hashed
    whole. The command line is built so that its bytes also parse as an ``EV_EVENT_TAG`` with the
    Linux EFI stub's initrd tag (``_tagged_cmdline``), and carries ``init=/bin/sh``. The host
    relabels that event ``EV_EVENT_TAG`` (in PCR 12's row, bound whole in PCRs 11-14, no content
    contract; ``readings._event_tag_fact`` returns "initrd" for a Linux tag before any SIPA
    check, in any PCR), then extends PCR 12 with the golden command line as systemd-stub would
    log it.
    Gets: the derived policy passes; the kernel ran ``init=/bin/sh``."""
    real = _stub_cmdline(_tagged_cmdline(GOLDEN_OPTIONS.decode() + " init=/bin/sh"))
    boot = _boot([], [real])
    policy = _golden_policy()
    with _booting(tmp_path, {"rt2-tag12": boot}) as hosts:
        host = hosts["rt2-tag12"]
        honest = appraised(host, policy, label="honest")
        assert not honest.passed
        golden = _extend(host, _stub_cmdline(KERNEL + " " + GOLDEN_OPTIONS.decode()))
        out = [LogEvent(e.pcr, T.EV_EVENT_TAG, e.digests, e.data) if e is real else e
               for e in boot.events]
        verdict = appraised(host, policy, log=log_of([*out, golden]), label="forged")
    assert not verdict.passed, ("a systemd-stub command line with init=/bin/sh vanished as a "
                                "Linux stub tag in PCR 12")


def test_accepted_undecodable_anomaly_hides_the_kernel_cmdline_in_pcr8(tmp_path: Path) -> None:
    """Attack: as ``test_unbound_claims.py::test_accepted_undecodable_anomaly_hides_code_in_pcr4``
    but in PCR 8, which the fix left out. The fleet's golden log comes from S06-like firmware,
    so ``from-log`` writes ``allowedAnomalies: [tpm.event.undecodable]``. The kernel ran with
    ``init=/bin/sh``; the host rewrites the data of both GRUB strings that carry it (the
    ``linux`` command and ``kernel_cmdline:``) as ``41 00 00 d8`` (UTF-16 with a lone
    surrogate). ``decode_ipl`` raises before any binding check, the reading is an undecodable,
    non-fatal (PCR 8 is not fail-closed), accepted anomaly, and the fold drops it: it is neither
    a command line nor an ``unverified_boot_strings`` entry (that list takes only *opaque*
    readings). Root extends the golden ``kernel_cmdline:`` string.
    Gets: ``policy.bootchain.kernel_cmdline`` passes; the kernel ran ``init=/bin/sh``."""
    from tests.security.test_unbound_claims import _golden_with_s06_firmware_quirk

    text = derive_policy([golden_from_log(_golden_with_s06_firmware_quirk(), "golden-s06-fw")],
                         policy_id="cmdline-tests", version="1").text
    policy = in_force(text)
    assert "tpm.event.undecodable" in policy.prepared.policy.spec.evidence.allowed_anomalies
    with lab(tmp_path, [HostSpec("rt2-undec8", LINUX, "kernel_cmdline_tampered")]) as fleet:
        host = fleet.host("rt2-undec8")
        honest = appraised(host, policy, label="honest")
        assert reasons(honest) == {CMDLINE_RULE}, honest.reason_ids
        events = list(host.measured_boot.events)
        out = [LogEvent(e.pcr, T.EV_IPL, e.digests, b"A\x00\x00\xd8")
               if e.pcr == 8 and b"init=/bin/sh" in e.data else e for e in events]
        assert out != events
        golden = _extend(host, _grub(b"kernel_cmdline", KERNEL.encode() + b" " + GOLDEN_OPTIONS))
        verdict = appraised(host, policy, log=log_of([*out, golden]), label="forged")
    assert not verdict.passed, ("a kernel command line with init=/bin/sh vanished as an accepted "
                                "undecodable PCR 8 string")


# --- 2. the rule's tokens are not the kernel's parameters -----------------------------------
def _linux_boot(cmdline: bytes) -> MeasuredBoot:
    """GRUB booting the approved kernel with ``cmdline`` (raw bytes, as grub.cfg holds them:
    GRUB's script parser and ``grub_create_loader_cmdline`` pass them through, escaping only
    ``\\``, ``'`` and ``"``, and quoting an argument only for an ASCII space)."""
    k = KERNEL.encode()
    return _boot([_grub(b"grub_cmd", b"set root='hd0,gpt2'"),
                  _grub(b"grub_cmd", b"linux " + k + b" " + cmdline),
                  _grub(b"grub_cmd", b"initrd /initrd.img-6.8.0-45-generic"),
                  _grub(b"kernel_cmdline", k + b" " + cmdline)])


def _stub_boot(cmdline: str) -> MeasuredBoot:
    """The approved chain starting a systemd-stub kernel whose command line (taken verbatim from
    its load options) systemd-stub measures in PCR 12; GRUB measures nothing in PCR 8."""
    return _boot([], [_stub_cmdline(cmdline)])


TOKEN_CASES = [
    pytest.param(
        {"forbidden": ("init",)},
        _stub_boot(GOLDEN_OPTIONS.decode() + ' init=/bin/sh'),
        _stub_boot(GOLDEN_OPTIONS.decode() + ' "init=/bin/sh"'),
        id="leading-quote: Linux next_arg strips it, the rule's key is '\"init'"),
    pytest.param(
        {"forbidden": ("ima_appraise",)},
        _linux_boot(GOLDEN_OPTIONS + b" ima_appraise=off"),
        _linux_boot(GOLDEN_OPTIONS + b" ima-appraise=off"),
        id="dash-underscore: parameqn treats ima-appraise as ima_appraise"),
    pytest.param(
        {"forbidden": ("init",)},
        _linux_boot(GOLDEN_OPTIONS + b" init=/bin/sh"),
        _linux_boot(GOLDEN_OPTIONS + b"\xa0init=/bin/sh"),
        id="nbsp-byte: Linux isspace(0xA0), the rule sees U+FFFD"),
    pytest.param(
        {"required": ("lockdown=integrity",)},
        _linux_boot(GOLDEN_OPTIONS + b" lockdownXintegrity"),
        _linux_boot(GOLDEN_OPTIONS + b"\x1clockdown=integrity"),
        id="file-separator: Python splits on 0x1C, Linux does not"),
    pytest.param(
        {"required": ("lockdown=integrity",)},
        _linux_boot(GOLDEN_OPTIONS + b" lockdownXintegrity"),
        _linux_boot(GOLDEN_OPTIONS + b" -- lockdown=integrity"),
        id="double-dash: parse_args hands everything after -- to init"),
]


@pytest.mark.parametrize(("rule", "control", "attack"), TOKEN_CASES)
def test_cmdline_rule_tokens_differ_from_the_kernels_parameters(
        tmp_path: Path, rule: dict[str, tuple[str, ...]], control: MeasuredBoot,
        attack: MeasuredBoot) -> None:
    """Attack: the policy author forbids (or requires) an option; the host boots with a command
    line in which the kernel sees that option (or does not see it) but the rule's tokenizer does
    not (or does). Nothing is relabelled or appended: the log is the honest one.
    Gets: ``policy.bootchain.kernel_cmdline`` passes; the control (the plain spelling, or the
    option visibly absent) fails it, so the policy does ask the question."""
    policy = _forbidding_policy(**rule)
    with _booting(tmp_path, {"rt2-control": control, "rt2-attack": attack}) as hosts:
        plain = appraised(hosts["rt2-control"], policy, label="control")
        assert reasons(plain) == {CMDLINE_RULE}, plain.reason_ids
        verdict = appraised(hosts["rt2-attack"], policy, label="attack")
    assert not verdict.passed, (f"the command-line rule {rule} passed a command line the kernel "
                                "parses differently")


# --- 3. the kernel's own measurement of its load options ------------------------------------
def _load_options_tag(options: str) -> LogEvent:
    """The Linux EFI stub's PCR 9 measurement of UTF-16 load options (with their NUL)."""
    data = options.encode("utf-16-le") + b"\x00\x00"
    return measure(9, T.EV_EVENT_TAG, uefi.tagged_event(
        LINUX_EFI_LOAD_OPTIONS_TAG, b"LOADED_IMAGE::LoadOptions\x00"), ALGS, hashed=data)


def test_load_options_no_measured_line_hashes_to_fail_the_rule(tmp_path: Path) -> None:
    """Attack: the firmware (or a boot manager that measures nothing) starts the approved kernel
    with load options ``<golden options> init=/bin/sh``; no boot loader string carries them,
    only the stub's PCR 9 measurement. Root appends the golden GRUB ``kernel_cmdline:`` line.
    Refused: the load options hash to no line the rule read, so the command line the kernel
    ran with cannot be confirmed."""
    options = KERNEL + " " + (GOLDEN_OPTIONS + b" init=/bin/sh").decode()
    boot = _boot([], [_load_options_tag("BOOT_IMAGE=" + options)])
    policy = _golden_policy()
    with _booting(tmp_path, {"cl-loadopts": boot}) as hosts:
        host = hosts["cl-loadopts"]
        golden = _extend(host, _grub(b"kernel_cmdline", KERNEL.encode() + b" " + GOLDEN_OPTIONS))
        verdict = appraised(host, policy, log=log_of([*boot.events, golden]), label="forged")
    assert CMDLINE_RULE in reasons(verdict), verdict.reason_ids
    (failure,) = [f for f in verdict.failures if f.rule_id == CMDLINE_RULE]
    assert "load options" in failure.sentence, failure.sentence


def test_load_options_of_the_measured_line_confirm_it(tmp_path: Path) -> None:
    """Control: GRUB measures the golden line and starts the kernel through ``LoadImage``, so
    the stub's load options are ``BOOT_IMAGE=`` and that line: the rule passes."""
    line = KERNEL + " " + GOLDEN_OPTIONS.decode()
    golden_pcr8 = [e for e in synthesise(LINUX, 0).events if e.pcr == 8]
    boot = _boot(golden_pcr8, [_load_options_tag("BOOT_IMAGE=" + line)])
    policy = _golden_policy()
    with _booting(tmp_path, {"cl-loadopts-ok": boot}) as hosts:
        verdict = appraised(hosts["cl-loadopts-ok"], policy, label="honest")
    assert CMDLINE_RULE not in reasons(verdict), verdict.reason_ids
