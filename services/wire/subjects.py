"""The Avro subjects of every record that crosses a topic or a changelog, each named once.

A subject is the full name of a record schema in ``schemas/`` (``hostgate.<Name>``); the codec
frames every record with its subject's schema, and a stage declares which subjects it reads. The
names are a wire contract: a schema change adds a version under the same subject, never a new
name for the same record. ``tests/unit/test_wire_primitives.py`` checks that this list and
``schemas/`` agree.
"""

from __future__ import annotations

from typing import Final

# Agent -> collector (attest.requests.v1, attest.evidence.v1)
ENROLLMENT_REQUESTED: Final = "hostgate.EnrollmentRequested"
ACTIVATION_PROOF: Final = "hostgate.ActivationProof"
CHALLENGE_REQUESTED: Final = "hostgate.ChallengeRequested"
EVIDENCE_SUBMITTED: Final = "hostgate.EvidenceSubmitted"
# Collector -> agent, verifier, SOC
ACTIVATION_CHALLENGE: Final = "hostgate.ActivationChallenge"
NONCE_ISSUED: Final = "hostgate.NonceIssued"
ENROLLMENT_RESULT: Final = "hostgate.EnrollmentResult"
EVIDENCE_COLLECTED: Final = "hostgate.EvidenceCollected"
INTAKE_REJECTED: Final = "hostgate.IntakeRejected"
# Collector-internal: the EK registry
EK_BINDING_REQUESTED: Final = "hostgate.EkBindingRequested"
EK_BINDING_DECIDED: Final = "hostgate.EkBindingDecided"
# Operators
POLICY_PUBLISHED: Final = "hostgate.PolicyPublished"
IDENTITY_COMMAND: Final = "hostgate.IdentityCommand"
IDENTITY_EVENT: Final = "hostgate.IdentityEvent"
REMEDIATION_COMMAND: Final = "hostgate.RemediationCommand"
REMEDIATION_REJECTED: Final = "hostgate.RemediationRejected"
# Verifier, issuer, incidents
VERDICT: Final = "hostgate.Verdict"
CREDENTIAL_ISSUED: Final = "hostgate.CredentialIssued"
HOST_STATE: Final = "hostgate.HostState"
INCIDENT_EVENT: Final = "hostgate.IncidentEvent"
LIVENESS_TICK: Final = "hostgate.LivenessTick"
# State tables (changelog values)
ENROLLMENT_STATE: Final = "hostgate.EnrollmentState"
PENDING_CHALLENGE: Final = "hostgate.PendingChallenge"
USED_NONCE: Final = "hostgate.UsedNonce"
HOST_TRACK_STATE: Final = "hostgate.HostTrackState"
EK_BINDING: Final = "hostgate.EkBinding"
ISSUER_HOST_STATE: Final = "hostgate.IssuerHostState"
INCIDENT_STATE: Final = "hostgate.IncidentState"
INCIDENTS_ROSTER: Final = "hostgate.IncidentsRoster"

PRODUCT_SUBJECTS: Final[frozenset[str]] = frozenset(
    value for name, value in dict(globals()).items()
    if name.isupper() and isinstance(value, str) and value.startswith("hostgate."))
"""Every subject above: exactly the record schemas of ``schemas/``."""
