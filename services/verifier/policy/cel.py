"""Custom policy rules in CEL (Common Expression Language), evaluated with cel-python.

A custom rule is one CEL expression over the variable ``claims`` (the claims' JSON form) that
must evaluate to ``true``. Everything else — ``false``, a non-boolean, an evaluation error
(missing field, division by zero, type mismatch), an exhausted budget — is a *failed* rule with
the reason, never a crash: custom rules fail closed.

Bounds (cel-python 0.5 has no cost model or step limit of its own):

* expression size: at most :data:`MAX_EXPRESSION_CHARS` characters and
  :data:`MAX_EXPRESSION_NESTING` nested brackets, checked before the parser (lark) sees it;
* input size: the claims document is walked once, bounded in nodes, depth and string bytes,
  before it is converted to CEL values (:func:`prepare_input`);
* evaluation: a step budget — every Python call/return the interpreter makes while evaluating
  is counted by a profile hook (``sys.setprofile``) in a worker thread; past ``max_steps`` the
  worker is stopped with an asynchronous exception (details in :func:`evaluate_expression`).
  The count depends only on the expression and the input, so the outcome is deterministic; a
  wall-clock deadline (``deadline_seconds``) is a backstop.

Quirk: creating a ``celpy.Environment`` raises the interpreter's recursion limit to 2500 (a
celpy side effect); the environment is created once, lazily.
"""

from __future__ import annotations

import ctypes
import sys
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from functools import lru_cache
from types import FrameType
from typing import Any, Final

import celpy
from celpy import celtypes
from celpy.adapter import json_to_cel
from celpy.celparser import CELParseError
from celpy.evaluation import CELEvalError

from services.verifier.policy.errors import CelError

__all__ = [
    "DEFAULT_DEADLINE_SECONDS",
    "DEFAULT_MAX_STEPS",
    "MAX_EXPRESSION_CHARS",
    "MAX_EXPRESSION_NESTING",
    "CelInput",
    "CelOutcome",
    "CompiledExpression",
    "InputTooLarge",
    "compile_expression",
    "evaluate_expression",
    "prepare_input",
]

MAX_EXPRESSION_CHARS: Final = 4096
"""Longest custom-rule expression accepted."""
MAX_EXPRESSION_NESTING: Final = 32
"""Deepest bracket nesting in an expression (the parser recurses on it)."""
MAX_INPUT_NODES: Final = 200_000
"""Most JSON values in the claims document handed to CEL."""
MAX_INPUT_DEPTH: Final = 32
"""Deepest nesting of the claims document handed to CEL."""
MAX_INPUT_STRING_BYTES: Final = 16 * 1024 * 1024
"""Total characters of all strings in the claims document handed to CEL."""
DEFAULT_MAX_STEPS: Final = 2_000_000
"""Interpreter call/return events one rule may use (~2 s of celpy work on a slow core)."""
DEFAULT_DEADLINE_SECONDS: Final = 10.0
"""Wall-clock backstop per rule; the step budget normally stops a runaway rule first."""


class InputTooLarge(CelError):
    """The claims document exceeds the bounds CEL evaluation accepts."""


class _BudgetExceeded(BaseException):
    """Injected into the evaluation thread to stop it (BaseException: celpy catches
    ``Exception``; raised as a class, so it takes no arguments)."""


@lru_cache(maxsize=1)
def _environment() -> celpy.Environment:
    return celpy.Environment()


@dataclass(frozen=True)
class CompiledExpression:
    """A parsed CEL expression and its runnable program. Build with :func:`compile_expression`."""

    text: str
    program: Any


@dataclass(frozen=True)
class CelInput:
    """The claims document, size-checked and converted to CEL values once per evaluation."""

    activation: Mapping[str, Any]


@dataclass(frozen=True)
class CelOutcome:
    """What one expression gave: ``passed`` only when it evaluated to boolean ``true``."""

    passed: bool
    reason: str
    steps: int


def _nesting(text: str) -> int:
    depth = deepest = 0
    for ch in text:
        if ch in "([{":
            depth += 1
            deepest = max(deepest, depth)
        elif ch in ")]}":
            depth -= 1
    return deepest


def compile_expression(text: str) -> CompiledExpression:
    """Parse ``text`` once; raise :class:`CelError` if it is too big, too deep or not CEL."""
    if len(text) > MAX_EXPRESSION_CHARS:
        raise CelError(f"CEL expression is {len(text)} characters, at most {MAX_EXPRESSION_CHARS}")
    if not text.strip():
        raise CelError("CEL expression is empty")
    deepest = _nesting(text)
    if deepest > MAX_EXPRESSION_NESTING:
        raise CelError(f"CEL expression nests {deepest} brackets deep, "
                       f"at most {MAX_EXPRESSION_NESTING}")
    env = _environment()
    try:
        ast = env.compile(text)
        program = env.program(ast)
    except CELParseError as exc:
        first = str(exc).splitlines()[0] if str(exc) else "syntax error"
        raise CelError(f"CEL syntax error: {first}") from exc
    except RecursionError as exc:
        raise CelError("CEL expression is too deeply nested to parse") from exc
    except Exception as exc:  # celpy/lark raise assorted types for odd input
        raise CelError(f"CEL expression rejected: {type(exc).__name__}: {exc}") from exc
    return CompiledExpression(text=text, program=program)


def _check_size(value: Any) -> None:
    nodes = 0
    chars = 0
    stack: list[tuple[Any, int]] = [(value, 0)]
    while stack:
        item, depth = stack.pop()
        nodes += 1
        if nodes > MAX_INPUT_NODES:
            raise InputTooLarge(f"claims handed to CEL have more than {MAX_INPUT_NODES} values")
        if depth > MAX_INPUT_DEPTH:
            raise InputTooLarge(f"claims handed to CEL nest deeper than {MAX_INPUT_DEPTH}")
        if isinstance(item, Mapping):
            for k, v in item.items():
                if not isinstance(k, str):
                    raise InputTooLarge("claims handed to CEL have a non-string key")
                chars += len(k)
                stack.append((v, depth + 1))
        elif isinstance(item, list | tuple):
            stack.extend((v, depth + 1) for v in item)
        elif isinstance(item, str):
            chars += len(item)
        elif item is not None and not isinstance(item, bool | int | float):
            raise InputTooLarge(f"claims handed to CEL hold a {type(item).__name__}, not JSON")
        if chars > MAX_INPUT_STRING_BYTES:
            raise InputTooLarge(f"claims handed to CEL hold more than {MAX_INPUT_STRING_BYTES} "
                                "characters of strings")


def prepare_input(claims_json: Mapping[str, Any]) -> CelInput:
    """Bound and convert the claims document; raise :class:`InputTooLarge` past the bounds."""
    _check_size(claims_json)
    return CelInput(activation={"claims": json_to_cel(dict(claims_json))})


_POLL_SECONDS: Final = 0.002
_MAX_INJECTIONS: Final = 5000


def _inject(thread_id: int) -> None:
    """Raise :class:`_BudgetExceeded` asynchronously in the evaluation thread."""
    ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(thread_id),
                                               ctypes.py_object(_BudgetExceeded))


class _Worker(threading.Thread):
    """Evaluates one expression under a counting profile hook, in its own thread."""

    def __init__(self, expr: CompiledExpression, data: CelInput, max_steps: int) -> None:
        super().__init__(name="cel-eval", daemon=True)
        self.expr, self.data, self.max_steps = expr, data, max_steps
        self.steps = 0
        self.tripped = threading.Event()
        self.finished = False
        self.lock = threading.Lock()
        self.outcome: CelOutcome | None = None

    def _hook(self, frame: FrameType, event: str, arg: Any) -> None:
        self.steps += 1
        if self.steps > self.max_steps:
            self.tripped.set()
            sys.setprofile(None)  # stop counting; the caller now stops this thread

    def run(self) -> None:
        try:
            sys.setprofile(self._hook)
            self.outcome = _run(self.expr, self.data)
        except _BudgetExceeded:
            pass
        finally:
            while True:  # an injected exception may land here: repeat until marked finished
                try:
                    sys.setprofile(None)
                    with self.lock:
                        self.finished = True
                    break
                except _BudgetExceeded:
                    continue


def evaluate_expression(
    expr: CompiledExpression,
    data: CelInput,
    *,
    max_steps: int = DEFAULT_MAX_STEPS,
    deadline_seconds: float | None = DEFAULT_DEADLINE_SECONDS,
) -> CelOutcome:
    """Run ``expr`` over ``data`` within the step budget; never raises for a bad expression.

    The expression runs in a worker thread whose profile hook counts interpreter events and,
    past ``max_steps``, flags the budget as exhausted and unhooks itself; this thread then
    injects an asynchronous exception into the worker (``PyThreadState_SetAsyncExc``), again
    every few milliseconds until it stops. Raising from the hook itself is not enough: CPython
    uninstalls a hook that raises, and some C paths (type attribute lookups calling a Python
    ``__eq__``, as lark's ``Token`` has) swallow the exception, so a runaway expression would
    continue unbounded. Whether the budget tripped depends only on the step count, so the
    outcome is deterministic; ``deadline_seconds`` is a wall-clock backstop.
    """
    worker = _Worker(expr, data, max_steps)
    start = time.monotonic()
    worker.start()
    reason: str | None = None
    injections = 0
    while True:
        worker.join(_POLL_SECONDS)
        if not worker.is_alive():
            break
        if reason is None:
            if worker.tripped.is_set():
                reason = f"step budget of {max_steps} exhausted"
            elif deadline_seconds is not None and time.monotonic() - start > deadline_seconds:
                reason = f"deadline of {deadline_seconds} s passed"
        if reason is not None:
            with worker.lock:
                if not worker.finished and worker.ident is not None:
                    _inject(worker.ident)
            injections += 1
            if injections > _MAX_INJECTIONS:  # give up waiting; the daemon thread is lost
                break
    if worker.tripped.is_set():
        reason = f"step budget of {max_steps} exhausted"
    if reason is not None:
        return CelOutcome(False, f"evaluation stopped: {reason}", worker.steps)
    if worker.outcome is None:
        return CelOutcome(False, "evaluation stopped without a result", worker.steps)
    return CelOutcome(worker.outcome.passed, worker.outcome.reason, worker.steps)


def _run(expr: CompiledExpression, data: CelInput) -> CelOutcome:
    try:
        result = expr.program.evaluate(data.activation)
    except RecursionError:
        return CelOutcome(False, "evaluation error: expression recursed too deeply", 0)
    except CELEvalError as exc:
        return CelOutcome(False, f"evaluation error: {_eval_reason(exc)}", 0)
    except Exception as exc:  # celpy raises raw Python errors for some type mismatches
        return CelOutcome(False, f"evaluation error: {type(exc).__name__}: {exc}", 0)
    if isinstance(result, CELEvalError):
        return CelOutcome(False, f"evaluation error: {_eval_reason(result)}", 0)
    if isinstance(result, celtypes.BoolType):
        if bool(result):
            return CelOutcome(True, "expression is true", 0)
        return CelOutcome(False, "expression is false", 0)
    return CelOutcome(False, f"expression gave {type(result).__name__}, not a boolean", 0)


def _eval_reason(exc: CELEvalError) -> str:
    args = exc.args
    if args and isinstance(args[0], str):
        return args[0]
    return str(exc)
