"""The package map of ``docs/design/layout.md``, enforced: which package may import which.

Read from the source (every ``import`` and ``from ... import`` in every module, also inside
functions), so a lazy import cannot slip past. Two rules matter most: ``services/tpm`` (the
evidence library, read like the spec) imports nothing of hostgate but the shared error root, and
no stage's decision core loads aiokafka (Kafka stays in the runtime's shell).
"""

from __future__ import annotations

import ast
import subprocess
import sys
from functools import cache
from pathlib import Path

import pytest

SERVICES = Path(__file__).parents[2] / "services"

ALLOWED: dict[str, frozenset[str]] = {
    "errors": frozenset(),
    # How a table reaches a terminal or a pipe: used by every package that prints one.
    "terminal": frozenset(),
    "tpm": frozenset({"errors", "terminal"}),
    "wire": frozenset({"errors", "tpm"}),
    "ekid": frozenset({"tpm"}),
    # EC signing keys in a PKCS#11 token: the issuer's CA and the verifier's EAR key.
    "pkcs11keys": frozenset({"errors"}),
    "runtime": frozenset({"errors", "terminal", "wire"}),
    # The collector reads the policy in force to ask for its coverage (services.verifier.policy
    # and policy_in_force: the policy language, not the verifier's stage).
    "collector": frozenset({"errors", "ekid", "runtime", "tpm", "wire", "verifier"}),
    "verifier": frozenset({"errors", "pkcs11keys", "runtime", "terminal", "tpm", "wire"}),
    "issuer": frozenset({"errors", "ekid", "pkcs11keys", "runtime", "tpm", "wire"}),
    "incidents": frozenset({"errors", "runtime", "wire"}),
    # The agent speaks the collector's signed-request contract and opens the issuer's sealed
    # credential (services.collector.request_auth, services.issuer.sealing and its errors).
    "agent": frozenset({"errors", "runtime", "terminal", "tpm", "wire", "collector", "issuer"}),
    "demo": frozenset({"errors", "runtime", "terminal", "tpm", "wire", "agent", "issuer",
                       "verifier", "collector", "incidents"}),
    "cli": frozenset({"errors", "runtime", "terminal", "tpm", "wire", "agent", "collector",
                      "verifier", "issuer", "incidents", "demo"}),
}
"""Package -> the other hostgate packages it may import."""

NARROW: dict[tuple[str, str], tuple[str, ...]] = {
    ("collector", "verifier"): ("services.verifier.policy", "services.verifier.policy_in_force"),
    ("agent", "collector"): ("services.collector.request_auth",),
    ("agent", "issuer"): ("services.issuer.sealing", "services.issuer.errors",
                          "services.issuer.extension", "services.issuer.certificates"),
}
"""Where an allowed edge may only reach named modules."""


def _package(path: Path) -> str:
    rel = path.relative_to(SERVICES)
    return rel.parts[0] if len(rel.parts) > 1 else rel.stem


@cache
def _imports() -> dict[Path, tuple[str, ...]]:
    out: dict[Path, tuple[str, ...]] = {}
    for path in sorted(SERVICES.rglob("*.py")):
        names: list[str] = []
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names.append(node.module)
            elif isinstance(node, ast.Import):
                names.extend(a.name for a in node.names)
        out[path] = tuple(names)
    return out


def test_every_package_is_on_the_map() -> None:
    assert {_package(p) for p in _imports() if p.name != "__init__.py"
            or p.parent != SERVICES} <= set(ALLOWED)


@pytest.mark.parametrize("package", sorted(ALLOWED))
def test_packages_import_only_what_the_map_allows(package: str) -> None:
    wrong = []
    for path, names in _imports().items():
        if _package(path) != package:
            continue
        for name in names:
            if name.startswith("tests"):
                wrong.append(f"{path.name}: {name} (product code never imports tests)")
            if not name.startswith("services."):
                continue
            target = name.split(".")[1]
            if target == package:
                continue
            if target not in ALLOWED[package]:
                wrong.append(f"{path.relative_to(SERVICES)}: {name}")
            narrow = NARROW.get((package, target))
            if narrow and not name.startswith(narrow):
                wrong.append(f"{path.relative_to(SERVICES)}: {name} (only {narrow})")
    assert wrong == []


@pytest.mark.parametrize("core", ["services.collector.core", "services.verifier.core",
                                  "services.issuer.core", "services.incidents.core",
                                  "services.tpm", "services.wire"])
def test_decision_cores_never_load_kafka(core: str) -> None:
    """Importing a core (and all it imports) loads no Kafka client: a fresh interpreter."""
    probe = (f"import sys, {core}; "
             "print(','.join(sorted(m for m in sys.modules if m.split('.')[0] == 'aiokafka')))")
    loaded = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                            check=True, cwd=SERVICES.parent).stdout.strip()
    assert loaded == ""
