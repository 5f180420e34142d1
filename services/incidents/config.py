"""The incidents stage's settings: one frozen value, read from the environment once by the shell.

======================================  ================================================  ==========
environment                             meaning                                           default
======================================  ================================================  ==========
``HOSTGATE_INCIDENTS_STALE_AFTER_S``    liveness window in seconds (a host without a      ``86400``
                                        verdict for this long is reported stale);
                                        ``0`` = off
``HOSTGATE_INCIDENTS_ASSIGNEE_GROUP``   the SOC group named on Incident Findings          see below
``HOSTGATE_INCIDENTS_CE_SOURCE``        the CloudEvents ``source`` of findings            see below
``HOSTGATE_TOPIC_NAMESPACE``            the deployment's namespace: every topic           empty
                                        ``<ns>.<name>`` (``runtime.topics.Topics``)
======================================  ================================================  ==========

Defaults: assignee group ``hostgate-soc``, CloudEvents source ``urn:hostgate:incidents``.
All of them are optional. The core needs no capability: every time it uses comes from its inputs
(``services.incidents.core``), and its ids are derived from them.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from services.errors import ConfigError
from services.runtime.topics import Topics


@dataclass(frozen=True)
class IncidentsConfig:
    """Everything :func:`services.incidents.core.decide` needs besides the input and the state."""

    topics: Topics = field(default_factory=Topics)
    """``attest.incidents.v1`` and ``soc.findings.ocsf.v1`` (in the deployment's namespace)."""
    ce_source: str = "urn:hostgate:incidents"
    assignee_group: str = "hostgate-soc"
    stale_after_ms: int = 24 * 3600 * 1000
    """A host without a verdict for this long is reported stale; 0 turns liveness off."""
    max_roster: int = 4096
    """Hosts tracked for liveness per partition (more are not tracked, and the log says so)."""
    ignored_rejections: frozenset[str] = frozenset({"RATE_LIMITED", "STALE_NONCE"})
    """Intake rejection reasons that are not even findings (benign: a busy or slow host). No
    rejection is ever an incident (``services.incidents.core``)."""

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> IncidentsConfig:
        """Build the config from ``env`` (see the module docstring)."""
        topics = Topics.from_env(env)
        raw = env.get("HOSTGATE_INCIDENTS_STALE_AFTER_S", "86400")
        try:
            stale_s = float(raw)
        except ValueError:
            raise ConfigError(f"HOSTGATE_INCIDENTS_STALE_AFTER_S={raw!r} is not a number"
                              ) from None
        if stale_s < 0:
            raise ConfigError(f"HOSTGATE_INCIDENTS_STALE_AFTER_S={raw!r} is negative")
        defaults = cls()
        return cls(
            topics=topics,
            ce_source=env.get("HOSTGATE_INCIDENTS_CE_SOURCE", defaults.ce_source),
            assignee_group=env.get("HOSTGATE_INCIDENTS_ASSIGNEE_GROUP", defaults.assignee_group),
            stale_after_ms=int(stale_s * 1000),
        )


__all__ = ["IncidentsConfig"]
