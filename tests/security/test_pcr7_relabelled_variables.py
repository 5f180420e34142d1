"""An unknown PCR 7 variable relabelled as an authority is still an unknown variable.

Attacker (a). ``secureBoot.pcr7Variables`` lists the variables PCR 7 may measure ("anything else
measured in PCR 7 fails"). ``EV_EFI_VARIABLE_AUTHORITY`` is in PCR 7's row, bound over its whole
data like a driver-config event, and decodes the same ``UEFI_VARIABLE_DATA``; a name outside the
signing databases becomes an authority of kind "variable", which no signer rule reads. The list
of PCR 7 variables (``EventIndex.pcr7_variables``, read by the rule and by ``from-log``) used to
take driver-config events only.

Attack: the firmware measured a variable the policy does not know into PCR 7 before its
separator (here ``AuditMode = 1``); the host relabels that one event
``EV_EFI_VARIABLE_AUTHORITY`` (same data, same digests; nothing is extended). Refused: the
variable is listed whatever its label. Failed (the verdict was PASS) on the code before the fix.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from services.agent import uefi
from services.agent.measured_boot import BootConfig, MeasuredBoot, synthesise
from services.tpm.eventlog import EventType as T
from services.tpm.eventlog_builder import measure
from tests.security.appraisal_support import appraised, log_of, relabelled
from tests.security.test_cmdline_as_the_kernel_reads_it import ALGS, LINUX, _booting, _golden_policy

pytestmark = pytest.mark.swtpm


def test_unknown_pcr7_variable_relabelled_as_authority_escapes_pcr7_variables(
        tmp_path: Path) -> None:
    events = list(synthesise(LINUX, 0).events)
    unknown = measure(7, T.EV_EFI_VARIABLE_DRIVER_CONFIG, uefi.uefi_variable_data(
        uefi.EFI_GLOBAL_VARIABLE, "AuditMode", b"\x01"), ALGS)
    at = next(i for i, e in enumerate(events) if e.pcr == 7 and e.event_type == T.EV_SEPARATOR)
    events.insert(at, unknown)
    boot = MeasuredBoot(LINUX, 0, BootConfig(), tuple(events))
    policy = _golden_policy()
    assert policy.prepared.policy.spec.secure_boot.pcr7_variables  # type: ignore[union-attr]
    with _booting(tmp_path, {"rt2-pcr7var": boot}) as hosts:
        host = hosts["rt2-pcr7var"]
        honest = appraised(host, policy, label="honest")
        assert set(honest.reason_ids) == {"policy.secureboot.unknown_pcr7_events"}, \
            honest.reason_ids
        out = [relabelled(e, T.EV_EFI_VARIABLE_AUTHORITY, e.data) if e is unknown else e
               for e in events]
        verdict = appraised(host, policy, log=log_of(out), label="forged")
    assert not verdict.passed, "a PCR 7 variable the policy does not know vanished as an authority"
