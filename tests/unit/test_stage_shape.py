"""Every stage has the same shape (``docs/design/layout.md``): ``config.py`` (one frozen config
with ``from_env``), ``core.py`` (``decide(inp, state, cfg) -> Decision``, pure) and a thin
``stage.py`` that only binds the config into the core. Read from the source, so a fifth way of
wiring a stage fails here before a reader meets it.
"""

from __future__ import annotations

import ast
import dataclasses
import importlib
import inspect
from pathlib import Path

import pytest

from services.runtime.stage import Decision, InputRecord, Stage, StateView

SERVICES = Path(__file__).parents[2] / "services"
STAGES = ("collector", "verifier", "issuer", "incidents")
CONFIG_CLASS = {"collector": "CollectorConfig", "verifier": "VerifierConfig",
                "issuer": "IssuerConfig", "incidents": "IncidentsConfig"}
SHELL_FUNCTIONS = ["stage_from_config", "build_stage"]
MAX_STAGE_LINES = 50
"""Lines of ``stage.py`` after its docstring."""

# The edges a decision may not reach for itself: they come in through the config (time from the
# record, randomness as ``cfg.random_bytes``, keys and the CA as capabilities).
IMPURE_CALLS = frozenset({
    ("os", "getenv"), ("time", "time"), ("time", "monotonic"), ("time", "time_ns"),
    ("datetime", "now"), ("datetime", "utcnow"), ("datetime", "today"), ("uuid", "uuid1"),
    ("uuid", "uuid4"), ("secrets", "token_bytes"), ("secrets", "token_hex"),
    ("os", "urandom"), ("random", "random"), ("random", "randbytes"),
})
IMPURE_MODULES = frozenset({"aiokafka", "random", "secrets", "socket", "subprocess"})
CAPABILITIES = {"issuer": frozenset({"sealing", "ca", "ca_pkcs11"})}
"""Modules a core reaches only through a capability its config carries (``cfg.seal``,
``cfg.new_key``, the CA): they may draw randomness and read keys; the core never calls them."""


BACKSTOPS = {("verifier/policy/cel.py", "time.monotonic"):
             "a wall-clock backstop behind the CEL step budget, which decides the outcome"}
"""Named exceptions: (module, call) -> why it cannot change a decision."""


def _tree(path: Path) -> ast.Module:
    return ast.parse(path.read_text(), str(path))


def _module_files(stage: str, name: str) -> list[Path]:
    single = SERVICES / stage / f"{name}.py"
    return [single] if single.exists() else sorted((SERVICES / stage / name).rglob("*.py"))


def _decision_modules(stage: str) -> list[Path]:
    """``core.py`` and every module of its own package it imports, transitively (a
    subpackage whole), but not ``config.py``: reading the environment is its job."""
    package, seen, todo = f"services.{stage}", set(), ["core"]
    while todo:
        name = todo.pop()
        if name in seen or name in CAPABILITIES.get(stage, ()) or name == "config":
            continue
        seen.add(name)
        for path in _module_files(stage, name):
            for node in ast.walk(_tree(path)):
                if isinstance(node, ast.ImportFrom) and node.module:
                    if node.module.startswith(package + "."):
                        todo.append(node.module.removeprefix(package + ".").split(".")[0])
                    elif node.module == package:
                        todo += [a.name for a in node.names]
    return [path for name in sorted(seen) for path in _module_files(stage, name)]


@pytest.mark.parametrize("stage", STAGES)
def test_config_is_one_frozen_value_built_from_the_environment(stage: str) -> None:
    config = importlib.import_module(f"services.{stage}.config")
    cls = getattr(config, CONFIG_CLASS[stage])
    assert dataclasses.is_dataclass(cls) and cls.__dataclass_params__.frozen  # type: ignore[attr-defined]
    assert isinstance(inspect.getattr_static(cls, "from_env"), classmethod)


@pytest.mark.parametrize("stage", STAGES)
def test_core_decides_one_input_against_state_and_config(stage: str) -> None:
    core = importlib.import_module(f"services.{stage}.core")
    config = importlib.import_module(f"services.{stage}.config")
    sig = inspect.signature(core.decide, eval_str=True)
    assert list(sig.parameters) == ["inp", "state", "cfg"]
    assert [p.annotation for p in sig.parameters.values()] == [
        InputRecord, StateView, getattr(config, CONFIG_CLASS[stage])]
    assert sig.return_annotation is Decision
    assert isinstance(core.INPUT_SUBJECTS, frozenset) and core.INPUT_SUBJECTS


@pytest.mark.parametrize("stage", STAGES)
def test_decision_modules_reach_no_clock_randomness_environment_or_kafka(stage: str) -> None:
    found = []
    for path in _decision_modules(stage):
        for node in ast.walk(_tree(path)):
            if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name):
                where = (path.relative_to(SERVICES).as_posix(), f"{node.value.id}.{node.attr}")
                if where in BACKSTOPS:
                    continue
                if (node.value.id, node.attr) in IMPURE_CALLS or (
                        node.value.id == "os" and node.attr == "environ"):
                    found.append(f"{path.name}:{node.lineno} {node.value.id}.{node.attr}")
            elif isinstance(node, ast.Import | ast.ImportFrom):
                names = ([node.module or ""] if isinstance(node, ast.ImportFrom)
                         else [a.name for a in node.names])
                found += [f"{path.name}:{node.lineno} import {n}" for n in names
                          if n.split(".")[0] in IMPURE_MODULES]
    assert not found, f"services/{stage}: impure decision code: {found}"


@pytest.mark.parametrize("stage", STAGES)
def test_stage_module_only_binds_the_config_into_the_core(stage: str) -> None:
    path = SERVICES / stage / "stage.py"
    tree = _tree(path)
    functions = [n for n in tree.body if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef)]
    assert [f.name for f in functions] == SHELL_FUNCTIONS
    assert not [n for n in tree.body if isinstance(n, ast.ClassDef | ast.Assign)]
    body_start = tree.body[1].lineno if isinstance(tree.body[0], ast.Expr) else 1
    assert len(path.read_text().splitlines()) - body_start < MAX_STAGE_LINES
    build = ast.unparse(functions[1].body[-1])
    assert build == f"return stage_from_config({CONFIG_CLASS[stage]}.from_env(env))"
    imported = {a.name for n in tree.body if isinstance(n, ast.ImportFrom)
                and n.module == f"services.{stage}.core" for a in n.names}
    assert {"decide", "INPUT_SUBJECTS"} <= imported


@pytest.mark.parametrize("stage", STAGES)
def test_stage_from_config_wires_decide_with_that_config(stage: str) -> None:
    module = importlib.import_module(f"services.{stage}.stage")
    source = inspect.getsource(module.stage_from_config)
    assert "decide=partial(decide, cfg=cfg)" in source
    assert f'name="{stage}"' in source
    assert inspect.signature(module.stage_from_config, eval_str=True).return_annotation is Stage
