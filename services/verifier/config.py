"""The verifier's configuration: one frozen value, built once from the environment.

=============================  ====================================================  ========
environment                    meaning                                               default
=============================  ====================================================  ========
``HOSTGATE_POLICY_ID``         id of the policy in force (required)                  —
``HOSTGATE_TOPIC_NAMESPACE``   the deployment's namespace: topics ``<ns>.<name>``    empty
``HOSTGATE_VERIFIER_EAR_*``,   the EAR signing key: an encrypted PEM file or a       unsigned
``HOSTGATE_VERIFIER_PKCS11_*`` PKCS#11 token (:mod:`services.verifier.ear_key`)
=============================  ====================================================  ========

Besides the settings it carries the two things the verifier's shell owns and hands to every
decision: the policy cache (a published document is loaded and compiled once per digest) and
the worker's one :class:`~services.verifier.memo.VerifierMemo` (why remembering never changes
a verdict: :mod:`services.verifier.memo`). Both are used by the runtime's one planner thread
only. And it carries the verifier's one capability, the EAR signing key (loaded and checked when
the config is built, so a bad key fails the worker at start-up): the pure core calls it to sign
each verdict's EAR (``services.verifier.core.appraise``); None writes unsigned EARs.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Final

from services.errors import ConfigError
from services.runtime.topics import Topics
from services.verifier.ear_key import EarSigningKey, load_ear_key_from_env
from services.verifier.memo import VerifierMemo
from services.verifier.policy_in_force import PolicyCache

MAX_POLICY_ID: Final = 128


@dataclass(frozen=True)
class VerifierConfig:
    """What :func:`services.verifier.core.decide` needs besides its input and state."""

    policy_id: str
    topics: Topics = field(default_factory=Topics)
    policies: PolicyCache = field(default_factory=PolicyCache, compare=False)
    memo: VerifierMemo | None = field(default=None, compare=False)
    """None: appraise without remembering (tests that want the plain computation)."""
    ear_key: EarSigningKey | None = field(default=None, repr=False, compare=False)
    """The EAR signing key; None: unsigned EARs."""

    def __post_init__(self) -> None:
        if not self.policy_id or len(self.policy_id) > MAX_POLICY_ID:
            raise ConfigError(f"HOSTGATE_POLICY_ID must name the policy in force "
                              f"(1..{MAX_POLICY_ID} characters)")

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> VerifierConfig:
        """The worker's config, with its own memo (see the module docstring)."""
        return cls(policy_id=env.get("HOSTGATE_POLICY_ID", "").strip(),
                   topics=Topics.from_env(env), memo=VerifierMemo(),
                   ear_key=load_ear_key_from_env(env))
