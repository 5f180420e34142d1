"""The host agent's TPM side against real swtpm instances (no mocks).

Each test starts its own swtpm from a state provisioned once per session by swtpm_setup with
the session's private local CA; two states give two distinct TPM identities.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509
from tpm2_pytss.TSS2_Exception import TSS2_Exception

from services.agent.measured_boot import IMAGES, synthesise
from services.agent.swtpm import LocalCA, SwtpmInstance, clone_state, provision
from services.agent.tpm import AgentTpm, AgentTpmError
from services.collector.request_auth import (
    RequestClock,
    RequestUnauthenticated,
    request_binding,
    verify_request,
)
from services.tpm.credential import make_credential, pcr_selection, seal_to_ek
from services.tpm.eventlog import parse_event_log
from services.tpm.eventlog_builder import HASH_ALGS
from services.tpm.quote import decode_attest, verify_quote
from services.tpm.replay import verify_replay

pytestmark = pytest.mark.swtpm


@pytest.fixture(scope="session")
def ek_ca(tmp_path_factory: pytest.TempPathFactory) -> LocalCA:
    return LocalCA.create(tmp_path_factory.mktemp("agent-ek-ca"))


@pytest.fixture(scope="session")
def identities(ek_ca: LocalCA, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    base = tmp_path_factory.mktemp("agent-identities")
    return provision(base / "a", ek_ca), provision(base / "b", ek_ca)


def _start(template: Path, where: Path) -> SwtpmInstance:
    return SwtpmInstance(clone_state(template, where)).start()


@pytest.fixture
def tpm_a(identities: tuple[Path, Path], tmp_path: Path) -> Iterator[AgentTpm]:
    sw = _start(identities[0], tmp_path / "a")
    tpm = AgentTpm(sw.tcti, state_file=tmp_path / "a" / "agent.json")
    yield tpm
    tpm.close()
    sw.stop()


@pytest.fixture
def tpm_b(identities: tuple[Path, Path], tmp_path: Path) -> Iterator[AgentTpm]:
    sw = _start(identities[1], tmp_path / "b")
    tpm = AgentTpm(sw.tcti)
    yield tpm
    tpm.close()
    sw.stop()


def test_ek_certificates_are_distinct_and_chain_to_the_private_ca(
        ek_ca: LocalCA, tpm_a: AgentTpm, tpm_b: AgentTpm) -> None:
    root = x509.load_pem_x509_certificate(ek_ca.root_pem())
    issuer = x509.load_pem_x509_certificate(ek_ca.issuer_pem())
    issuer.verify_directly_issued_by(root)
    certs = []
    for tpm in (tpm_a, tpm_b):
        ek = tpm.ek()
        assert ek.certificate is not None
        cert = x509.load_der_x509_certificate(ek.certificate)
        cert.verify_directly_issued_by(issuer)
        certs.append(cert)
    assert tpm_a.ek().public != tpm_b.ek().public
    assert certs[0].serial_number != certs[1].serial_number
    assert tpm_a.active_banks() == ("sha1", "sha256")


@pytest.mark.parametrize(("ek_kind", "ak_kind"), [("rsa", "ecc"), ("ecc", "ecc"), ("rsa", "rsa")])
def test_enrolment_activation_succeeds_in_the_aks_tpm(tpm_a: AgentTpm, ek_kind: str,
                                                      ak_kind: str) -> None:
    ak = tpm_a.create_ak(ak_kind)  # type: ignore[arg-type]
    ek = tpm_a.ek(ek_kind)  # type: ignore[arg-type]
    secret = os.urandom(32)
    challenge = make_credential(ek.public, ak.public, secret)
    assert tpm_a.activate_credential(challenge, ek_kind=ek_kind) == secret  # type: ignore[arg-type]
    assert tpm_a.flush_transients() == 0  # nothing left behind (pitfalls 3/4)


def test_activation_fails_for_an_ak_not_in_the_eks_tpm(tpm_a: AgentTpm, tpm_b: AgentTpm) -> None:
    foreign_ak = tpm_b.create_ak("ecc")
    tpm_a.create_ak("ecc")
    challenge = make_credential(tpm_a.ek().public, foreign_ak.public, os.urandom(32))
    with pytest.raises(TSS2_Exception):  # pitfall 8: no specific RC
        tpm_a.activate_credential(challenge)
    # the EK of another TPM cannot open a challenge for our AK either
    own_ak = tpm_a.load_ak()
    wrong_ek = make_credential(tpm_b.ek().public, own_ak.public, os.urandom(32))
    with pytest.raises(TSS2_Exception):
        tpm_a.activate_credential(wrong_ek)


def _boot(tpm: AgentTpm, image: str) -> None:
    for event in synthesise(image, 1).events:
        if event.measured:
            tpm.extend(event.pcr, {HASH_ALGS[a][0]: d for a, d in event.digests})


def test_sealed_credential_opens_only_in_its_tpm_and_state(tpm_a: AgentTpm,
                                                           tpm_b: AgentTpm) -> None:
    _boot(tpm_a, "ubuntu-24.04-shim")
    tpm_a.create_ak("ecc")
    nonce = os.urandom(32)
    quote = tpm_a.quote(nonce, range(10))
    ak = tpm_a.load_ak()
    verified = verify_quote(ak.public, quote.attest, quote.signature, nonce=nonce,
                            pcr_values=quote.pcr_values)
    sel = pcr_selection({"sha256": range(10)})
    sealed = seal_to_ek(tpm_a.ek().public, b"host-credential-key", sel, verified.pcr_values)
    assert tpm_a.unseal(sealed) == b"host-credential-key"
    with pytest.raises(TSS2_Exception):
        tpm_b.unseal(sealed)
    tpm_a.extend(9, {"sha1": b"\x01" * 20, "sha256": b"\x01" * 32})
    with pytest.raises(TSS2_Exception):
        tpm_a.unseal(sealed)
    assert tpm_a.flush_transients() == 0


def test_policy_digest_equals_the_tpms_trial_session(tpm_a: AgentTpm) -> None:
    from tpm2_pytss.constants import ESYS_TR, TPM2_ALG, TPM2_SE
    from tpm2_pytss.types import TPML_PCR_SELECTION, TPMT_SYM_DEF

    from services.tpm.credential import policy_pcr_digest

    _boot(tpm_a, "fedora-40-shim")
    sel = pcr_selection({"sha256": range(8), "sha1": [0, 7]})
    values = tpm_a.pcr_read(sel.banks)
    ectx = tpm_a._ectx
    s = ectx.start_auth_session(ESYS_TR.NONE, ESYS_TR.NONE, TPM2_SE.TRIAL,
                                TPMT_SYM_DEF(algorithm=TPM2_ALG.NULL), TPM2_ALG.SHA256)
    try:
        ectx.policy_pcr(s, b"", TPML_PCR_SELECTION.parse(sel.spec()))
        tpm_digest = bytes(ectx.policy_get_digest(s))
    finally:
        ectx.flush_context(s)
    assert policy_pcr_digest(sel, values) == tpm_digest


@pytest.mark.parametrize("image", list(IMAGES))
def test_synthesised_log_replays_to_a_verified_quote(tpm_a: AgentTpm, image: str) -> None:
    _boot(tpm_a, image)
    ak = tpm_a.create_ak("ecc")
    nonce = os.urandom(32)
    quote = tpm_a.quote(nonce, [*range(10), 12, 13, 14])
    assert [b for b, _ in quote.selection] == ["sha1", "sha256"]  # every active bank
    verified = verify_quote(ak.public, quote.attest, quote.signature, nonce=nonce,
                            pcr_values=quote.pcr_values)
    result = verify_replay(parse_event_log(synthesise(image, 1).log_bytes()),
                           verified.pcr_values)
    assert set(result.banks) == {"sha1", "sha256"}
    assert result.applied_quirks == ()


def test_a_quote_covers_exactly_the_selection_bank_by_bank(tpm_a: AgentTpm) -> None:
    """What a challenge names is what is quoted and reported: per bank, nothing more."""
    _boot(tpm_a, "ubuntu-24.04-shim")
    ak = tpm_a.create_ak("ecc")
    nonce = os.urandom(32)
    selection = (("sha256", tuple(range(15))), ("sha1", (0, 7)))
    quote = tpm_a.quote(nonce, selection=selection)
    assert decode_attest(quote.attest).selection == selection == quote.selection
    assert {b: sorted(v) for b, v in quote.pcr_values.items()} == {
        "sha256": list(range(15)), "sha1": [0, 7]}
    verify_quote(ak.public, quote.attest, quote.signature, nonce=nonce,
                 pcr_values=quote.pcr_values)
    for bad in ((("sha256", (0,)), ("sha256", (1,))), (("sm3", (0,)),), (("sha256", (24,)),),
                (("sha256", ()),), ()):
        with pytest.raises(AgentTpmError):
            tpm_a.quote(nonce, selection=bad)
    with pytest.raises(AgentTpmError):
        tpm_a.quote(nonce, range(8), selection=selection)


def test_the_request_signature_binds_host_and_request(tpm_a: AgentTpm) -> None:
    """``sign_request`` is a quote whose extraData is the request binding; the collector's
    check accepts it once, for that host and request id, and not again."""
    ak = tpm_a.create_ak("ecc")
    attest, signature = tpm_a.sign_request(request_binding("web-042", "ask-1"))
    assert decode_attest(attest).extra_data == request_binding("web-042", "ask-1")
    def check(host: str, rid: str, auth: tuple[bytes, bytes],
              last: RequestClock | None) -> RequestClock:
        return verify_request(ak.public, host, rid, auth[0], auth[1], last=last,
                              max_attest_bytes=2048, max_signature_bytes=1024).clock

    first = check("web-042", "ask-1", (attest, signature), None)
    for host, rid, last in (("web-042", "ask-2", None), ("web-043", "ask-1", None),
                            ("web-042", "ask-1", first)):
        with pytest.raises(RequestUnauthenticated):
            check(host, rid, (attest, signature), last)
    later = tpm_a.sign_request(request_binding("web-042", "ask-2"))
    assert check("web-042", "ask-2", later, first) > first


def test_ak_survives_agent_and_tpm_restart(identities: tuple[Path, Path], tmp_path: Path) -> None:
    state = clone_state(identities[0], tmp_path / "r")
    sw = SwtpmInstance(state).start()
    try:
        with AgentTpm(sw.tcti, state_file=state / "agent.json") as tpm:
            ak = tpm.create_ak("ecc")
        sw.stop()
        sw.start()  # a reboot: PCRs reset, persistent EK and the AK blobs survive
        with AgentTpm(sw.tcti, state_file=state / "agent.json") as tpm:
            assert tpm.load_ak() == ak
            nonce = os.urandom(32)
            q = tpm.quote(nonce, range(8))
            verify_quote(ak.public, q.attest, q.signature, nonce=nonce, pcr_values=q.pcr_values)
    finally:
        sw.stop()


def test_swtpm_dies_with_its_parent(identities: tuple[Path, Path], tmp_path: Path) -> None:
    """A parent killed with SIGKILL (no atexit) leaves no swtpm behind: PR_SET_PDEATHSIG."""
    state = clone_state(identities[0], tmp_path / "orphan")
    script = textwrap.dedent(f"""
        import sys, time
        from pathlib import Path
        from services.agent.swtpm import SwtpmInstance
        sw = SwtpmInstance(Path({str(state)!r})).start()
        print(sw.pid, flush=True)
        time.sleep(60)
    """)
    root = Path(__file__).resolve().parents[2]
    child = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True,
                             cwd=root)
    assert child.stdout is not None
    swtpm_pid = int(child.stdout.readline())
    assert Path(f"/proc/{swtpm_pid}").exists()
    child.send_signal(signal.SIGKILL)
    child.wait(timeout=10)
    deadline = time.monotonic() + 5
    while Path(f"/proc/{swtpm_pid}").exists() and time.monotonic() < deadline:
        time.sleep(0.05)
        # a zombie until init reaps it counts as gone
        stat = Path(f"/proc/{swtpm_pid}/stat")
        if stat.exists() and ") Z" in stat.read_text():
            break
    alive = Path(f"/proc/{swtpm_pid}/stat")
    assert not alive.exists() or ") Z" in alive.read_text()


def test_port_collision_is_retried(identities: tuple[Path, Path], tmp_path: Path,
                                   monkeypatch: pytest.MonkeyPatch) -> None:
    import socket

    from services.agent import swtpm as swtpm_mod

    sw1 = _start(identities[0], tmp_path / "p1")
    try:
        assert sw1.port is not None
        # a foreign listener on the next pair's server port: the next instance must skip it
        blocker = socket.socket()
        blocker.bind(("127.0.0.1", sw1.port + 2))
        blocker.listen()
        monkeypatch.setenv(swtpm_mod.PORT_BASE_ENV, str(sw1.port))
        sw2 = _start(identities[1], tmp_path / "p2")
        try:
            assert sw2.port not in (sw1.port, sw1.port + 2)
            with AgentTpm(sw2.tcti) as tpm:
                assert tpm.active_banks()
        finally:
            sw2.stop()
            blocker.close()
    finally:
        sw1.stop()
    assert shutil.which("swtpm")
