"""The hosts an agent client speaks for (``services.agent.client.HostSide``).

* :class:`TpmHost`: a real host, its TPM through ``AgentTpm`` and its logs read from files (the
  kernel's securityfs by default).
* :class:`SimulatedHostSide`: a fleet-simulator host (``services.agent.fleet``), whose tamper
  profile applies inside its quote and log, or through the client's evidence hook
  (:attr:`SimulatedHostSide.hook`, ``services.agent.hooks``) for the protocol profiles.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from services.agent.client import AgentClientError, HostIdentity
from services.agent.hooks import EvidenceHook, hook_for
from services.agent.swtpm import PCR_BANKS
from services.agent.tpm import AkInfo, Quote, Selection
from services.tpm.credential import CredentialChallenge

if TYPE_CHECKING:
    from services.agent.fleet import SimulatedHost
    from services.agent.tpm import AgentTpm

__all__ = ["DEFAULT_BOOT_LOG", "DEFAULT_IMA_LOG", "SimulatedHostSide", "TpmHost"]

DEFAULT_BOOT_LOG = Path("/sys/kernel/security/tpm0/binary_bios_measurements")
DEFAULT_IMA_LOG = Path("/sys/kernel/security/ima/binary_runtime_measurements")


class TpmHost:
    """A real host: its TPM through ``AgentTpm`` (AK from the agent's state file) and its logs
    from files (the kernel's securityfs by default)."""

    def __init__(self, host_id: str, tpm: AgentTpm, *, boot_log: Path = DEFAULT_BOOT_LOG,
                 ima_log: Path | None = None, max_log_bytes: int = 8 * 1024 * 1024,
                 previous_ak: AkInfo | None = None) -> None:
        self._host_id = host_id
        self.tpm = tpm
        self.previous_ak = previous_ak
        """The AK enrolled before this enrolment (it signs an AK rotation), if any."""
        self.boot_log_path = boot_log
        self.ima_log_path = ima_log
        self.max_log_bytes = max_log_bytes

    @property
    def host_id(self) -> str:
        return self._host_id

    def identity(self) -> HostIdentity:
        ek = self.tpm.ek()
        return HostIdentity(ek.public, ek.certificate, self.tpm.load_ak().public)

    def banks(self) -> tuple[str, ...]:
        return self.tpm.active_banks()

    def activate(self, challenge: CredentialChallenge) -> bytes:
        return self.tpm.activate_credential(challenge)

    def quote(self, nonce: bytes, selection: Selection) -> Quote:
        return self.tpm.quote(nonce, selection=selection)

    def sign_request(self, binding: bytes) -> tuple[bytes, bytes]:
        return self.tpm.sign_request(binding)

    def sign_rotation(self, binding: bytes) -> tuple[bytes, bytes] | None:
        if self.previous_ak is None:
            return None
        return self.tpm.sign_request(binding, ak=self.previous_ak)

    def _read(self, path: Path) -> bytes:
        try:
            with path.open("rb") as f:
                data = f.read(self.max_log_bytes + 1)
        except OSError as exc:
            raise AgentClientError(f"cannot read {path}: {exc.strerror}") from exc
        if len(data) > self.max_log_bytes:
            raise AgentClientError(f"{path} is larger than {self.max_log_bytes} bytes")
        return data

    def boot_log(self) -> bytes:
        return self._read(self.boot_log_path)

    def ima_log(self) -> bytes | None:
        return None if self.ima_log_path is None else self._read(self.ima_log_path)


class SimulatedHostSide:
    """A fleet-simulator host. Profiles on the TPM output or the log apply inside the host's
    ``quote`` and log; protocol profiles (``replayed_nonce``, ``stale_quote``) do not: the host
    quotes the issued nonce honestly and the client applies them through its hook — build the
    client with ``hook=side.hook`` (``hook_for(tamper)``).

    ``speaks_as`` puts another host id on everything this host sends (its own TPM, EK and AK
    behind it): how a host with a certified TPM of its own borrows an enrolled host's id or
    floods it (``services.agent.attacks``)."""

    def __init__(self, sim: SimulatedHost, *, ak_public: bytes | None = None,
                 speaks_as: str | None = None) -> None:
        self.sim = sim
        self._ak_public = ak_public
        self._host_id = speaks_as or sim.host_id

    @property
    def host_id(self) -> str:
        return self._host_id

    def identity(self) -> HostIdentity:
        return HostIdentity(self.sim.ek_public, self.sim.ek_cert,
                            self._ak_public or self.sim.ak_public)

    def banks(self) -> tuple[str, ...]:
        return PCR_BANKS  # what swtpm_setup allocates for the fleet

    def activate(self, challenge: CredentialChallenge) -> bytes:
        return self.sim.activate(challenge)

    @property
    def hook(self) -> EvidenceHook | None:
        """The client-side hook of this host's tamper profile (None for most)."""
        return hook_for(self.sim.tamper)

    def quote(self, nonce: bytes, selection: Selection) -> Quote:
        return self.sim.quote(nonce, selection=selection, protocol_hooks=True).quote

    def sign_request(self, binding: bytes) -> tuple[bytes, bytes]:
        return self.sim.sign_request(binding)

    def sign_rotation(self, binding: bytes) -> tuple[bytes, bytes] | None:
        # A simulated host keeps one AK: enrolling again re-enrols that AK, vouched for by
        # itself. (On a first enrolment the collector does not look at the signature.)
        return self.sim.sign_request(binding)

    def boot_log(self) -> bytes:
        return self.sim.event_log

    def ima_log(self) -> bytes | None:
        return None
