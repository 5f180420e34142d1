"""``hostgate issuer ...`` (the CRL) and ``hostgate hosts ...`` (host trust states).

* ``issuer crl [--out FILE] [--pem] [--json]``: sign the current CRL from the issuer's hosts
  changelog (needs the issuing CA: the ``HOSTGATE_ISSUER_CA_*`` / ``..._PKCS11_*`` variables of
  ``hostgate run issuer``).
* ``issuer serve-crl --port N``: serve it over HTTP, kept current by following the changelog.
* ``hosts list [--state S] [--json]`` / ``hosts show HOST [--json]``: the current trust state of
  hosts from the compacted ``attest.hosts.v1``.

Every read is read_committed, joins no consumer group and commits nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import os
import signal
import sys
from pathlib import Path
from typing import Any

from services.errors import ConfigError, HostgateError
from services.issuer.config import load_ca_from_env
from services.runtime.cli_conventions import add_kafka_arguments, print_report
from services.runtime.cli_parser import RemovedFlag
from services.runtime.readers import (
    groupless_consumer,
    jsonable,
    read_to_end,
    rewind,
    topic_partitions,
)
from services.runtime.topics import topics_from_args
from services.wire import subjects

STATES = ("PENDING", "TRUSTED", "QUARANTINED", "REVOKED", "UNKNOWN")


class HostNotFound(HostgateError):
    """``attest.hosts.v1`` has no (live) record for that host."""


def _hosts_changelog(args: argparse.Namespace) -> str:
    return topics_from_args(args).changelog("issuer", "hosts")


# -- hosts ---------------------------------------------------------------------------------


async def read_hosts(bootstrap: str, topic: str) -> dict[str, dict[str, Any]]:
    """The newest ``hostgate.HostState`` per host on ``topic`` now (tombstones remove)."""
    from aiokafka import TopicPartition

    from services.runtime.codec import Codec

    codec = Codec.load()
    async with groupless_consumer(bootstrap, error=HostgateError) as consumer:
        parts = await topic_partitions(bootstrap, topic)
        if not parts:
            raise ConfigError(f"topic {topic} does not exist at {bootstrap}")
        tps = [TopicPartition(topic, p) for p in parts]
        ends = await rewind(consumer, tps)
        hosts: dict[str, dict[str, Any]] = {}
        async for rec in read_to_end(consumer, tps, ends, timeout_s=60, timed_out=lambda: (
                HostgateError(f"could not read {topic} to its end within 60s"))):
            if rec.key is None:
                continue
            key = rec.key.decode("utf-8", "replace")
            if rec.value is None:
                hosts.pop(key, None)
                continue
            try:
                decoded = codec.decode(rec.value, expected={subjects.HOST_STATE})
            except HostgateError:
                continue  # not ours to show; the issuer never writes such a record
            row = dict(decoded.record)
            row["_coordinates"] = f"{rec.topic}[{rec.partition}]@{rec.offset}"
            hosts[key] = row
        return hosts


def _cmd_hosts_list(args: argparse.Namespace) -> int:
    hosts = asyncio.run(read_hosts(args.bootstrap, topics_from_args(args).hosts))
    rows = [h for _, h in sorted(hosts.items()) if args.state is None or h["state"] == args.state]
    lines = [f"{h['host_id']:<32} {h['state']:<12} since={jsonable(h['since'])}  "
             + (f"serial={h['cert_serial']}" if h.get("cert_serial") else
                f"incident={h['incident_id']}" if h.get("incident_id") else "")
             for h in rows]
    print_report(args, [{k: v for k, v in h.items() if not k.startswith("_")} for h in rows], lines)
    return 0


def _cmd_hosts_show(args: argparse.Namespace) -> int:
    hosts = asyncio.run(read_hosts(args.bootstrap, topics_from_args(args).hosts))
    host = hosts.get(args.host_id)
    if host is None:
        raise HostNotFound(f"no host {args.host_id!r} on {topics_from_args(args).hosts}")
    keys = ("host_id", "state", "since", "reason", "cert_serial", "cert_not_after",
            "incident_id", "verdict_id", "_coordinates")
    lines = [f"{k.lstrip('_'):<15} {jsonable(host.get(k))}" for k in keys if host.get(k) is not None]
    print_report(args, host, lines)
    return 0


# -- CRL -----------------------------------------------------------------------------------


def _interval(args: argparse.Namespace) -> dt.timedelta:
    if not 60 <= args.next_update_s <= 30 * 86400:
        raise ConfigError("--next-update-s must be 60..2592000 seconds")
    return dt.timedelta(seconds=args.next_update_s)


def _cmd_crl(args: argparse.Namespace) -> int:
    from cryptography.hazmat.primitives.serialization import Encoding

    from services.issuer.crl import (
        CrlSourceError,
        crl_summary,
        current_crl,
        fold_states,
        read_changelog,
    )

    interval = _interval(args)
    records = asyncio.run(read_changelog(args.bootstrap, _hosts_changelog(args)))
    folded = fold_states(records)
    if folded.problems:
        raise CrlSourceError(f"{len(folded.problems)} unreadable host states, e.g. "
                             f"{folded.problems[0]}; refusing to sign a CRL that may miss "
                             "revocations")
    ca = load_ca_from_env(os.environ)
    try:
        crl = current_crl(ca, folded.states.values(), now=dt.datetime.now(dt.UTC),
                          interval=interval)
    finally:
        ca.close()
    data = crl.public_bytes(Encoding.PEM if args.pem or not args.out else Encoding.DER)
    if args.out:
        Path(args.out).write_bytes(data)
    elif not args.json:
        sys.stdout.write(data.decode("ascii"))
    if args.json:
        print(json.dumps({**crl_summary(crl), "out": args.out}, indent=2, sort_keys=True))
    elif args.out:
        print(f"wrote a CRL listing {len(list(crl))} revoked certificates to {args.out}")
    return 0


def _cmd_serve_crl(args: argparse.Namespace) -> int:
    from services.issuer.crl import CrlService
    from services.runtime.logging import configure_logging, get_logger

    configure_logging("info")
    log = get_logger(component="crl")
    interval = _interval(args)
    ca = load_ca_from_env(os.environ)

    async def serve() -> int:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        service = CrlService(ca, args.bootstrap, _hosts_changelog(args),
                             interval=interval,
                             on_event=lambda event, facts: log.info(event, **facts))
        await service.run(args.listen_address, args.port, stop,
                          started=lambda port: log.info("crl.listening", host=args.listen_address,
                                                        port=port))
        return 0

    try:
        return asyncio.run(serve())
    finally:
        ca.close()


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Register ``hostgate issuer`` and ``hostgate hosts``."""

    def interval(sp: argparse.ArgumentParser) -> None:
        sp.add_argument("--next-update-s", type=int, default=3600,
                        help="seconds from thisUpdate to nextUpdate (default 3600)")

    p = subparsers.add_parser(
        "issuer", help="the issuing CA's revocation list",
        description="The issuer revokes every certificate of a host that fails attestation or "
                    "gets an unresolved incident. These commands publish that revocation as an "
                    "X.509 CRL signed by the issuing CA, built from the issuer's committed "
                    "state (its hosts changelog). The CA comes from the same environment as "
                    "`hostgate run issuer` (HOSTGATE_ISSUER_CA_CERT with _CA_KEY and "
                    "_CA_PASSPHRASE_FILE, or the _PKCS11_ variables).")
    sub = p.add_subparsers(dest="issuer_cmd", required=True)
    sp = sub.add_parser("crl", help="sign and write the current CRL",
                        description="Read the issuer's hosts changelog to its end and sign a "
                                    "CRL of every revoked, unexpired host certificate. Without "
                                    "--out the PEM goes to stdout.")
    sp.add_argument("--out", help="write the CRL here (DER unless --pem)")
    sp.add_argument("--pem", action="store_true", help="write PEM instead of DER")
    interval(sp)
    add_kafka_arguments(sp)
    sp.set_defaults(func=_cmd_crl)
    sp = sub.add_parser("serve-crl", help="serve the CRL over HTTP, kept current",
                        description="Serve GET /crl (DER, application/pkix-crl), /crl.pem and "
                                    "/healthz. Follows the changelog: a new revocation is "
                                    "signed into the CRL within a second; the CRL is re-signed "
                                    "at least every half --next-update-s. Stops on SIGTERM.")
    sp.add_argument("--port", type=int, required=True, help="TCP port (0: any free port)")
    sp.add_argument("--listen-address", default="127.0.0.1", metavar="ADDRESS",
                    help="address to listen on (default 127.0.0.1; 0.0.0.0 in a pod)")
    sp.add_argument("--host", action=RemovedFlag,
                    instead="is now --listen-address here (--host names a host id elsewhere)")
    interval(sp)
    add_kafka_arguments(sp, json_flag=False)
    sp.set_defaults(func=_cmd_serve_crl)

    p = subparsers.add_parser(
        "hosts", help="current trust state of hosts (attest.hosts.v1)",
        description="Read the compacted attest.hosts.v1 the issuer writes: TRUSTED hosts with "
                    "their certificate serial and expiry, QUARANTINED ones with their incident.")
    sub = p.add_subparsers(dest="hosts_cmd", required=True)
    sp = sub.add_parser("list", help="every host's current state")
    sp.add_argument("--state", choices=STATES, help="only hosts in this state")
    add_kafka_arguments(sp)
    sp.set_defaults(func=_cmd_hosts_list)
    sp = sub.add_parser("show", help="one host's current state")
    sp.add_argument("host_id")
    add_kafka_arguments(sp)
    sp.set_defaults(func=_cmd_hosts_show)
