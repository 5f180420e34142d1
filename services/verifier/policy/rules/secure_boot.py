"""The ``secureBoot`` section: Secure Boot state, PK / KEK / db entries, required dbx
revocations and the variables PCR 7 may measure.
"""

from __future__ import annotations

from services.tpm.claims import KeyDatabase
from services.verifier.policy import ids
from services.verifier.policy.model import RefDigest, SecureBootSpec
from services.verifier.policy.results import EventRef, RuleResult
from services.verifier.policy.rules._common import FAIL, PASS, Subject, _judged, _r, _unworded


def _db_ref(s: Subject, db: KeyDatabase, summary: str) -> EventRef | None:
    return s.index.ref(db.seq, summary, pcr=7, type_name="EV_EFI_VARIABLE_DRIVER_CONFIG")


def _subset(rule: str, label: str, allowed: tuple[RefDigest, ...], s: Subject) -> RuleResult:
    db = s.claims.database(label)
    if db is None:
        return _r(rule, FAIL, f"The {label} variable was not measured, so its entries cannot be "
                  "checked.")
    ok = {r.hex for r in allowed}
    for entry in db.entries:
        if entry.digest.hex() not in ok:
            who = entry.subject or f"{entry.kind} hash"
            return _r(rule, FAIL, f"{label} holds an entry that is not approved: {who} "
                      f"(sha256:{entry.digest.hex()}, event {db.seq} in PCR 7).",
                      _db_ref(s, db, f"{label}: {len(db.entries)} entries; unapproved {who}"))
    return _judged(s, rule, PASS, lambda: f"All {len(db.entries)} {label} entries are approved.",
                   lambda: _db_ref(s, db, f"{label}: {len(db.entries)} entries"))


def check_secure_boot(spec: SecureBootSpec, s: Subject) -> list[RuleResult]:
    out: list[RuleResult] = []
    if spec.enabled is not None:
        out.append(_secure_boot_state(spec.enabled, s))
    for rule, label, allowed in ((ids.SECUREBOOT_PK, "PK", spec.pk),
                                 (ids.SECUREBOOT_KEK, "KEK", spec.kek),
                                 (ids.SECUREBOOT_DB, "db", spec.db)):
        if allowed is not None:
            out.append(_subset(rule, label, allowed, s))
    if spec.dbx_required is not None:
        out.append(_dbx(spec.dbx_required, s))
    if spec.pcr7_variables is not None:
        out.append(_pcr7(spec.pcr7_variables, s))
    return out


def _secure_boot_state(want: bool, s: Subject) -> RuleResult:
    state = s.claims.secure_boot
    if state is None:
        return _r(ids.SECUREBOOT_ENABLED, FAIL,
                  "Secure Boot state was not measured (no SecureBoot variable in PCR 7).")
    outcome = PASS if state == want else FAIL
    unworded = _unworded(s, ids.SECUREBOOT_ENABLED, outcome)
    if unworded is not None:
        return unworded
    found = s.index.secure_boot_event()
    where = ""
    event = None
    if found is not None:
        seq, value = found
        shown = value.hex() if value else "empty"
        where = f" (SecureBoot variable = {shown}, event {seq} in PCR 7)"
        event = s.index.ref(seq, f"SecureBoot = {shown}")
    word = "on" if state else "off"
    return _r(ids.SECUREBOOT_ENABLED, outcome, f"Secure Boot is {word}{where}.", event)


def _dbx(required: tuple[RefDigest, ...], s: Subject) -> RuleResult:
    db = s.claims.database("dbx")
    if db is None:
        return _r(ids.SECUREBOOT_DBX, FAIL, "The dbx variable was not measured, so required "
                  "revocations cannot be confirmed.")
    have = {e.digest.hex() for e in db.entries}
    missing = [r for r in required if r.hex not in have]
    if missing:
        first = missing[0]
        label = f"{first.name} " if first.name else ""
        return _r(ids.SECUREBOOT_DBX, FAIL,
                  f"dbx lacks {len(missing)} of {len(required)} required revocations, first "
                  f"{label}(sha256:{first.hex}).",
                  _db_ref(s, db, f"dbx: {len(db.entries)} entries"))
    return _judged(s, ids.SECUREBOOT_DBX, PASS,
                   lambda: f"dbx holds all {len(required)} required revocations.",
                   lambda: _db_ref(s, db, f"dbx: {len(db.entries)} entries"))


def _pcr7(allowed: tuple[str, ...], s: Subject) -> RuleResult:
    if not s.index:
        return _r(ids.SECUREBOOT_UNKNOWN_PCR7, FAIL, "PCR 7 variables cannot be checked: the "
                  "events were not supplied with the claims.")
    names = s.index.pcr7_variables()
    ok = set(allowed)
    for seq, name in names:
        if name not in ok:
            return _r(ids.SECUREBOOT_UNKNOWN_PCR7, FAIL,
                      f"PCR 7 measures a variable the policy does not know: {name} "
                      f"(event {seq}).", s.index.ref(seq, f"variable {name}"))
    return _judged(s, ids.SECUREBOOT_UNKNOWN_PCR7, PASS,
                   lambda: f"All {len(names)} variables in PCR 7 are known ones.")
