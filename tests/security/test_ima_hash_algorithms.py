"""An IMA deny list cannot be dodged by the hash algorithm the host chooses (attackers (a), (d)).

A file hash in an IMA entry exists in one algorithm only, and the *host* picks it: the kernel's
``ima_hash=`` boot parameter (or the template: ``ima_template=ima`` is SHA-1) is part of the bad
boot the attacker configured. A denial can only match an entry of its own algorithm, so a policy
that denies a known-bad executable by its SHA-256 (the digest advisories publish) never matched
the same file measured as SHA-512, and with no allow-list the rule passed.

Attack: boot with ``ima_hash=sha512``; run the denied binary. IMA measures it (ima-ng,
``sha512:`` file hash) and extends PCR 10 (here: the swtpm, as the kernel would). Refused: an
entry hashed in an algorithm the deny list does not name cannot be confirmed, so the rule fails;
``policy lint`` says so. The SHA-256 measurement of the same file is refused as denied (the
control). Failed (the verdict was PASS) on the code before the fix.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from services.agent.fleet import HostSpec
from services.agent.measured_boot import synthesise
from services.tpm import ima as tpm_ima
from services.tpm import ima_replay
from services.verifier.policy.derive import derive_policy, golden_from_log
from services.verifier.policy.lint import findings
from tests.security.appraisal_support import appraised, in_force, lab

pytestmark = pytest.mark.swtpm

LINUX = "ubuntu-24.04-shim"
RULE = "policy.codeintegrity.ima_executables"
PAYLOAD = b"\x7fELF... the cryptominer every feed lists by SHA-256"


def _entry(path: str, alg: str, digest: bytes) -> bytes:
    from tests.unit.test_ima_formats import binary_entry, dng

    return binary_entry("ima-ng", [dng(alg, digest), path.encode() + b"\x00"])


def test_sha256_ima_denial_misses_the_same_file_measured_as_sha512(tmp_path: Path) -> None:
    denied = hashlib.sha256(PAYLOAD).hexdigest()
    text = derive_policy([golden_from_log(synthesise(LINUX, 0).log_bytes(), "golden")],
                         policy_id="ima-alg-tests", version="1").text
    text = text.replace("  codeIntegrity:\n", "  codeIntegrity:\n    ima:\n      executables:\n"
                        f"        denied:\n          - sha256: \"{denied}\"\n", 1)
    policy = in_force(text)
    assert any(f.field == "spec.codeIntegrity.ima.executables.denied" and "sha256" in f.message
               for f in findings(policy.prepared.policy))  # lint says how the list matches
    with lab(tmp_path, [HostSpec("rt2-ima256", LINUX), HostSpec("rt2-ima512", LINUX)]) as fleet:
        verdicts = {}
        for host, alg in ((fleet.host("rt2-ima256"), "sha256"), (fleet.host("rt2-ima512"), "sha512")):
            pcrs = host.quote(b"\x00" * 32, tuple(range(10))).quote.pcr_values["sha256"]
            aggregate = hashlib.sha256(b"".join(pcrs[i] for i in range(10))).digest()
            ima_log = (_entry("boot_aggregate", "sha256", aggregate)
                       + _entry("/usr/bin/xmrig", alg, hashlib.new(alg, PAYLOAD).digest()))
            for entry in tpm_ima.parse(ima_log).entries:  # what the kernel extended
                host.extend(10, {b: ima_replay.template_digest(entry, b) for b in ("sha1", "sha256")})
            verdicts[alg] = appraised(host, policy, label=alg, ima_log=ima_log)
    assert RULE in verdicts["sha256"].reason_ids, verdicts["sha256"].reason_ids  # the control
    assert RULE in verdicts["sha512"].reason_ids, ("a denied executable passed the IMA deny list "
                                                   "because the host measured it with SHA-512")
    (failure,) = [f for f in verdicts["sha512"].failures if f.rule_id == RULE]
    assert "cannot be confirmed" in failure.sentence, failure.sentence
