"""The ``debug`` section: the Windows debug controls measured in the SIPA boot
configuration (boot and kernel debugging, hypervisor debugging, test and flight signing, safe
mode, Windows PE).
"""

from __future__ import annotations

from typing import Final

from services.tpm.sipa import WindowsBootConfig
from services.verifier.policy import ids
from services.verifier.policy.model import DEBUG_FLAGS, DebugSpec
from services.verifier.policy.results import RuleResult
from services.verifier.policy.rules._common import (
    FAIL,
    PASS,
    Subject,
    _flag_result,
    _not_windows,
    _r,
)

_FLAG_WORDS: Final = {
    "boot_debugging": "Boot debugging",
    "kernel_debugger": "The kernel debugger",
    "hypervisor_debug": "Hypervisor debugging",
    "test_signing": "Test signing",
    "flight_signing": "Flight signing",
    "safe_mode": "Safe mode",
    "win_pe": "Windows PE",
}
_FLAG_IDS: Final = {
    "boot_debugging": ids.DEBUG_BOOT_DEBUGGING,
    "kernel_debugger": ids.DEBUG_KERNEL_DEBUGGER,
    "hypervisor_debug": ids.DEBUG_HYPERVISOR_DEBUG,
    "test_signing": ids.DEBUG_TEST_SIGNING,
    "flight_signing": ids.DEBUG_FLIGHT_SIGNING,
    "safe_mode": ids.DEBUG_SAFE_MODE,
    "win_pe": ids.DEBUG_WIN_PE,
}


def hypervisor_launched(w: WindowsBootConfig) -> bool:
    return any(v != 0 for v in w.hypervisor_launch_type)


def check_debug(spec: DebugSpec, s: Subject) -> list[RuleResult]:
    out: list[RuleResult] = []
    w = s.windows
    for _, attr in DEBUG_FLAGS:
        want = getattr(spec, attr)
        if want is None:
            continue
        rule, words = _FLAG_IDS[attr], _FLAG_WORDS[attr]
        if w is None:
            out.append(_not_windows(rule, words, s))
            continue
        value = getattr(w, attr)
        if value is None:
            if attr == "hypervisor_debug" and not hypervisor_launched(w):
                out.append(_r(rule, PASS, "Hypervisor debugging was not measured because the "
                              "hypervisor was not launched."))
            else:
                out.append(_r(rule, FAIL, f"{words} was never measured in the Windows boot "
                              "configuration, so its state cannot be confirmed."))
            continue
        out.append(_flag_result(s, rule, words, attr, value, PASS if value == want else FAIL))
    return out
