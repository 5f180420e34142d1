"""The ``referenceGroups`` section: the host matches one approved group of PCR values (and
first boot application); a matched group proves its platform.
"""

from __future__ import annotations

from collections.abc import Sequence

from services.verifier.policy import ids
from services.verifier.policy.model import ReferenceGroup
from services.verifier.policy.results import RuleResult
from services.verifier.policy.rules._common import (
    BOOT_APPLICATION_PCR,
    FAIL,
    PASS,
    Subject,
    _digest_matches,
    _r,
    code_in,
)


def _group_mismatches(g: ReferenceGroup, s: Subject) -> list[str]:
    pcrs = s.claims.pcrs
    mismatches: list[str] = []
    for bank, values in g.pcrs:
        have = pcrs.get(bank, {})
        for idx, want in values:
            got = have.get(idx)
            if got is None:
                mismatches.append(f"PCR {idx} ({bank}) is not in the evidence")
            elif got.hex() != want:
                mismatches.append(f"PCR {idx} ({bank}) is {got.hex()[:16]}…, the group "
                                  f"expects {want[:16]}…")
    if g.first_boot_application:
        apps = code_in(s.claims, BOOT_APPLICATION_PCR)
        if not apps:
            mismatches.append("no boot application was measured in PCR 4")
        elif _digest_matches(g.first_boot_application, apps[0].digests,
                             s.trusted_banks) is None:
            mismatches.append(f"the first boot application (event {apps[0].seq}) is not the "
                              "group's")
    return mismatches


def proven_platform(groups: Sequence[ReferenceGroup], s: Subject) -> str | None:
    """The platform the groups the host matches prove, or None when none of them names one or
    they disagree (then nothing is proven, and every platform's rules apply)."""
    platforms = {g.platform for g in groups
                 if g.platform is not None and not _group_mismatches(g, s)}
    return platforms.pop() if len(platforms) == 1 else None


def check_reference_groups(groups: tuple[ReferenceGroup, ...], s: Subject) -> list[RuleResult]:
    if not groups:
        return []
    best: tuple[int, ReferenceGroup, str] | None = None
    for g in groups:
        mismatches = _group_mismatches(g, s)
        if not mismatches:
            proves = f" (a {g.platform} boot)" if g.platform else ""
            return [_r(ids.REFERENCE_GROUPS, PASS,
                       f"The host matches the approved reference group {g.name!r}{proves}.")]
        if best is None or len(mismatches) < best[0]:
            best = (len(mismatches), g, mismatches[0])
    assert best is not None
    _, g, first = best
    return [_r(ids.REFERENCE_GROUPS, FAIL,
               f"The host matches none of the {len(groups)} approved reference groups; closest "
               f"is {g.name!r}, where {first}.")]
