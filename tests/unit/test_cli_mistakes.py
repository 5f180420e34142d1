"""Issue 18, item 5: each CLI mistake a first-time user made, driven through the real entry
point, with the exact message and exit status (``services.errors.ExitCode``).

Most run ``main(argv)`` in-process with captured output; the ones about what reaches a real
terminal or pipe (a closed pipe, aiokafka's logging) run ``python -m services.cli``. Logs are
read in place from the shared corpus; nothing needs Kafka (a refused port stands for a missing
broker).
"""

from __future__ import annotations

import argparse
import io
import json
import subprocess
import sys
from pathlib import Path

import pytest

from services.cli import main, package_version
from services.errors import ExitCode
from tests.unit.test_eventlog_corpus import BY_ID, CORPUS

ROOT = Path(__file__).parents[2]
NO_BROKER = "127.0.0.1:1"
"""A port nothing listens on: the connection is refused at once."""


def _log(entry_id: str) -> str:
    return str(CORPUS / BY_ID[entry_id]["file"])


def _corpus_file(name_start: str) -> str:
    return str(next((CORPUS / "logs").glob(f"{name_start}*")))


def _hostgate(*argv: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "services.cli", *argv], capture_output=True,
                          text=True, cwd=ROOT, timeout=120, input=stdin)


def _err_lines(capsys: pytest.CaptureFixture[str]) -> list[str]:
    return capsys.readouterr().err.splitlines()


# -- one meaning per flag: --bootstrap is the Kafka servers everywhere -----------------------

def test_kafka_status_bootstrap_was_renamed(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["kafka", "status", "--bootstrap"]) == ExitCode.USAGE
    assert _err_lines(capsys) == [
        "usage: hostgate kafka status [-h] [--json] [--quiet] [--address]",
        "hostgate kafka status: error: --bootstrap is now --address here (--bootstrap names "
        "Kafka servers elsewhere)"]


def test_serve_crl_host_was_renamed(capsys: pytest.CaptureFixture[str]) -> None:
    """--host is a host id in incidents and replay; the CRL server's listen address is
    --listen-address."""
    assert main(["issuer", "serve-crl", "--port", "0", "--host", "0.0.0.0"]) == ExitCode.USAGE
    assert _err_lines(capsys)[-1] == (
        "hostgate issuer serve-crl: error: --host is now --listen-address here (--host names "
        "a host id elsewhere)")


def test_every_host_flag_names_a_host_id() -> None:
    from services.cli import build_parser

    def walk(parser: argparse.ArgumentParser, path: str) -> list[tuple[str, str | None]]:
        found = []
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for name, sub in action.choices.items():
                    found += walk(sub, f"{path} {name}")
            elif "--host" in action.option_strings and action.help != argparse.SUPPRESS:
                found.append((path, action.help))
        return found

    hosts = walk(build_parser(), "hostgate")
    assert hosts and all("host" in (h or "") and "address" not in (h or "") for _, h in hosts)


def test_policy_publish_bootstrap_names_servers_not_a_first_version(
        capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["policy", "publish", "--bootstrap", "policy.yaml"]) == ExitCode.USAGE
    assert _err_lines(capsys)[-1] == (
        "hostgate policy publish: error: --bootstrap takes Kafka bootstrap servers "
        "HOST:PORT[,HOST:PORT...], not 'policy.yaml' (a first publication is now "
        "--first-version)")


def test_every_bootstrap_flag_takes_servers() -> None:
    from services.cli import build_parser

    parser = build_parser()
    for argv in (["topics", "ensure"], ["policy", "publish", "p.yaml"], ["replay"],
                 ["incidents", "list"], ["hosts", "list"]):
        args = parser.parse_args([*argv, "--bootstrap", "k1:9092,k2:9092"])
        assert args.bootstrap == "k1:9092,k2:9092", argv
    # the old name of the servers flag in two commands still works, hidden
    assert parser.parse_args(["replay", "--broker", "k1:9092"]).bootstrap == "k1:9092"


# -- --version, usage and suggestions ----------------------------------------------------------

def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--version"]) == ExitCode.OK
    assert capsys.readouterr().out == f"hostgate {package_version()}\n"


def test_unknown_flag_shows_the_commands_usage_and_a_suggestion(
        capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["log", "show", _log("A32"), "--jsno"]) == ExitCode.USAGE
    assert _err_lines(capsys) == [
        "usage: hostgate log show [-h] [--bank BANK] [--json] FILE",
        "hostgate log show: error: unrecognized arguments: --jsno; did you mean --json?"]


def test_unknown_sub_command_suggests(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["log", "shwo"]) == ExitCode.USAGE
    assert _err_lines(capsys) == [
        "usage: hostgate log [-h] SUBCOMMAND ...",
        "hostgate log: error: argument SUBCOMMAND: invalid choice: 'shwo'; did you mean "
        "show? (choose from show, verify, claims)"]
    assert main(["lgo"]) == ExitCode.USAGE
    assert "invalid choice: 'lgo'; did you mean log?" in capsys.readouterr().err


def test_help_lists_the_exit_statuses(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--help"]) == ExitCode.OK
    out = capsys.readouterr().out
    for code in ExitCode:
        assert f"  {code.value:>3}  " in out


# -- output into a pipe ------------------------------------------------------------------------

def test_closed_pipe_ends_quietly() -> None:
    """``hostgate ima show --json BIG | head -1``: the output is far over a pipe's buffer."""
    big = _corpus_file("I08")
    proc = subprocess.run(
        ["sh", "-c", f'"{sys.executable}" -m services.cli ima show --json "{big}" | head -1; '
                     'echo "status=$?"'],
        capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert proc.stdout.splitlines() == ["{", "status=0"]
    assert proc.stderr == ""


def test_closed_pipe_status(monkeypatch: pytest.MonkeyPatch) -> None:
    class ClosedPipe(io.StringIO):
        def write(self, _text: str) -> int:
            raise BrokenPipeError(32, "Broken pipe")

    monkeypatch.setattr(sys, "stdout", ClosedPipe())
    assert main(["log", "claims", "--json", _log("A32")]) == ExitCode.BROKEN_PIPE


def test_piped_tables_keep_machine_values_whole(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["log", "show", _log("A32")]) == ExitCode.OK
    rows = [line.split("\t") for line in capsys.readouterr().out.splitlines()
            if not line.startswith("#")]
    pcr_rows = [r for r in rows if len(r) == 3 and r[0] == "sha256"]
    assert pcr_rows and all(len(r[2]) == 64 for r in pcr_rows)
    assert main(["topics", "list"]) == ExitCode.OK
    lines = capsys.readouterr().out.splitlines()
    assert lines[1] == "topic\tpartitions\tpolicy\tretention\tpurpose"
    assert "hostgate.collector.enrollments.changelog.v1" in {ln.split("\t")[0] for ln in lines}


# -- a file that is not a boot log -------------------------------------------------------------

@pytest.mark.parametrize(("entry", "kind"), [
    ("I07", "a Linux IMA measurement list (ASCII); read it with `hostgate ima show`"),
    ("J04", "a Linux IMA measurement list (binary); read it with `hostgate ima show`"),
])
def test_ima_list_given_as_boot_log(entry: str, kind: str,
                                    capsys: pytest.CaptureFixture[str]) -> None:
    path = _corpus_file(entry)
    assert main(["log", "show", path]) == ExitCode.BAD_INPUT
    assert _err_lines(capsys) == [
        f"hostgate: error: {path} is not a TCG boot event log: it looks like {kind}"]


@pytest.mark.parametrize(("data", "kind"), [
    (b"\x89PNG\r\n\x1a\n" + bytes(64), "a PNG image"),
    (b'{"pcrs": {}}\n' + b" " * 64, "a JSON document"),
    (b"\x1f\x8b\x08\x00" + bytes(64), "a gzip-compressed file (decompress it first)"),
])
def test_other_files_given_as_boot_log(data: bytes, kind: str, tmp_path: Path,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "not-a-log"
    path.write_bytes(data)
    assert main(["log", "claims", "--json", str(path)]) == ExitCode.BAD_INPUT
    captured = capsys.readouterr()
    message = f"{path} is not a TCG boot event log: it looks like {kind}"
    assert captured.err.splitlines() == [f"hostgate: error: {message}"]
    assert json.loads(captured.out) == {"ok": False, "exit_status": 4, "error": {
        "type": "NotABootLog", "message": message}}


# -- failure paths: their own status, JSON too -------------------------------------------------

def test_log_verify_mismatch(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    pcrs = json.dumps({"sha256": {"0": "00" * 32}})
    assert main(["log", "verify", _log("A32"), "--pcrs", pcrs]) == ExitCode.CHECK_FAILED
    err = _err_lines(capsys)
    assert len(err) == 1 and err[0].startswith("hostgate: error: ") and "PCR 0" in err[0]
    assert main(["log", "verify", _log("A32"), "--pcrs", pcrs, "--json"]) == 1
    doc = json.loads(capsys.readouterr().out)
    assert doc["ok"] is False and doc["exit_status"] == 1
    assert doc["error"]["type"] == "ReplayMismatch"
    assert doc["error"]["invalid_pcrs"] == {"sha256": [0]} and doc["error"]["first"] == [
        "sha256", 0]


def test_missing_broker_prints_only_hostgates_line() -> None:
    proc = _hostgate("topics", "ensure", "--bootstrap", NO_BROKER)
    assert proc.returncode == ExitCode.UNAVAILABLE
    assert proc.stderr.splitlines() == [
        "hostgate: error: no Kafka broker answered at 127.0.0.1:1 (KafkaConnectionError: "
        "Unable to bootstrap from [('127.0.0.1', 1, <AddressFamily.AF_INET: 2>)])"]
    proc = _hostgate("incidents", "list", "--bootstrap", NO_BROKER, "--json")
    assert proc.returncode == ExitCode.UNAVAILABLE
    assert len(proc.stderr.splitlines()) == 1
    assert json.loads(proc.stdout)["exit_status"] == ExitCode.UNAVAILABLE


def test_readme_lists_every_exit_status() -> None:
    readme = (ROOT / "README.md").read_text()
    for code in ExitCode:
        assert f"\n| {code.value} | " in readme, code


@pytest.mark.parametrize("command", [["policy", "from-log", "x.bin"],
                                     ["policy", "publish", "p.yaml"]])
def test_a_policys_version_is_policy_version(command: list[str],
                                             capsys: pytest.CaptureFixture[str]) -> None:
    """--version is hostgate's own; a policy's version is --policy-version."""
    assert main([*command, "--version", "3"]) == ExitCode.USAGE
    assert _err_lines(capsys)[-1].endswith(
        "error: --version is now --policy-version here (--version is hostgate's own)")
