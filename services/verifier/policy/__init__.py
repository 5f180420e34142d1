"""The attestation policy engine: YAML policy -> model -> pure evaluation over claims.

:func:`load_policy` (YAML text -> :class:`Policy`, refusing malformed documents with line and
field), :func:`prepare` (compile custom CEL rules once), :func:`evaluate` (claims + policy ->
:class:`Verdict`, deterministic), :func:`derive_policy` (golden logs -> reviewable YAML).
Rule ids are listed in :mod:`services.verifier.policy.ids`.
"""

from services.verifier.policy.errors import CelError, PolicyError
from services.verifier.policy.evaluate import PreparedPolicy, Subject, evaluate, prepare, subject
from services.verifier.policy.loader import load_policy, load_policy_file
from services.verifier.policy.model import Policy
from services.verifier.policy.results import EventRef, Outcome, RuleResult, Verdict

__all__ = [
    "CelError",
    "EventRef",
    "Outcome",
    "Policy",
    "PolicyError",
    "PreparedPolicy",
    "RuleResult",
    "Subject",
    "Verdict",
    "evaluate",
    "load_policy",
    "load_policy_file",
    "prepare",
    "subject",
]
