"""Benchmark: IMA list parse+replay and quote verification, with baselines from the same run.

    .venv/bin/python bench/ima_quote.py [--seconds 2] [--json]

IMA: ``services.tpm.ima`` parse + template-hash check + replay (sha1, sha256) of the corpus's
largest list (I08, 5553 ASCII entries) and of J06 (binary). Baseline: the bare hashing floor,
``hashlib`` over the already-extracted template data into the same two banks (no parsing).

Quotes: ``verify_quote`` on the real GCE RSA-2048 quote (decode AK + attest + signature through
tpm2-pytss, RSASSA verify, nonce, pcrDigest over 24 PCRs). Baselines: ``tpm2_checkquote``
(tpm2-tools, signature + nonce only) as a subprocess per quote, and the floor of one bare
``cryptography`` RSA verify of the same signature.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

from cryptography.hazmat.primitives import hashes, serialization  # noqa: E402
from cryptography.hazmat.primitives.asymmetric import padding, rsa  # noqa: E402
from tpm2_pytss import TPMT_SIGNATURE  # noqa: E402

from services.tpm import ima, ima_replay, keys, quote  # noqa: E402
from tests.unit.test_ima_corpus import load  # noqa: E402
from tests.unit.test_quote_gce import decode_attestation, pb_files  # noqa: E402


def rate(fn: Callable[[], object], seconds: float) -> float:
    """Calls per second of ``fn`` over about ``seconds`` (after one warm-up call)."""
    fn()
    n, start = 0, time.perf_counter()
    while (elapsed := time.perf_counter() - start) < seconds:
        fn()
        n += 1
    return n / elapsed


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--seconds", type=float, default=2.0)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    out: dict[str, object] = {"machine": platform.platform(), "python": platform.python_version()}

    for entry_id, quirks in (("I08", ()), ("J06", (ima.QUIRK_TRUNCATED_TAIL,))):
        data = load(entry_id)
        lst = ima.parse(data, quirks=quirks)
        datas = [e.template_data for e in lst.entries]

        def ours(d: bytes = data, q: tuple[str, ...] = quirks) -> None:
            parsed = ima.parse(d, quirks=q)
            ima_replay.check_template_hashes(parsed)
            ima_replay.replay(parsed, ("sha1", "sha256"))

        def floor(ds: list[bytes] = datas) -> None:
            for bank in ("sha1", "sha256"):
                pcr = bytes(hashlib.new(bank).digest_size)
                for d in ds:
                    pcr = hashlib.new(bank, pcr + hashlib.new(bank, d).digest()).digest()

        r_ours, r_floor = rate(ours, args.seconds), rate(floor, args.seconds)
        out[f"ima_{entry_id}"] = {
            "entries": len(lst.entries),
            "lists_per_s": round(r_ours, 1),
            "entries_per_s": round(r_ours * len(lst.entries)),
            "hash_floor_lists_per_s": round(r_floor, 1),
            "ratio_vs_floor": round(r_floor / r_ours, 2),
        }

    att = decode_attestation(pb_files()[1].read_bytes())
    gq = att.quotes[1]
    nonce = b"\x90\x09"
    pcrs = {gq.bank: gq.pcrs}
    r_verify = rate(
        lambda: quote.verify_quote(
            att.ak_public, gq.attest, gq.signature, nonce=nonce, pcr_values=pcrs
        ),
        args.seconds,
    )
    key = keys.decode_public(att.ak_public).crypto_key()
    assert isinstance(key, rsa.RSAPublicKey)
    raw_sig = bytes(TPMT_SIGNATURE.unmarshal(gq.signature)[0].signature.rsassa.sig)
    r_floor = rate(
        lambda: key.verify(raw_sig, gq.attest, padding.PKCS1v15(), hashes.SHA256()), args.seconds
    )
    q: dict[str, object] = {
        "verify_quote_per_s": round(r_verify),
        "bare_rsa_verify_per_s": round(r_floor),
        "ratio_vs_bare_verify": round(r_floor / r_verify, 2),
    }
    tool = shutil.which("tpm2_checkquote")
    if tool:
        with tempfile.TemporaryDirectory() as tmp:
            t = Path(tmp)
            (t / "ak.pem").write_bytes(
                key.public_bytes(
                    serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
                )
            )
            (t / "attest").write_bytes(gq.attest)
            (t / "sig").write_bytes(gq.signature)
            cmd = [tool, "-u", str(t / "ak.pem"), "-m", str(t / "attest"), "-s", str(t / "sig"),
                   "-g", "sha256", "-q", nonce.hex()]  # fmt: skip

            def checkquote() -> None:
                subprocess.run(cmd, check=True, capture_output=True)

            r_tool = rate(checkquote, args.seconds)
        q["tpm2_checkquote_per_s"] = round(r_tool, 1)
        q["speedup_vs_tpm2_checkquote"] = round(r_verify / r_tool, 1)
    out["quote_gce_rsa2048"] = q

    if args.json:
        print(json.dumps(out, indent=2))
    else:
        for k, v in out.items():
            print(f"{k}: {v}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
