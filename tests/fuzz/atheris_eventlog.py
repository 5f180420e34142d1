"""Long-running coverage-guided fuzzing of the event-log parser, replay and claims (not run in
CI).

    pip install atheris
    python tests/fuzz/atheris_eventlog.py [corpus_dir] -max_total_time=3600

Any exception outside ``services.tpm.errors`` is a finding. Seeds: pass a directory (e.g. a copy
of ../shared/corpus/logs); libFuzzer options pass through.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))


def test_one_input(data: bytes) -> None:
    """libFuzzer entry point: parse, replay and verify ``data``; only TPM errors are allowed."""
    from services.tpm import Limits, parse_event_log, replay, verify_replay
    from services.tpm.claims import extract_claims
    from services.tpm.errors import TpmError

    limits = Limits(max_log_bytes=1 << 20, max_events=10_000, max_event_data=1 << 16)
    try:
        log = parse_event_log(data, limits=limits)
        pcrs = replay(log)
        for bank, values in pcrs.items():
            verify_replay(log, {bank: dict(values)}, allowed_quirks=["ebs-invocation-success"])
        # Claims read every event's data: the decoders behind them get the input too, once as
        # a TPM log and once as a TDX CCEL log (their PCR/RTMR rules differ).
        verified = verify_replay(log, {bank: dict(v) for bank, v in pcrs.items()},
                                 allowed_quirks=["ebs-invocation-success"])
        for registers in ("tpm", "ccel"):
            extract_claims(verified, measurement_registers=registers)
    except TpmError:
        pass


def main() -> None:
    """Run atheris (imported here: it is an optional dependency)."""
    try:
        import atheris
    except ImportError:
        print("atheris is not installed: pip install atheris", file=sys.stderr)
        raise SystemExit(2) from None
    with atheris.instrument_imports():
        import services.tpm
        import services.tpm.claims  # noqa: F401  (readings and every event-data decoder)
    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
