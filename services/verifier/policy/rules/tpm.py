"""The ``tpm`` section: what the verified quote itself says about the TPM (its clock's
safe flag, its firmware version).
"""

from __future__ import annotations

from services.verifier.policy import ids
from services.verifier.policy.model import TpmSpec
from services.verifier.policy.results import RuleResult
from services.verifier.policy.rules._common import FAIL, PASS, Subject, _r


def check_tpm(spec: TpmSpec, s: Subject) -> list[RuleResult]:
    out: list[RuleResult] = []
    q = s.quote
    if spec.clock_safe is not None:
        if q is None:
            out.append(_r(ids.TPM_CLOCK_SAFE, FAIL, "The TPM clock's safe flag cannot be "
                          "confirmed: no verified quote."))
        else:
            state = "safe" if q.clock_safe else "not safe (the clock may have been rolled "
            "back after an unorderly shutdown)"
            out.append(_r(ids.TPM_CLOCK_SAFE, PASS if q.clock_safe == spec.clock_safe else FAIL,
                          f"The quote's clock is {state}."))
    if spec.firmware_minimum is not None or spec.firmware_allowed is not None:
        rule = ids.TPM_FIRMWARE_VERSION
        if q is None:
            out.append(_r(rule, FAIL, "The TPM firmware version cannot be confirmed: no "
                          "verified quote."))
        else:
            fw = q.firmware_version
            if spec.firmware_minimum is not None and fw < spec.firmware_minimum:
                out.append(_r(rule, FAIL, f"The TPM firmware version {fw:#018x} is below the "
                              f"minimum {spec.firmware_minimum:#018x}."))
            elif spec.firmware_allowed is not None and fw not in spec.firmware_allowed:
                out.append(_r(rule, FAIL, f"The TPM firmware version {fw:#018x} is not one of "
                              f"the {len(spec.firmware_allowed)} approved versions."))
            else:
                out.append(_r(rule, PASS, f"The TPM firmware version {fw:#018x} is approved."))
    return out
