"""The fault driver of the local cluster (``services.runtime.localcluster``): find the node that
matters for a record, a transaction or a group, and kill exactly that one.

* :func:`partition_leader` — the leader of one partition (Metadata);
* :func:`transaction_coordinator` / :func:`group_coordinator` — the broker that coordinates a
  transactional id / a consumer group (FindCoordinator, key type 1 / 0; the coordinator is the
  leader of the ``__transaction_state`` / ``__consumer_offsets`` partition the id hashes to);
* :func:`kill` / :func:`restart` — SIGKILL (or any signal) a node by id, start it again.

Every look-up retries while the cluster has no answer (a coordinator being moved answers
``COORDINATOR_NOT_AVAILABLE``, a partition between leaders has leader -1), up to ``timeout_s``.
The CLI (``hostgate kafka leader|coordinator|kill|start``) and the cluster tests use these.
"""

from __future__ import annotations

import asyncio
import signal
import time
from collections.abc import Awaitable, Callable
from typing import Any, Final

from services.runtime import localcluster
from services.runtime.localbroker import BrokerError
from services.runtime.localcluster import ClusterConfig

GROUP: Final = 0
TRANSACTION: Final = 1
LOOKUP_TIMEOUT_S: Final = 30.0


class LookupFailed(BrokerError):
    """The cluster did not name a leader or coordinator within the time allowed."""


async def _retrying(what: str, ask: Callable[[], Awaitable[int | None]],
                    timeout_s: float) -> int:
    deadline = time.monotonic() + timeout_s
    last: Exception | None = None
    while True:
        try:
            answer = await ask()
            if answer is not None and answer >= 0:
                return answer
        except Exception as exc:  # retried: a cluster in flux answers with errors
            last = exc
        if time.monotonic() > deadline:
            detail = f": {type(last).__name__}: {last}" if last else ""
            raise LookupFailed(f"no {what} within {timeout_s:.0f}s{detail}")
        await asyncio.sleep(0.25)


async def _with_admin(bootstrap: str, call: Callable[..., Awaitable[int | None]],
                      *args: object) -> int | None:
    from aiokafka.admin import AIOKafkaAdminClient

    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=5000)
    await admin.start()
    try:
        return await call(admin, *args)
    finally:
        await admin.close()


async def _leader(admin: Any, topic: str, partition: int) -> int | None:
    (doc,) = await admin.describe_topics([topic])
    for p in doc["partitions"]:
        if p["partition"] == partition:
            return int(p["leader"])
    return None


async def _coordinator(admin: Any, key: str, kind: int) -> int | None:
    return int(await admin.find_coordinator(key, kind))


async def partition_leader(bootstrap: str, topic: str, partition: int, *,
                           timeout_s: float = LOOKUP_TIMEOUT_S) -> int:
    """The node id leading ``topic[partition]`` now."""
    return await _retrying(f"leader of {topic}[{partition}]",
                           lambda: _with_admin(bootstrap, _leader, topic, partition), timeout_s)


async def transaction_coordinator(bootstrap: str, transactional_id: str, *,
                                  timeout_s: float = LOOKUP_TIMEOUT_S) -> int:
    """The node id coordinating transactions of ``transactional_id``."""
    return await _retrying(f"transaction coordinator of {transactional_id!r}",
                           lambda: _with_admin(bootstrap, _coordinator, transactional_id,
                                               TRANSACTION), timeout_s)


async def group_coordinator(bootstrap: str, group_id: str, *,
                            timeout_s: float = LOOKUP_TIMEOUT_S) -> int:
    """The node id coordinating consumer group ``group_id``."""
    return await _retrying(f"group coordinator of {group_id!r}",
                           lambda: _with_admin(bootstrap, _coordinator, group_id, GROUP),
                           timeout_s)


def kill(cfg: ClusterConfig, node: int, sig: signal.Signals = signal.SIGKILL) -> int:
    """Signal ``node`` (default SIGKILL, and wait until it is gone); its PID. A node that is not
    running is an error: a fault test that kills nothing proves nothing."""
    pid = localcluster.signal_node(cfg, node, sig)
    if pid is None:
        raise BrokerError(f"node {node} is not running")
    return pid


def restart(cfg: ClusterConfig, node: int, *, wait: bool = True) -> int:
    """Start ``node`` again (its PID); ``wait``: until it is a live broker again."""
    return localcluster.start_node(cfg, node, wait=wait)
