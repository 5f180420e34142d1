"""Every rule id the policy engine can emit, in one place.

Rule ids are a wire contract: verdicts, incidents and SOC dashboards key on them, so they are
dotted, stable and spelled once here. Custom CEL rules get ``policy.custom.<name>``.
"""

from __future__ import annotations

from typing import Final

SECUREBOOT_ENABLED: Final = "policy.secureboot.enabled"
SECUREBOOT_PK: Final = "policy.secureboot.pk"
SECUREBOOT_KEK: Final = "policy.secureboot.kek"
SECUREBOOT_DB: Final = "policy.secureboot.db"
SECUREBOOT_DBX: Final = "policy.secureboot.dbx"
SECUREBOOT_UNKNOWN_PCR7: Final = "policy.secureboot.unknown_pcr7_events"

DEBUG_BOOT_DEBUGGING: Final = "policy.debug.boot_debugging"
DEBUG_KERNEL_DEBUGGER: Final = "policy.debug.kernel_debugger"
DEBUG_HYPERVISOR_DEBUG: Final = "policy.debug.hypervisor_debug"
DEBUG_TEST_SIGNING: Final = "policy.debug.test_signing"
DEBUG_FLIGHT_SIGNING: Final = "policy.debug.flight_signing"
DEBUG_SAFE_MODE: Final = "policy.debug.safe_mode"
DEBUG_WIN_PE: Final = "policy.debug.win_pe"

CI_ENABLED: Final = "policy.codeintegrity.enabled"
CI_SI_POLICY: Final = "policy.codeintegrity.si_policy"
CI_DEP: Final = "policy.codeintegrity.dep"
CI_HVCI: Final = "policy.codeintegrity.hvci"
CI_BOOT_APPLICATIONS: Final = "policy.codeintegrity.boot_applications"
CI_DRIVERS: Final = "policy.codeintegrity.drivers"
CI_IMA_KERNEL_MODULES: Final = "policy.codeintegrity.ima_kernel_modules"
CI_IMA_EXECUTABLES: Final = "policy.codeintegrity.ima_executables"

BOOTCHAIN_APPLICATIONS: Final = "policy.bootchain.applications"
BOOTCHAIN_CMDLINE: Final = "policy.bootchain.kernel_cmdline"

REFERENCE_GROUPS: Final = "policy.reference.groups"

BANKS_REQUIRED_PCRS: Final = "policy.banks.required_pcrs"
BANKS_REQUIRED_BANKS: Final = "policy.banks.required_banks"
BANKS_SHA1_ONLY: Final = "policy.banks.sha1_only"

TPM_CLOCK_SAFE: Final = "policy.tpm.clock_safe"
TPM_FIRMWARE_VERSION: Final = "policy.tpm.firmware_version"

EVIDENCE_ANOMALIES: Final = "policy.evidence.anomalies"

CUSTOM_PREFIX: Final = "policy.custom."

BUILTIN_RULE_IDS: Final[tuple[str, ...]] = tuple(sorted((
    SECUREBOOT_ENABLED, SECUREBOOT_PK, SECUREBOOT_KEK, SECUREBOOT_DB, SECUREBOOT_DBX,
    SECUREBOOT_UNKNOWN_PCR7,
    DEBUG_BOOT_DEBUGGING, DEBUG_KERNEL_DEBUGGER, DEBUG_HYPERVISOR_DEBUG, DEBUG_TEST_SIGNING,
    DEBUG_FLIGHT_SIGNING, DEBUG_SAFE_MODE, DEBUG_WIN_PE,
    CI_ENABLED, CI_SI_POLICY, CI_DEP, CI_HVCI, CI_BOOT_APPLICATIONS, CI_DRIVERS,
    CI_IMA_KERNEL_MODULES, CI_IMA_EXECUTABLES,
    BOOTCHAIN_APPLICATIONS, BOOTCHAIN_CMDLINE,
    REFERENCE_GROUPS,
    BANKS_REQUIRED_PCRS, BANKS_REQUIRED_BANKS, BANKS_SHA1_ONLY,
    TPM_CLOCK_SAFE, TPM_FIRMWARE_VERSION,
    EVIDENCE_ANOMALIES,
)))
"""Every built-in rule id, sorted."""


def custom_rule_id(name: str) -> str:
    """The rule id of the custom CEL rule called ``name``."""
    return CUSTOM_PREFIX + name
