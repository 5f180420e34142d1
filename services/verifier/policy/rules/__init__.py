"""The built-in rules: each reads claims and yields :class:`~.results.RuleResult`\\ s.

Every rule is a pure function ``(spec section, Subject) -> list[RuleResult]``. A rule is only
evaluated when its policy section asks for something. What every rule may rely on, and what
``evaluate`` enforces around them (``docs/design/threat-model.md``):

* **Absence is never a pass.** Claims are read only from replay-verified events; a rule whose
  PCRs (``coverage.RULE_PCRS``) were not quoted and replayed fails "cannot be confirmed"
  (``evaluate`` overrides its result). Evidence that is missing fails the rule.
* **Not applicable only when proven.** The Windows-only rules (debug controls, code integrity,
  DEP, HVCI, SI policy) are not applicable only on a host whose verified boot matched a reference
  group of platform ``linux`` or ``other``; on any other host without a measured Windows boot
  configuration they fail. The Linux-only rules (kernel command line, IMA) are not applicable
  only on a host that matched a ``windows`` group. A Windows boot configuration in PCRs 12-14
  proves nothing by itself: any root on any OS can extend those PCRs.
* **Digests approve only in the banks the policy requires** (``banks.require``, SHA-256 by
  default); a denial matches in any bank. A host cannot get an image approved by its digest in a
  bank the policy does not rely on (``TPM2_PCR_Extend`` takes one digest per bank, chosen freely).
* **No rule depends on the order of events in different PCRs** (nothing covers it): signer rules
  use the set of authorities measured in PCR 7, never a pairing of an authority with an image.
  A denied signer anywhere in PCR 7 fails the rule; an image not approved by digest is approved by
  signer only if Secure Boot was measured on and every signing authority PCR 7 measured is an
  approved signer.
* Boot applications are every code event of PCR 4, drivers every code event of PCR 2
  (``services.tpm.pcr_types.CODE_PCRS``), whatever their labels say.
* Secure Boot state / PK / KEK / db / dbx not measured -> **fail**; on a Windows host, a flag
  that was never measured -> **fail**, except hypervisor debug when the hypervisor was not
  launched (Windows only measures it when the hypervisor starts; corpus W03) -> pass.
* Reference groups: a host PCR missing from the claims never matches.
* Claims that are not replay-verified, or with a fatal anomaly (claims' own fail-closed
  verdict), or a non-fatal anomaly the policy does not accept -> fail (always evaluated).

One module per policy section (:mod:`.banks`, :mod:`.tpm`, :mod:`.secure_boot`, :mod:`.debug`,
:mod:`.code_integrity`, :mod:`.boot_chain`, :mod:`.reference_groups`, :mod:`.evidence`), with
what they share in :mod:`._common`; ``evaluate`` runs them.
"""

from services.verifier.policy.rules._common import (
    BOOT_APPLICATION_PCR,
    DRIVER_PCR,
    QuoteFacts,
    Subject,
    code_in,
)
from services.verifier.policy.rules.banks import check_banks
from services.verifier.policy.rules.boot_chain import check_boot_chain
from services.verifier.policy.rules.code_integrity import check_code_integrity, hvci_on
from services.verifier.policy.rules.debug import check_debug, hypervisor_launched
from services.verifier.policy.rules.evidence import check_evidence
from services.verifier.policy.rules.reference_groups import check_reference_groups, proven_platform
from services.verifier.policy.rules.secure_boot import check_secure_boot
from services.verifier.policy.rules.tpm import check_tpm

__all__ = [
    "BOOT_APPLICATION_PCR",
    "DRIVER_PCR",
    "QuoteFacts",
    "Subject",
    "check_banks",
    "check_boot_chain",
    "check_code_integrity",
    "check_debug",
    "check_evidence",
    "check_reference_groups",
    "check_secure_boot",
    "check_tpm",
    "code_in",
    "hvci_on",
    "hypervisor_launched",
    "proven_platform",
]
