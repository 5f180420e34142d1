"""``hostgate agent ...`` and ``hostgate fleet ...``: the host side and the fleet simulator."""

from __future__ import annotations

import argparse
import json
import os
import secrets
import tempfile
from pathlib import Path
from typing import Any

from services.errors import ConfigError
from services.runtime.cli_conventions import (
    add_bootstrap_argument,
    add_json_flag,
    print_json,
    print_table,
)
from services.runtime.topics import add_namespace_argument, topics_from_args

_TCTI_ENV, _DEFAULT_TCTI = "HOSTGATE_TCTI", "device:/dev/tpmrm0"


def _add_tcti_argument(p: argparse.ArgumentParser, examples: str = "") -> None:
    p.add_argument("--tcti", default=os.environ.get(_TCTI_ENV, _DEFAULT_TCTI),
                   help=f"TCTI string{examples} (default: ${_TCTI_ENV} or {_DEFAULT_TCTI})")


def _add_host_id_argument(p: argparse.ArgumentParser) -> None:
    import socket

    p.add_argument("--host-id", default=os.environ.get("HOSTGATE_HOST_ID", socket.gethostname()),
                   help="this host's id, the Kafka key (default: $HOSTGATE_HOST_ID or the "
                        "hostname)")


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add the ``agent`` and ``fleet`` command groups."""
    agent = subparsers.add_parser("agent", help="the host agent: enrol, attest and open credentials with a TPM",
                                  description="Inspect and drive this host's TPM.")
    agent_sub = agent.add_subparsers(dest="agent_command", metavar="COMMAND", required=True)
    status = agent_sub.add_parser(
        "status", help="show the TPM's EKs, AK and active PCR banks",
        description="Connect to a TPM and show its active PCR banks, its EKs (with whether an "
                    "EK certificate is in NV) and the agent's AK if a state file holds one.")
    _add_tcti_argument(status, ", e.g. device:/dev/tpmrm0 or swtpm:host=127.0.0.1,port=2321")
    status.add_argument("--state-file", type=Path, default=None,
                        help="the agent's state file holding its AK (optional)")
    add_json_flag(status, "print JSON instead of a table")
    status.set_defaults(func=_agent_status)
    _register_kafka_commands(agent_sub)
    _register_credential_command(agent_sub)

    fleet = subparsers.add_parser("fleet", help="simulated hosts with software TPMs",
                                  description="Simulate hosts with swtpm software TPMs.")
    fleet_sub = fleet.add_subparsers(dest="fleet_command", metavar="COMMAND", required=True)
    sim = fleet_sub.add_parser(
        "simulate", help="start N hosts, enrol and attest them locally, then stop them",
        description="Start N simulated hosts (one swtpm each, distinct EKs from a private EK "
                    "CA), boot them from golden images with optional tamper profiles, enrol "
                    "them (credential activation), take one quote each, check it locally "
                    "(quote, log replay, golden PCRs) and stop everything.")
    sim.add_argument("--hosts", type=int, default=4, help="number of hosts (default 4)")
    sim.add_argument("--tamper", action="append", default=[], metavar="PROFILE=COUNT",
                     help="make COUNT hosts compromised as PROFILE (repeatable); see "
                          "--list-profiles")
    sim.add_argument("--image", default=None,
                     help="golden image for every host (default: images take turns)")
    sim.add_argument("--workers", type=int, default=4, help="thread pool size (default 4)")
    sim.add_argument("--workdir", type=Path, default=None,
                     help="directory for TPM states and the EK CA (default: a temporary one, "
                          "removed afterwards)")
    sim.add_argument("--list-profiles", action="store_true",
                     help="list tamper profiles and golden images, then exit")
    add_json_flag(sim, "print JSON instead of a table")
    sim.set_defaults(func=_fleet_simulate)


def _agent_status(args: argparse.Namespace) -> int:
    from tpm2_pytss.TSS2_Exception import TSS2_Exception

    from services.agent.tpm import AgentTpm, AgentTpmError
    from services.errors import HostgateError

    doc: dict[str, Any] = {"tcti": args.tcti}
    with AgentTpm(args.tcti, state_file=args.state_file) as tpm:
        doc["banks"] = list(tpm.active_banks())
        doc["eks"] = {}
        for kind in ("rsa", "ecc", "ecc384"):
            try:
                ek = tpm.ek(kind)
            except (TSS2_Exception, ValueError, HostgateError) as exc:  # no EK of this kind
                doc["eks"][kind] = {"error": str(exc)}
                continue
            doc["eks"][kind] = {"public_bytes": len(ek.public),
                                "certificate": ek.certificate is not None}
        try:
            ak = tpm.load_ak()
            doc["ak"] = {"kind": ak.kind, "name": ak.name.hex(), "parent": ak.parent}
        except AgentTpmError as exc:
            doc["ak"] = {"error": str(exc)}
    if args.json:
        print_json(doc, indent=2, sort_keys=False)
        return 0
    rows = [("active PCR banks", ", ".join(doc["banks"]))]
    for kind, info in doc["eks"].items():
        value = (info["error"] if "error" in info else
                 f"present, EK certificate in NV: {'yes' if info['certificate'] else 'no'}")
        rows.append((f"EK {kind}", value))
    ak_doc = doc["ak"]
    rows.append(("AK", ak_doc.get("error") or f"{ak_doc['kind']} name {ak_doc['name'][:24]}…"))
    print_table(f"TPM at {args.tcti}", ("item", "value"), rows)
    return 0


def _parse_tampers(items: list[str]) -> dict[str, int]:
    out: dict[str, int] = {}
    for item in items:
        name, sep, count = item.partition("=")
        if not sep:
            count = "1"
        try:
            out[name] = out.get(name, 0) + int(count)
        except ValueError as exc:
            raise ConfigError(f"--tamper {item!r}: COUNT must be an integer") from exc
    return out


def _fleet_simulate(args: argparse.Namespace) -> int:
    from services.agent import selfcheck
    from services.agent.fleet import Fleet, plan_hosts
    from services.agent.measured_boot import IMAGES
    from services.agent.tamper import PROFILES
    from services.tpm.credential import make_credential

    if args.list_profiles:
        for p in PROFILES.values():
            print(f"{p.name:26} {p.family:8} {p.description}")
        for name, image in IMAGES.items():
            print(f"image {name:20} {image.family}")
        return 0
    specs = plan_hosts(args.hosts, _parse_tampers(args.tamper), args.image)
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="hostgate-fleet-") as tmp:
        workdir = args.workdir or Path(tmp)
        with Fleet(workdir, specs, workers=args.workers) as fleet:
            for h in fleet:
                secret = secrets.token_bytes(32)
                enrolled = h.activate(make_credential(h.ek_public, h.ak_public, secret)) == secret
                nonce = secrets.token_bytes(32)
                verdict = selfcheck.check(h.quote(nonce), nonce, h.ak_public,
                                          selfcheck.golden_pcrs(h.image, h.spec.seed))
                rows.append({"host_id": h.host_id, "image": h.image, "tamper": h.tamper,
                             "tcti": h.tcti, "ek_cert": h.ek_cert is not None,
                             "enrolled": enrolled, "ok": verdict.ok, "stage": verdict.stage,
                             "reason": verdict.reason})
            timings = fleet.timings
    summary = {"hosts": rows, "timings_s": None if timings is None else {
        "provision": round(timings.provision_s, 3), "start_swtpm": round(timings.start_swtpm_s, 3),
        "enrol_prepare": round(timings.enrol_prepare_s, 3)}}
    if args.json:
        print_json(summary, indent=2, sort_keys=False)
        return 0
    print_simulation(summary)
    return 0


def print_simulation(summary: dict[str, Any]) -> None:
    """``fleet simulate``'s result for a person: the hosts table and the timings, through
    ``services.terminal`` (tab-separated and never cut when piped: the reason may quote a
    digest)."""
    from rich.markup import escape

    rows = summary["hosts"]
    print_table(f"{len(rows)} simulated hosts",
                ("host", "image", "tamper", "enrolled", "verdict", "reason"),
                [(escape(r["host_id"]), escape(r["image"]), escape(r["tamper"] or "-"),
                  "yes" if r["enrolled"] else "[red]no[/]",
                  "[green]pass[/]" if r["ok"] else f"[red]fail ({escape(r['stage'])})[/]",
                  escape(r["reason"])) for r in rows], fold=("host", "reason"))
    if summary["timings_s"]:
        print_table("timings (s)", tuple(summary["timings_s"]),
                    [tuple(str(v) for v in summary["timings_s"].values())])


# -- hostgate agent enroll | attest: the Kafka side (services.agent.client) ------------------

def _register_kafka_commands(agent_sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add ``agent enroll`` and ``agent attest`` (talk to the collector over Kafka)."""

    def common(p: argparse.ArgumentParser) -> None:
        _add_tcti_argument(p)
        p.add_argument("--state-file", type=Path, required=True,
                       help="the agent's state file holding its AK (TPM-wrapped blobs)")
        _add_host_id_argument(p)
        add_bootstrap_argument(p)
        add_namespace_argument(p)
        p.add_argument("--timeout", type=float, default=60.0,
                       help="seconds to wait for the collector's answer (default 60)")
        add_json_flag(p)

    enroll = agent_sub.add_parser(
        "enroll", help="create an AK and enrol it with the collector over Kafka",
        description="Create a new attestation key under the EK (saved in --state-file), send "
                    "EnrollmentRequested with the EK certificate, activate the collector's "
                    "MakeCredential challenge in this TPM, send the proof and wait for the "
                    "collector's EnrollmentResult. Running it again rotates the AK (same EK; the "
                    "request is signed by the AK enrolled so far, from --state-file). "
                    "Prints the enrolled AK's name on success; exits non-zero with the "
                    "collector's reason (e.g. FAILED_ACTIVATION, BAD_EK_CERTIFICATE, "
                    "EK_CHANGED) if it refuses, or after --timeout seconds without an answer.")
    common(enroll)
    enroll.add_argument("--ak-kind", choices=("ecc", "rsa"), default="ecc",
                        help="AK algorithm (default ecc: P-256 ECDSA)")
    enroll.set_defaults(func=_agent_enroll)

    attest = agent_sub.add_parser(
        "attest", help="ask for a nonce, quote, and send the evidence over Kafka",
        description="Send ChallengeRequested signed by the enrolled AK (a TPM2_Quote over "
                    "the request's binding: the collector ignores an unsigned request), wait "
                    "for the NonceIssued, quote exactly the banks and PCRs it names (the "
                    "coverage the policy in force requires) with the enrolled AK and send "
                    "EvidenceSubmitted with the quoted PCR values and the boot log (and the "
                    "IMA list if given). Fails naming the bank when the challenge asks for a "
                    "PCR bank the TPM has not allocated.")
    common(attest)
    attest.add_argument("--boot-log", type=Path,
                        default=Path("/sys/kernel/security/tpm0/binary_bios_measurements"),
                        help="TCG boot event log (default: the kernel's securityfs copy)")
    attest.add_argument("--ima-log", type=Path, default=None,
                        help="IMA binary_runtime_measurements to send (default: none)")
    attest.set_defaults(func=_agent_attest)


def _run_client(args: argparse.Namespace, action: str) -> dict[str, Any]:
    import asyncio
    import dataclasses

    from services.agent.client import AgentClient, ClientConfig
    from services.agent.hosts import TpmHost
    from services.agent.tpm import AgentTpm
    config = ClientConfig(args.bootstrap, topics_from_args(args),
                          timeout_s=args.timeout)
    with AgentTpm(args.tcti, state_file=args.state_file) as tpm:
        previous = None
        if action == "enroll":
            # The AK enrolled so far (if the state file holds one) vouches for its successor:
            # the collector refuses an unsigned rotation of an enrolled host.
            if args.state_file is not None and args.state_file.exists():
                previous = tpm.load_ak()
            tpm.create_ak(args.ak_kind)
        host = TpmHost(args.host_id, tpm, boot_log=getattr(args, "boot_log", Path("/dev/null")),
                       ima_log=getattr(args, "ima_log", None), previous_ak=previous)

        async def go() -> Any:
            async with AgentClient(host, config) as client:
                return await (client.enroll() if action == "enroll" else client.attest())

        result = asyncio.run(go())
    doc = {k: (v.hex() if isinstance(v, bytes) else v)
           for k, v in dataclasses.asdict(result).items()}
    return {"host_id": args.host_id, action: doc}


def _agent_enroll(args: argparse.Namespace) -> int:
    doc = _run_client(args, "enroll")
    print(json.dumps(doc, indent=2) if args.json else
          f"{args.host_id}: {doc['enroll']['result']} — AK {doc['enroll']['ak_name']} "
          f"(challenge {doc['enroll']['challenge_id']})")
    return 0


def _agent_attest(args: argparse.Namespace) -> int:
    doc = _run_client(args, "attest")
    a = doc["attest"]
    print(json.dumps(doc, indent=2) if args.json else
          f"{args.host_id}: evidence {a['evidence_id']} sent for challenge {a['challenge_id']} "
          f"(partition {a['partition']}, offset {a['offset']})")
    return 0


# -- hostgate agent credential: open this host's TPM-sealed credential -----------------------

def _default_credential_dir() -> Path:
    home = os.environ.get("HOSTGATE_HOME") or str(Path.home() / ".local" / "share" / "hostgate")
    return Path(home) / "credentials"


def _register_credential_command(agent_sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add ``agent credential`` (services.agent.credential_receiver)."""
    p = agent_sub.add_parser(
        "credential", help="fetch this host's newest credential and open it in the TPM",
        description="Wait for this host's newest hostgate.CredentialIssued on "
                    "attest.credentials.v1 (or the one issued for --verdict-id), import it "
                    "under this TPM's EK, satisfy its PolicyPCR with the TPM's current PCRs, "
                    "unseal the content key, decrypt the host key and check it matches the "
                    "certificate; then write <host-id>.crt and <host-id>.key (PEM, the key "
                    "mode 0600) into --out. Fails with a clear error when the credential is "
                    "sealed to another TPM, or the PCRs no longer hold the attested values.",
        epilog="The private key is written only to --out and never printed or logged.")
    _add_host_id_argument(p)
    _add_tcti_argument(p)
    p.add_argument("--out", type=Path, default=None, metavar="DIR",
                   help="directory for <host-id>.crt and <host-id>.key (created mode 0700; "
                        "default: $HOSTGATE_HOME/credentials)")
    p.add_argument("--ca-cert", type=Path, default=None, metavar="PEM",
                   help="the issuing CA's certificate: refuse a certificate it did not sign")
    p.add_argument("--verdict-id", default=None,
                   help="wait for the credential issued for this verdict instead of the newest")
    add_bootstrap_argument(p)
    add_namespace_argument(p)
    p.add_argument("--timeout", type=float, default=60.0, metavar="SECONDS",
                   help="longest wait for the credential to arrive (default 60)")
    add_json_flag(p, "print JSON (never the key)")
    p.set_defaults(func=_agent_credential)


def _agent_credential(args: argparse.Namespace) -> int:
    import asyncio

    from cryptography import x509

    from services.agent.credential_receiver import receive_credential
    from services.agent.tpm import AgentTpm

    if not 0 < args.timeout <= 3600:
        raise ConfigError("--timeout must be in (0, 3600] seconds")
    ca = None
    if args.ca_cert is not None:
        try:
            ca = x509.load_pem_x509_certificate(args.ca_cert.read_bytes())
        except (OSError, ValueError) as exc:
            raise ConfigError(f"--ca-cert {args.ca_cert}: not a readable PEM certificate "
                              f"({type(exc).__name__})") from None
    topic = topics_from_args(args).credentials
    out = args.out if args.out is not None else _default_credential_dir()
    with AgentTpm(args.tcti) as tpm:
        got = asyncio.run(receive_credential(args.bootstrap, args.host_id, tpm, topic=topic,
                                             verdict_id=args.verdict_id, ca_certificate=ca,
                                             timeout_s=args.timeout))
    try:
        cert_path, key_path = got.write_pem(out)
    except OSError as exc:
        raise ConfigError(f"--out {out}: cannot write the credential: {exc.strerror}") from None
    doc = {"host_id": got.host_id, "credential_id": got.credential_id, "serial": got.serial,
           "verdict_id": got.verdict_id, "record": got.coordinates,
           "not_after": got.certificate.not_valid_after_utc.isoformat(),
           "issuer": got.certificate.issuer.rfc4514_string(),
           "certificate": str(cert_path), "key": str(key_path)}
    print(json.dumps(doc, indent=2) if args.json else
          f"{got.host_id}: credential {got.credential_id} (serial {got.serial}) opened in the "
          f"TPM; certificate {cert_path}, key {key_path} (mode 0600)")
    return 0
