"""Which policy is in force, from the records of the compacted ``attest.policies.v1`` topic.

Configuration names one policy id (``HOSTGATE_POLICY_ID``); of the ``hostgate.PolicyPublished``
records with that key, the one with the **highest version** is in force (not the last one
written: a late re-publication of an old version does not roll the fleet back). A record whose
``digest`` is not the SHA-256 of its ``document``, whose document does not load, or whose
``metadata.id`` differs from its ``policy_id`` is *unusable*: appraisal then fails closed
(``verifier.policy.unusable``), it never falls back to an older version silently. No record at
all (or a tombstone) means no policy in force: ``verifier.policy.none_in_force``.

Everything here is pure. Loading and compiling a document is memoised by its digest
(:class:`PolicyCache`), which changes nothing about the result.
"""

from __future__ import annotations

import hashlib
import hmac
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final

from services.errors import HostgateError
from services.verifier.policy.errors import PolicyError
from services.verifier.policy.evaluate import PreparedPolicy, prepare

if TYPE_CHECKING:
    from services.runtime.stage import StateView
from services.verifier.policy.loader import load_policy

POLICY_TABLE: Final = "policies"
"""Name of the verifier's global table over ``attest.policies.v1``."""
MEDIA_TYPE: Final = "application/yaml"


class PolicyUnusable(HostgateError):
    """The policy record in force cannot be used (bad digest, does not load, wrong id)."""


@dataclass(frozen=True)
class PolicyInForce:
    """A loaded, compiled policy version, as named in every verdict it decides."""

    policy_id: str
    version: int
    digest: bytes
    """SHA-256 over the policy's canonical JSON (``Policy.digest``): layout and comments of the
    YAML do not change it, so it identifies what the policy *means*."""
    document_sha256: bytes
    """SHA-256 of the published document text (``PolicyPublished.digest``)."""
    prepared: PreparedPolicy


def newer(old: Mapping[str, Any] | None, new: Mapping[str, Any] | None
          ) -> Mapping[str, Any] | None:
    """Reduce two ``PolicyPublished`` records of one key: the higher version wins; a tombstone
    (``new`` None) withdraws the policy; at an equal version the earlier record is kept."""
    if new is None or old is None:
        return new
    return new if int(new["version"]) > int(old["version"]) else old


def _digest_bytes(policy_digest: str) -> bytes:
    alg, _, hexval = policy_digest.partition(":")
    if alg != "sha256" or len(hexval) != 64:
        raise PolicyUnusable(f"policy digest {policy_digest!r} is not sha256:<64 hex>")
    return bytes.fromhex(hexval)


def load_in_force(record: Mapping[str, Any]) -> PolicyInForce:
    """Check and load one ``PolicyPublished`` record; ``PolicyUnusable`` names what is wrong."""
    policy_id = str(record["policy_id"])
    version = int(record["version"])
    document = str(record["document"])
    where = f"policy {policy_id!r} version {version}"
    text_digest = hashlib.sha256(document.encode("utf-8", "surrogatepass")).digest()
    if not hmac.compare_digest(text_digest, bytes(record["digest"])):
        raise PolicyUnusable(f"{where}: digest is not the SHA-256 of its document")
    try:
        policy = load_policy(document)
    except PolicyError as exc:
        raise PolicyUnusable(f"{where}: {exc}") from exc
    if policy.metadata.id != policy_id:
        raise PolicyUnusable(f"{where}: document metadata.id is {policy.metadata.id!r}")
    return PolicyInForce(policy_id=policy_id, version=version,
                         digest=_digest_bytes(policy.digest), document_sha256=text_digest,
                         prepared=prepare(policy))


class PolicyCache:
    """Memoises :func:`load_in_force` by (policy id, version, claimed digest, SHA-256 of the
    document actually carried); bounded LRU. A failure is memoised too, so a broken record costs
    one load, not one per verdict."""

    def __init__(self, size: int = 16) -> None:
        self._size = size
        self._items: OrderedDict[tuple[str, int, bytes, bytes],
                                 PolicyInForce | PolicyUnusable] = OrderedDict()

    def get(self, record: Mapping[str, Any]) -> PolicyInForce:
        """The loaded policy of ``record``; raises ``PolicyUnusable`` like :func:`load_in_force`."""
        document = str(record["document"]).encode("utf-8", "surrogatepass")
        key = (str(record["policy_id"]), int(record["version"]), bytes(record["digest"]),
               hashlib.sha256(document).digest())
        hit = self._items.get(key)
        if hit is None:
            try:
                hit = load_in_force(record)
            except PolicyUnusable as exc:
                hit = exc
            self._items[key] = hit
            while len(self._items) > self._size:
                self._items.popitem(last=False)
        else:
            self._items.move_to_end(key)
        if isinstance(hit, PolicyUnusable):
            raise hit
        return hit


def published_record(document: str, *, version: int, published_at_ms: int, author: str,
                     policy_id: str | None = None) -> dict[str, Any]:
    """A ``hostgate.PolicyPublished`` record for ``document`` (loaded first: refuses a malformed
    policy with its line and reason). ``policy_id`` defaults to the document's metadata.id."""
    policy = load_policy(document)
    pid = policy_id or policy.metadata.id
    if pid != policy.metadata.id:
        raise PolicyError(f"policy id {pid!r} differs from metadata.id {policy.metadata.id!r}",
                          field="metadata.id")
    return {"policy_id": pid, "version": version,
            "digest": hashlib.sha256(document.encode("utf-8")).digest(),
            "document": document, "media_type": MEDIA_TYPE,
            "published_at": published_at_ms, "author": author}


def policy_of(state: StateView, policy_id: str, cache: PolicyCache
              ) -> PolicyInForce | PolicyUnusable | None:
    """The policy in force as the state shows it (None: no record; PolicyUnusable: broken)."""
    record = state.get(POLICY_TABLE, policy_id)
    if record is None:
        return None
    try:
        return cache.get(record)
    except PolicyUnusable as exc:
        return exc
