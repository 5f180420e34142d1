"""Fixtures shared by every test area.

The real broker is started by ``make test`` (scripts/run-tests.sh), which exports
``HOSTGATE_BOOTSTRAP``. Tests that need it take the ``kafka_bootstrap`` fixture; when the broker is
not reachable they fail with the fix, never skip silently.
"""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]


def corpus_path() -> Path:
    """The real event-log corpus: ``HOSTGATE_CORPUS`` or ``../shared/corpus`` beside the repo."""
    raw = os.environ.get("HOSTGATE_CORPUS", "../shared/corpus")
    path = Path(raw)
    return path if path.is_absolute() else (REPO_ROOT / path).resolve()


def corpus_manifest() -> dict[str, str]:
    """Entry id -> file of every log in the corpus. A missing corpus fails the test that asks
    (never a skip: a test that did not run must not read as passed)."""
    path = corpus_path()
    manifest = path / "manifest.json"
    if not manifest.is_file():
        pytest.fail(f"event-log corpus not found at {path} (set HOSTGATE_CORPUS)")
    return {e["id"]: e["file"] for e in json.loads(manifest.read_text())["entries"]}


def corpus_log(entry_id: str) -> bytes:
    """The bytes of corpus entry ``entry_id``."""
    return (corpus_path() / corpus_manifest()[entry_id]).read_bytes()


@pytest.fixture(scope="session")
def corpus_dir() -> Path:
    path = corpus_path()
    if not (path / "manifest.json").is_file():
        pytest.fail(f"event-log corpus not found at {path} (set HOSTGATE_CORPUS)")
    return path


@pytest.fixture(scope="session")
def kafka_bootstrap() -> str:
    bootstrap = os.environ.get("HOSTGATE_BOOTSTRAP", "127.0.0.1:19092")
    host, _, port = bootstrap.split(",")[0].rpartition(":")
    try:
        with socket.create_connection((host, int(port)), timeout=2):
            pass
    except OSError as exc:
        pytest.fail(
            f"no Kafka broker at {bootstrap} ({exc}); run the suite with `make test`, "
            "or start one with `hostgate kafka up`"
        )
    return bootstrap
