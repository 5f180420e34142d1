"""The demo's outcome as data: per-host results, the self-check, JSON and a self-contained HTML.

Everything here is pure. :func:`judge` decides whether one host ended the way its tamper profile
says it must (the demo checks itself); :func:`to_json` and :func:`render_html` write the run
(the HTML has inline CSS and no external assets, so it can be mailed or archived as one file).
"""

from __future__ import annotations

import html
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

from services.verifier import reasons

#: What must stop each tamper profile: verifier rule/reason ids, or ``intake.<REASON>`` for an
#: intake rejection. A tampered host passes the self-check only if it was refused (failed
#: verdict or rejection) and at least one of these ids is among the reasons. Each names the
#: mechanism that stops the profile, not merely something that fails with it.
EXPECTED_REASONS: Final[Mapping[str, frozenset[str]]] = {
    "secure_boot_off": frozenset({"policy.secureboot.enabled"}),
    "boot_debugging_on": frozenset({"policy.debug.boot_debugging"}),
    "kernel_debugger_on": frozenset({"policy.debug.kernel_debugger"}),
    "test_signing_on": frozenset({"policy.debug.test_signing"}),
    "code_integrity_off": frozenset({"policy.codeintegrity.enabled"}),
    "unknown_bootloader": frozenset({"policy.bootchain.applications"}),
    "unknown_kernel": frozenset({"policy.bootchain.applications"}),
    "revoked_in_dbx": frozenset({"policy.bootchain.applications"}),
    "db_tampered": frozenset({"policy.secureboot.db"}),
    "kernel_cmdline_tampered": frozenset({"policy.bootchain.kernel_cmdline"}),
    "forged_log": frozenset({reasons.REPLAY_PCR_MISMATCH}),
    # Every quoted PCR is accounted for by the replay: PCRs 12-14 were quoted (the policy
    # reads the Windows boot configuration there) and the log holds none of their events.
    "windows_events_dropped": frozenset({reasons.REPLAY_PCR_MISMATCH}),
    # Opaque code in PCR 4 stays in the boot chain: the relabelled kernel is a fourth
    # application before the approved one root appended.
    "boot_app_relabelled": frozenset({"policy.bootchain.applications"}),
    # Every quoted bank is replayed: the quote's SHA-256 bank is not in the log.
    "sha1_only_log": frozenset({reasons.REPLAY_PCR_MISMATCH}),
    # Coverage is the policy's: intake refuses a quote over another selection than the
    # challenge's (the demo's policy asks for SHA-256 PCRs 0-9 and 12-14).
    "quote_fewer_pcrs": frozenset({"intake.SELECTION_MISMATCH"}),
    "pcr_bank_downgrade": frozenset({"intake.SELECTION_MISMATCH"}),
    # Protocol attacks (services.agent.attacks): every record they write is refused.
    "foreign_partition": frozenset({"intake.WRONG_PARTITION"}),
    "borrowed_host_id": frozenset({"intake.UNAUTHENTICATED"}),
    "challenge_flood": frozenset({"intake.UNAUTHENTICATED"}),
    # The agent client's hooks (services.agent.hooks.hook_for): after an honest round the host
    # answers a new challenge with the previous round's challenge and nonce, one the collector
    # really issued and saw used; and it holds evidence until its nonce has expired.
    "replayed_nonce": frozenset({"intake.REPLAYED_NONCE"}),
    "stale_quote": frozenset({"intake.STALE_NONCE"}),
    "wrong_ak": frozenset({"intake.BAD_SIGNATURE"}),
}

#: The intake reasons each protocol attack's records may be refused with: every record it wrote
#: must be refused, each for one of these (its ``EXPECTED_REASONS`` among them). An attack whose
#: records name another host (``HostOutcome.target``) must also leave that host as a clean host
#: ends: trusted, its credential opened in its TPM.
REFUSED_AS: Final[Mapping[str, frozenset[str]]] = {
    "foreign_partition": frozenset({"WRONG_PARTITION"}),
    # the enrolment under the victim's id (its EK is bound to the victim), then a challenge
    # request signed by the attacker's own AK
    "borrowed_host_id": frozenset({"UNAUTHENTICATED"}),
    "challenge_flood": frozenset({"UNAUTHENTICATED"}),
}
#: Evidence rounds each profile's agent sends (default 1): ``replayed_nonce`` needs an honest
#: round whose nonce it can then replay.
ROUNDS: Final[Mapping[str, int]] = {"replayed_nonce": 2}
TRUSTED: Final = "TRUSTED"
QUARANTINED: Final = "QUARANTINED"


@dataclass(frozen=True)
class RuleFailure:
    """One failed rule as shown to a person."""

    rule_id: str
    sentence: str
    event: str = ""
    """The offending event, one line (``PCR 7 #12 EV_...: summary``), or empty."""


@dataclass(frozen=True)
class HostOutcome:
    """What happened to one host in the run (every field as observed on the topics)."""

    host_id: str
    image: str
    tamper: str | None
    verdict: str | None = None
    """``PASS``/``FAIL`` from ``attest.verdicts.v1`` (None: no verdict)."""
    verdict_id: str = ""
    failed_rules: tuple[RuleFailure, ...] = ()
    rejection: str | None = None
    """Intake rejection reason (``attest.rejections.v1``), if any."""
    rejection_detail: str = ""
    trust: str | None = None
    """Trust state from ``attest.hosts.v1`` (issuer)."""
    cert_serial: str | None = None
    incident_id: str | None = None
    credential_id: str | None = None
    credential_opened: bool | None = None
    """Whether the host's own TPM opened its credential from ``attest.credentials.v1`` (agent
    side, ``services.agent.credential_receiver``); None: not tried (not trusted)."""
    credential_detail: str = ""
    """The serial of the opened credential, or why it did not open."""
    rounds: int = 1
    """Evidence rounds this host's agent sends."""
    answers: int = 0
    """Verdicts and intake rejections seen for this host so far."""
    error: str = ""
    """What went wrong on the host side (enrolment or attestation), if anything."""
    rejections: tuple[str, ...] = ()
    """Every intake rejection reason of this host's records, in order (``rejection`` is the
    last)."""
    target: str | None = None
    """The host whose id this attacker's records name (``borrowed_host_id``,
    ``challenge_flood``); their rejections are this row's, found by the records' coordinates."""
    named_by: tuple[str, ...] = ()
    """Attackers whose records name this host."""
    attack_sent: int | None = None
    """Records the attack wrote that intake must refuse (None: no attack, or not run yet)."""
    attack_heard: tuple[str, ...] = ()
    """What the attacker heard back (e.g. its enrolment REFUSED)."""
    attack_got_through: tuple[str, ...] = ()
    """Answers meaning the collector accepted part of the attack (must be empty)."""

    @property
    def refused_at_intake(self) -> bool:
        """Whether intake refused any record of this host."""
        return bool(self.rejections) or self.rejection is not None

    @property
    def reason_ids(self) -> frozenset[str]:
        """Every reason this host was refused for (rule ids and ``intake.<REASON>``)."""
        ids = {r.rule_id for r in self.failed_rules}
        ids.update(f"intake.{r}" for r in self.rejections)
        if self.rejection:
            ids.add(f"intake.{self.rejection}")
        return frozenset(ids)

    @property
    def status(self) -> str:
        """``TRUSTED``/``QUARANTINED`` (issuer), else the verdict or rejection, else pending."""
        if self.trust:
            return self.trust
        if self.rejection:
            return "REJECTED"
        return self.verdict or "PENDING"


@dataclass(frozen=True)
class Judgement:
    """Whether one host ended as its profile demands, and if not, why."""

    ok: bool
    why: str


def refusal_summary(reasons_seen: Sequence[str]) -> str:
    """``24 UNAUTHENTICATED, 1 EK_CHANGED``: intake reasons by count, most frequent first."""
    return ", ".join(f"{n} {r}" for r, n in Counter(reasons_seen).most_common())


def judge(h: HostOutcome, *, issuer_running: bool,
          victim: HostOutcome | None = None) -> Judgement:
    """The demo's self-check for one host (see ``EXPECTED_REASONS``); ``victim`` is the row of
    the host an attacker's records name (``h.target``)."""
    if h.tamper is None:
        return _judge_clean(h, issuer_running=issuer_running)
    if h.tamper in REFUSED_AS:
        return _judge_attack(h, issuer_running=issuer_running, victim=victim)
    want = EXPECTED_REASONS.get(h.tamper, frozenset())
    if h.verdict == "PASS" and not h.refused_at_intake:
        return Judgement(False, f"tampered host ({h.tamper}) passed")
    if h.verdict is None and not h.refused_at_intake:
        return Judgement(False, f"tampered host ({h.tamper}) got no verdict or rejection")
    if not want & h.reason_ids:
        got = ", ".join(sorted(h.reason_ids))
        return Judgement(False, f"{h.tamper} refused for {got}, expected one of "
                                f"{', '.join(sorted(want))}")
    if h.verdict == "FAIL":
        if issuer_running and (h.trust != QUARANTINED or not h.incident_id):
            return Judgement(False, f"{h.tamper} failed appraisal but is {h.trust or 'not'} "
                                    f"quarantined with an incident ({h.incident_id or 'none'})")
        return Judgement(True, "refused for the right reason")
    # Refused at intake only: a SOC finding about the record, never an incident, and no change
    # to the trust state of the host it names.
    rejected = h.rejection or (h.rejections[-1] if h.rejections else "")
    if h.incident_id:
        return Judgement(False, f"{h.tamper} refused at intake ({rejected}) but incident "
                                f"{h.incident_id} was opened")
    if issuer_running and h.trust == QUARANTINED:
        return Judgement(False, f"{h.tamper} refused at intake ({rejected}) but QUARANTINED")
    if h.verdict == "PASS":
        if ROUNDS.get(h.tamper, 1) < 2:
            return Judgement(False, f"tampered host ({h.tamper}) passed appraisal")
        # its honest round passed; the tampered round was refused, which changes no state
        return Judgement(True, f"honest round passed, tampered round refused at intake "
                               f"({rejected}); the refused record changed nothing")
    if h.trust == TRUSTED or h.cert_serial:
        return Judgement(False, f"{h.tamper} refused at intake ({rejected}) but "
                                f"{h.trust or 'holds a certificate'}")
    return Judgement(True, f"refused at intake ({rejected}): a finding, no verdict, "
                           "no credential, no incident")


def _judge_clean(h: HostOutcome, *, issuer_running: bool) -> Judgement:
    if h.refused_at_intake:
        return Judgement(False, "clean host rejected at intake "
                                f"({refusal_summary(h.rejections) or h.rejection})")
    if h.verdict != "PASS":
        rules = ", ".join(sorted(h.reason_ids)) or "no verdict"
        return Judgement(False, f"clean host did not pass ({rules})")
    if issuer_running and (h.trust != TRUSTED or not h.cert_serial):
        return Judgement(False, f"clean host passed but is {h.trust or 'not'} trusted "
                                "with a certificate")
    if issuer_running and h.credential_opened is not True:
        return Judgement(False, "trusted, but its TPM did not open its credential: "
                                f"{h.credential_detail or 'not tried'}")
    why = "trusted, credential opened in its TPM" if issuer_running else "passed"
    if h.named_by:
        why += f"; unharmed by the refused records {', '.join(h.named_by)} wrote in its name"
    return Judgement(True, why)


def _judge_attack(h: HostOutcome, *, issuer_running: bool,
                  victim: HostOutcome | None) -> Judgement:
    """An attacker: every record it wrote refused for an allowed reason (one expected), the
    collector accepted nothing of it, the attacker holds no verdict, trust or incident, and the
    host its records name ended like the clean host it is."""
    assert h.tamper is not None
    if h.attack_sent is None:
        return Judgement(False, f"the {h.tamper} attack did not run: {h.error or 'no result'}")
    if h.attack_got_through:
        return Judgement(False, f"the collector accepted part of the {h.tamper} attack: "
                                f"{'; '.join(h.attack_got_through)}")
    if len(h.rejections) < h.attack_sent:
        return Judgement(False, f"only {len(h.rejections)} of the {h.attack_sent} records the "
                                f"{h.tamper} attack wrote were refused at intake")
    allowed = REFUSED_AS[h.tamper]
    wrong = sorted({r for r in h.rejections if r not in allowed})
    if wrong:
        return Judgement(False, f"{h.tamper} records refused for {', '.join(wrong)}, expected "
                                f"{', '.join(sorted(allowed))}")
    want = EXPECTED_REASONS.get(h.tamper, frozenset())
    if not want & h.reason_ids:
        return Judgement(False, f"{h.tamper} refused for {', '.join(sorted(h.reason_ids))}, "
                                f"expected one of {', '.join(sorted(want))}")
    if h.verdict or h.trust or h.incident_id or h.cert_serial:
        return Judgement(False, f"the {h.tamper} attacker got verdict {h.verdict or '-'}, trust "
                                f"{h.trust or '-'}, incident {h.incident_id or '-'}")
    done = f"{len(h.rejections)} records refused at intake ({refusal_summary(h.rejections)})"
    if h.target is None:
        return Judgement(True, done)
    if victim is None:
        return Judgement(False, f"{h.tamper}: the host its records name ({h.target}) is not in "
                                "the run")
    seen = _judge_clean(victim, issuer_running=issuer_running)
    if not seen.ok:
        return Judgement(False, f"{done}, but {victim.host_id}, whose id they name: {seen.why}")
    return Judgement(True, f"{done}; {victim.host_id}, whose id they name, still "
                           f"{victim.status}")


@dataclass(frozen=True)
class DemoRun:
    """One demo run, as written to ``report.json`` and ``report.html``."""

    run_id: str
    started_at: str
    finished_at: str
    duration_s: float
    policy_id: str
    policy_digest: str
    stages: tuple[str, ...]
    issuer_running: bool
    hosts: tuple[HostOutcome, ...]
    notes: tuple[str, ...] = ()
    timings: Mapping[str, float] = field(default_factory=dict)

    def judgements(self) -> list[Judgement]:
        """The self-check of every host, in host order."""
        rows = {h.host_id: h for h in self.hosts}
        return [judge(h, issuer_running=self.issuer_running,
                      victim=rows.get(h.target) if h.target else None) for h in self.hosts]

    @property
    def ok(self) -> bool:
        """True when every host ended as its tamper profile demands."""
        return all(j.ok for j in self.judgements())

    def counts(self) -> dict[str, int]:
        """Hosts per final status."""
        out: dict[str, int] = {}
        for h in self.hosts:
            out[h.status] = out.get(h.status, 0) + 1
        return out


def to_json(run: DemoRun) -> dict[str, Any]:
    """The run as a JSON document (stable keys; what ``--json`` prints)."""
    hosts = []
    for h, j in zip(run.hosts, run.judgements(), strict=True):
        hosts.append({
            "host_id": h.host_id, "image": h.image, "tamper": h.tamper, "status": h.status,
            "verdict": h.verdict, "verdict_id": h.verdict_id,
            "failed_rules": [{"rule_id": r.rule_id, "sentence": r.sentence, "event": r.event}
                             for r in h.failed_rules],
            "rejection": h.rejection, "rejection_detail": h.rejection_detail,
            "trust": h.trust, "cert_serial": h.cert_serial, "incident_id": h.incident_id,
            "credential_id": h.credential_id,
            "credential_opened": {"ok": h.credential_opened, "detail": h.credential_detail},
            "error": h.error, "rejections": list(h.rejections), "target": h.target,
            "named_by": list(h.named_by),
            "attack": None if h.attack_sent is None else {
                "sent": h.attack_sent, "heard": list(h.attack_heard),
                "got_through": list(h.attack_got_through)},
            "check": {"ok": j.ok, "why": j.why}})
    return {"run_id": run.run_id, "started_at": run.started_at,
            "finished_at": run.finished_at, "duration_s": round(run.duration_s, 2),
            "policy": {"id": run.policy_id, "digest": run.policy_digest},
            "stages": list(run.stages), "issuer_running": run.issuer_running,
            "counts": run.counts(), "ok": run.ok, "notes": list(run.notes),
            "timings": dict(run.timings), "hosts": hosts}


def plain_rules(h: HostOutcome) -> str:
    """The failed rules in plain words, one line (for tables)."""
    if h.attack_sent is not None:
        whose = f"naming {h.target} " if h.target else ""
        text = (f"{h.attack_sent} records {whose}written; refused at intake: "
                f"{refusal_summary(h.rejections) or 'none yet'}")
        if h.rejection_detail:
            text += f" (last: {h.rejection_detail})"
        return text
    if h.rejection:
        rules = "; ".join(r.sentence for r in h.failed_rules)
        return (f"{rules + '; then ' if rules else ''}refused at intake: "
                f"{h.rejection_detail or h.rejection}")
    if h.error and not h.failed_rules:
        return h.error
    if not h.failed_rules and h.named_by:
        return f"records naming it were written by {', '.join(h.named_by)} (see that row)"
    return "; ".join(r.sentence for r in h.failed_rules)


def tamper_cell(h: HostOutcome) -> str:
    """The profile, and the host its records name (``challenge_flood → demo-…-03``)."""
    if h.tamper is None:
        return "—"
    return f"{h.tamper} → {h.target}" if h.target else h.tamper


def credential_cell(h: HostOutcome, *, short: bool = False) -> str:
    """``yes (serial …)`` / ``no (why)`` / ``—`` (not tried): did the host's TPM open its
    credential. ``short`` clips the serial and the reason for narrow tables."""
    if h.credential_opened is None:
        return "—"
    detail = h.credential_detail
    if h.credential_opened:
        return f"yes (serial {detail[:12] + '…' if short and len(detail) > 13 else detail})"
    return f"no ({detail[:80] + '…' if short and len(detail) > 81 else detail})"


def outcome_cell(h: HostOutcome) -> str:
    """``TRUSTED serial …`` / ``QUARANTINED incident …`` / the verdict, for tables."""
    if h.trust == TRUSTED:
        return f"TRUSTED (cert {h.cert_serial or '?'})"
    if h.trust:
        return f"{h.trust} (incident {h.incident_id or '?'})"
    if h.incident_id:
        return f"{h.status} (incident {h.incident_id})"
    return h.status


# --- HTML ---------------------------------------------------------------------------------
_CSS: Final = """
body{font:14px/1.45 system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:0;
background:#f4f5f7;color:#1d2330}
header{background:#1d2330;color:#fff;padding:18px 28px}
header h1{margin:0;font-size:20px}header p{margin:4px 0 0;color:#b8c0d0;font-size:13px}
main{padding:20px 28px}
.cards{display:flex;gap:12px;flex-wrap:wrap;margin-bottom:18px}
.card{background:#fff;border-radius:8px;padding:12px 18px;min-width:120px;
box-shadow:0 1px 2px rgba(0,0,0,.08)}
.card b{display:block;font-size:26px}.card span{color:#5a6477;font-size:12px}
.ok b{color:#1f8a4c}.bad b{color:#c0392b}.warn b{color:#b7791f}
.grid{display:grid;grid-template-columns:repeat(auto-fill,minmax(150px,1fr));gap:8px;
margin-bottom:22px}
.tile{border-radius:6px;padding:8px 10px;color:#fff;text-decoration:none;font-size:12px}
.tile strong{display:block;font-size:13px;word-break:break-all}
.TRUSTED,.PASS{background:#1f8a4c}.QUARANTINED,.FAIL,.REJECTED{background:#c0392b}
.PENDING,.UNKNOWN,.REVOKED{background:#7f8c8d}
table{border-collapse:collapse;width:100%;background:#fff;margin-bottom:22px}
th,td{text-align:left;padding:6px 10px;border-bottom:1px solid #e3e6eb;vertical-align:top}
td:first-child,td:nth-child(2),td:nth-child(3),td:nth-child(4){white-space:nowrap}
td:nth-child(5){overflow-wrap:anywhere;min-width:20em}
td:nth-child(6),td:nth-child(7){overflow-wrap:anywhere;min-width:11em;max-width:17em}
th{background:#eef0f4;font-weight:600}
.badge{display:inline-block;border-radius:4px;padding:1px 7px;color:#fff;font-size:12px}
.miss{background:#fdecea}
details{background:#fff;border-radius:8px;margin-bottom:10px;padding:10px 16px;
box-shadow:0 1px 2px rgba(0,0,0,.06)}
summary{cursor:pointer;font-weight:600}
code{font:12px ui-monospace,SFMono-Regular,Menlo,monospace;background:#eef0f4;padding:1px 4px;
border-radius:3px;word-break:break-all}
ul{margin:6px 0 0 18px;padding:0}li{margin-bottom:4px}
"""


def _e(text: object) -> str:
    return html.escape(str(text), quote=True)


def _card(value: object, label: str, cls: str = "") -> str:
    return f'<div class="card {cls}"><b>{_e(value)}</b><span>{_e(label)}</span></div>'


def _details(h: HostOutcome, j: Judgement) -> str:
    parts = [f'<details id="{_e(h.host_id)}"{" open" if not j.ok else ""}>',
             f'<summary>{_e(h.host_id)} — <span class="badge {_e(h.status)}">{_e(h.status)}'
             f"</span> {_e(h.image)}{' · tampered: ' + _e(tamper_cell(h)) if h.tamper else ''}"
             "</summary><ul>"]
    if h.verdict:
        parts.append(f"<li>verdict <b>{_e(h.verdict)}</b> <code>{_e(h.verdict_id[:24])}"
                     "</code></li>")
    if h.attack_sent is not None:
        whose = f" naming <code>{_e(h.target)}</code>" if h.target else ""
        parts.append(f"<li>attack: {h.attack_sent} records{whose} written; refused at intake: "
                     f"<b>{_e(refusal_summary(h.rejections) or 'none')}</b></li>")
        parts += [f"<li>the attacker heard: {_e(x)}</li>" for x in h.attack_heard]
        parts += [f"<li>accepted by the collector: <b>{_e(x)}</b></li>"
                  for x in h.attack_got_through]
    if h.named_by:
        parts.append(f"<li>records naming this host were written by "
                     f"{_e(', '.join(h.named_by))}</li>")
    if h.rejection:
        parts.append(f"<li>refused at intake: <b>{_e(h.rejection)}</b> — "
                     f"{_e(h.rejection_detail)}</li>")
    for r in h.failed_rules:
        ev = f"<br>offending event: <code>{_e(r.event)}</code>" if r.event else ""
        parts.append(f"<li><code>{_e(r.rule_id)}</code> {_e(r.sentence)}{ev}</li>")
    if h.cert_serial:
        parts.append(f"<li>certificate serial <code>{_e(h.cert_serial)}</code>"
                     f"{' (credential ' + _e(h.credential_id) + ')' if h.credential_id else ''}"
                     "</li>")
    if h.credential_opened is not None:
        parts.append(f"<li>credential opened in its TPM: <b>{_e(credential_cell(h))}</b></li>")
    if h.incident_id:
        parts.append(f"<li>incident <code>{_e(h.incident_id)}</code></li>")
    if h.error:
        parts.append(f"<li>host side: {_e(h.error)}</li>")
    parts.append(f"<li>self-check: {'✔' if j.ok else '✘'} {_e(j.why)}</li></ul></details>")
    return "".join(parts)


def render_html(run: DemoRun) -> str:
    """A self-contained HTML page of the run (inline CSS, no scripts, no external assets)."""
    judged = run.judgements()
    counts = run.counts()
    tampered = sum(1 for h in run.hosts if h.tamper)
    mism = sum(1 for j in judged if not j.ok)
    cards = [_card(len(run.hosts), "hosts"), _card(tampered, "tampered", "warn"),
             _card(counts.get(TRUSTED, counts.get("PASS", 0)), "trusted / passed", "ok"),
             _card(sum(n for k, n in counts.items() if k in (QUARANTINED, "FAIL", "REJECTED")),
                   "quarantined / refused", "bad"),
             _card("✔ matches" if run.ok else f"✘ {mism} off", "tamper mix", "ok" if run.ok
                   else "bad")]
    tiles = "".join(
        f'<a class="tile {_e(h.status)}" href="#{_e(h.host_id)}"><strong>{_e(h.host_id)}'
        f"</strong>{_e(h.image)}<br>{_e(h.tamper or 'clean')} → {_e(h.status)}</a>"
        for h in run.hosts)
    rows = "".join(
        f'<tr class="{"" if j.ok else "miss"}"><td>{_e(h.host_id)}</td><td>{_e(h.image)}</td>'
        f"<td>{_e(tamper_cell(h))}</td><td>{_e(h.verdict or h.rejection or '—')}</td>"
        f"<td>{_e(plain_rules(h))}</td><td>{_e(outcome_cell(h))}</td>"
        f"<td>{_e(credential_cell(h))}</td>"
        f"<td>{'✔' if j.ok else '✘ ' + _e(j.why)}</td></tr>"
        for h, j in zip(run.hosts, judged, strict=True))
    notes = "".join(f"<li>{_e(n)}</li>" for n in run.notes)
    details = "".join(_details(h, j) for h, j in zip(run.hosts, judged, strict=True))
    return (
        "<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\">"
        f"<title>hostgate demo {_e(run.run_id)}</title><style>{_CSS}</style></head><body>"
        f"<header><h1>hostgate fleet attestation — run {_e(run.run_id)}</h1>"
        f"<p>{_e(run.started_at)} · {run.duration_s:.1f} s · policy {_e(run.policy_id)} "
        f"<code>{_e(run.policy_digest[:23])}</code> · stages {_e(', '.join(run.stages))}</p>"
        f"</header><main><div class=\"cards\">{''.join(cards)}</div>"
        f"<h2>Fleet</h2><div class=\"grid\">{tiles}</div>"
        "<h2>Hosts</h2><table><tr><th>host</th><th>image</th><th>tamper profile</th>"
        "<th>verdict</th><th>failed rules</th><th>outcome</th>"
        "<th>credential opened in TPM</th><th>check</th></tr>"
        f"{rows}</table><h2>Details</h2>{details}"
        f"{'<h2>Notes</h2><ul>' + notes + '</ul>' if notes else ''}</main></body></html>\n")


def rule_event_line(event: Mapping[str, Any] | None) -> str:
    """One line for a ``hostgate.OffendingEvent`` record (empty for None)."""
    if not event:
        return ""
    return (f"PCR {event.get('pcr')} event #{event.get('seq')} "
            f"{event.get('event_type_name', '')}: {event.get('data_summary', '')}")


def outcomes_by_status(hosts: Sequence[HostOutcome]) -> dict[str, list[str]]:
    """Host ids grouped by final status (for summaries)."""
    out: dict[str, list[str]] = {}
    for h in hosts:
        out.setdefault(h.status, []).append(h.host_id)
    return out
