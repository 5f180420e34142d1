"""swtpm software TPMs for the simulator and tests: a private local CA, provisioning, processes.

* ``LocalCA``: a swtpm_localca configuration in a directory of the caller's choosing (never the
  shared ``/var/lib/swtpm-localca``). Its root certificate is the EK CA a collector trusts for
  simulated hosts.
* ``provision(state_dir, ca)``: ``swtpm_setup`` with SHA-1 + SHA-256 banks, an EK certificate
  (RSA in NV 0x01c00002, ECC P-384 in 0x01c00016) and a platform certificate. Each call gives a
  distinct EK; ``clone_state`` copies a provisioned state where a distinct identity is not needed.
* ``SwtpmInstance``: one ``swtpm socket`` on a free loopback port pair (server P, control P+1,
  as tcti-swtpm requires), readiness via the control channel, stopped by its own PID. Children
  die with their parent (PR_SET_PDEATHSIG) and every live instance is stopped at exit.

Start instances from a long-lived thread (normally the main one): Linux delivers the death
signal when the *thread* that forked exits, so an instance started from a short-lived pool
thread would be killed with that thread. ``SwtpmInstance.start`` refuses to set the death
signal from a non-main thread and relies on ``atexit`` there instead.
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import os
import shutil
import signal
import socket
import struct
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from services.errors import HostgateError

PORT_BASE_ENV = "HOSTGATE_SWTPM_PORT_BASE"
DEFAULT_PORT_BASE = 23400
PORT_SPAN = 2000
START_ATTEMPTS = 8
READY_TIMEOUT_S = 5.0
SETUP_TIMEOUT_S = 60.0
#: swtpm control channel command CMD_GET_CAPABILITY (swtpm's ``tpm_ioctl.h``).
_CMD_GET_CAPABILITY = 0x00000001
_PR_SET_PDEATHSIG = 1
STATE_FILE = "tpm2-00.permall"
EK_CERT_FILES = {"rsa": "ek-rsa2048.crt", "ecc": "ek-secp384r1.crt"}
PCR_BANKS: tuple[str, ...] = ("sha1", "sha256")
"""The PCR banks ``swtpm_setup`` allocates in every simulated host's TPM (and its log covers)."""


class SwtpmError(HostgateError):
    """swtpm or swtpm_setup could not be run, did not start, or failed."""


def _tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        raise SwtpmError(f"{name} not found on PATH (Debian package swtpm / swtpm-tools)")
    return path


@dataclass(frozen=True)
class LocalCA:
    """A private swtpm_localca: config files and CA state in ``directory``."""

    directory: Path

    @property
    def setup_config(self) -> Path:
        """The ``swtpm_setup.conf`` that points swtpm_setup at this CA."""
        return self.directory / "swtpm_setup.conf"

    @property
    def root_cert_path(self) -> Path:
        """The self-signed root (PEM): the trust anchor for this fleet's EK certificates."""
        return self.directory / "swtpm-localca-rootca-cert.pem"

    @property
    def issuer_cert_path(self) -> Path:
        """The intermediate that signs EK certificates (PEM)."""
        return self.directory / "issuercert.pem"

    @classmethod
    def create(cls, directory: Path) -> LocalCA:
        """Write the three config files; the CA keys appear on the first ``provision``."""
        directory.mkdir(parents=True, exist_ok=True)
        d = directory.resolve()
        (d / "swtpm_setup.conf").write_text(
            f"create_certs_tool = {_tool('swtpm_localca')}\n"
            f"create_certs_tool_config = {d / 'swtpm-localca.conf'}\n"
            f"create_certs_tool_options = {d / 'swtpm-localca.options'}\n"
            f"active_pcr_banks = {','.join(PCR_BANKS)}\n")
        (d / "swtpm-localca.conf").write_text(
            f"statedir = {d}\nsigningkey = {d / 'signkey.pem'}\n"
            f"issuercert = {d / 'issuercert.pem'}\ncertserial = {d / 'certserial'}\n")
        (d / "swtpm-localca.options").write_text(
            "--platform-manufacturer hostgate\n--platform-version 2.1\n"
            "--platform-model hostgate-sim\n")
        return cls(d)

    def root_pem(self) -> bytes:
        """The root certificate, PEM (only after the first provisioning)."""
        return self.root_cert_path.read_bytes()

    def issuer_pem(self) -> bytes:
        """The intermediate certificate, PEM (only after the first provisioning)."""
        return self.issuer_cert_path.read_bytes()


def provision(state_dir: Path, ca: LocalCA) -> Path:
    """Run swtpm_setup in ``state_dir``: EKs, EK certificates from ``ca``, platform cert.

    Returns ``state_dir``. The first call for a fresh CA creates the CA's keys; do it once
    before provisioning in parallel.
    """
    state_dir.mkdir(parents=True, exist_ok=True)
    cmd = [
        _tool("swtpm_setup"), "--tpm2", "--tpmstate", str(state_dir),
        "--pcr-banks", ",".join(PCR_BANKS), "--overwrite",
        "--create-ek-cert", "--create-platform-cert", "--config", str(ca.setup_config),
        "--write-ek-cert-files", str(state_dir), "--logfile", str(state_dir / "setup.log"),
    ]
    try:
        result = subprocess.run(cmd, capture_output=True, timeout=SETUP_TIMEOUT_S, check=False)
    except subprocess.TimeoutExpired as exc:
        raise SwtpmError(f"swtpm_setup for {state_dir.name} timed out") from exc
    if result.returncode != 0:
        log = (state_dir / "setup.log")
        tail = log.read_text(errors="replace")[-400:] if log.exists() else ""
        raise SwtpmError(f"swtpm_setup for {state_dir.name} failed with status "
                         f"{result.returncode}: {tail.strip()}")
    return state_dir


def clone_state(template: Path, state_dir: Path) -> Path:
    """Copy a provisioned state (same EK and certificates) into ``state_dir``."""
    state_dir.mkdir(parents=True, exist_ok=True)
    shutil.copy2(template / STATE_FILE, state_dir / STATE_FILE)
    for name in EK_CERT_FILES.values():
        if (template / name).exists():
            shutil.copy2(template / name, state_dir / name)
    return state_dir


def port_base() -> int:
    """The first port to try: ``$HOSTGATE_SWTPM_PORT_BASE`` or 23400."""
    raw = os.environ.get(PORT_BASE_ENV, str(DEFAULT_PORT_BASE))
    try:
        base = int(raw)
    except ValueError as exc:
        raise SwtpmError(f"{PORT_BASE_ENV}={raw!r} is not a port number") from exc
    if not 1024 <= base <= 65535 - PORT_SPAN:
        raise SwtpmError(f"{PORT_BASE_ENV}={base} must be within 1024..{65535 - PORT_SPAN}")
    return base


_port_lock = threading.Lock()
_reserved: set[int] = set()
_next_port: list[int] = []


def _port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _reserve_pair() -> int:
    """Reserve a pair (P, P+1) free right now and not handed out in this process."""
    base = port_base()
    with _port_lock:
        if not _next_port or not base <= _next_port[0] < base + PORT_SPAN:
            _next_port[:] = [base]
        for _ in range(PORT_SPAN // 2):
            p = _next_port[0]
            _next_port[0] = base + (p + 2 - base) % PORT_SPAN
            if p in _reserved or p + 1 in _reserved:
                continue
            if _port_free(p) and _port_free(p + 1):
                _reserved.update((p, p + 1))
                return p
    raise SwtpmError(f"no free port pair in {base}..{base + PORT_SPAN}")


def _release_pair(port: int) -> None:
    with _port_lock:
        _reserved.discard(port)
        _reserved.discard(port + 1)


def _die_with_parent(parent_pid: int) -> None:  # runs in the child between fork and exec
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    if os.getppid() != parent_pid:  # the parent died before prctl took effect
        os._exit(1)


_live: dict[int, SwtpmInstance] = {}
_live_lock = threading.Lock()


def _stop_all() -> None:
    with _live_lock:
        instances = list(_live.values())
    for inst in instances:
        inst.stop()


atexit.register(_stop_all)


def live_pids() -> list[int]:
    """PIDs of swtpm processes this process started and has not stopped yet."""
    with _live_lock:
        return [i.pid for i in _live.values() if i.pid is not None]


class SwtpmInstance:
    """One ``swtpm socket`` process serving the TPM state in ``state_dir`` on loopback."""

    def __init__(self, state_dir: Path) -> None:
        self.state_dir = state_dir
        self.port: int | None = None
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int | None:
        """The swtpm process id while running."""
        return self._proc.pid if self._proc is not None else None

    @property
    def tcti(self) -> str:
        """The TCTI string tpm2-pytss connects with."""
        if self.port is None:
            raise SwtpmError(f"swtpm for {self.state_dir.name} is not running")
        return f"swtpm:host=127.0.0.1,port={self.port}"

    def start(self) -> SwtpmInstance:
        """Start on a free port pair (retrying on collision) and wait until it answers."""
        if self._proc is not None:
            return self
        last = ""
        for _ in range(START_ATTEMPTS):
            port = _reserve_pair()
            proc = self._spawn(port)
            ready, last = self._wait_ready(proc, port)
            if ready:
                self.port, self._proc = port, proc
                with _live_lock:
                    _live[id(self)] = self
                return self
            _terminate(proc)
            _release_pair(port)
        raise SwtpmError(f"swtpm for {self.state_dir.name} did not start after "
                         f"{START_ATTEMPTS} attempts: {last}")

    def _spawn(self, port: int) -> subprocess.Popen[bytes]:
        log = self.state_dir / "swtpm.log"
        cmd = [
            _tool("swtpm"), "socket", "--tpm2",
            "--server", f"type=tcp,port={port},bindaddr=127.0.0.1",
            "--ctrl", f"type=tcp,port={port + 1},bindaddr=127.0.0.1",
            "--tpmstate", f"dir={self.state_dir}",
            "--flags", "not-need-init,startup-clear",
            "--log", f"file={log},level=1",
        ]
        parent = os.getpid()
        preexec = ((lambda: _die_with_parent(parent))
                   if threading.current_thread() is threading.main_thread() else None)
        return subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE, preexec_fn=preexec, close_fds=True)

    @staticmethod
    def _wait_ready(proc: subprocess.Popen[bytes], port: int) -> tuple[bool, str]:
        deadline = time.monotonic() + READY_TIMEOUT_S
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                err = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
                return False, f"exited with {proc.returncode} on port {port}: {err.strip()}"
            if _ctrl_answers(port + 1):
                return True, ""
            time.sleep(0.005)
        return False, f"no answer on control port {port + 1} within {READY_TIMEOUT_S} s"

    def stop(self) -> None:
        """Stop the process (SIGTERM, then SIGKILL) and release its ports. Idempotent."""
        proc, port = self._proc, self.port
        self._proc, self.port = None, None
        with _live_lock:
            _live.pop(id(self), None)
        if proc is not None:
            _terminate(proc)
        if port is not None:
            _release_pair(port)

    def __enter__(self) -> SwtpmInstance:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def pss_kib(self) -> int | None:
        """Proportional set size of the process in KiB (``/proc/PID/smaps_rollup``)."""
        if self.pid is None:
            return None
        try:
            text = Path(f"/proc/{self.pid}/smaps_rollup").read_text()
        except OSError:
            return None
        for line in text.splitlines():
            if line.startswith("Pss:"):
                return int(line.split()[1])
        return None


def _ctrl_answers(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5) as s:
            s.sendall(struct.pack(">I", _CMD_GET_CAPABILITY))
            reply = s.recv(8)
    except OSError:
        return False
    return len(reply) >= 4 and struct.unpack(">I", reply[:4])[0] == 0


def _terminate(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=3)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=3)
    if proc.stderr is not None:
        with contextlib.suppress(OSError):
            proc.stderr.close()
