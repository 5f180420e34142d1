"""Custom CEL rules: pass/fail, refused when oversized, fail closed on errors and budgets."""

from __future__ import annotations

import pytest

from services.verifier.policy import cel, ids
from services.verifier.policy.errors import CelError, PolicyError
from services.verifier.policy.evaluate import evaluate, prepare
from services.verifier.policy.loader import load_policy
from services.verifier.policy.results import Outcome
from tests.unit.policy_helpers import golden, rule_policy_text


def _rules(*pairs: tuple[str, str]) -> str:
    body = "  customRules:\n"
    for name, expr in pairs:
        body += f"    - name: {name}\n      expression: '{expr}'\n"
    return rule_policy_text(body)


def test_custom_rules_pass_and_fail_on_real_claims() -> None:
    doc = _rules(
        ("sb_on", "claims.secure_boot == true"),
        ("cos_kernel", 'claims.kernel_cmdlines.exists(c, c.contains("module.sig_enforce=1"))'),
        ("no_windows", "claims.windows == null"),
        ("three_apps", "size(claims.boot_applications) == 3"),
    )
    prepared = prepare(load_policy(doc))
    on = evaluate(prepared, golden("A36").subject())
    assert on.passed, [r.message for r in on.failed]
    off = evaluate(prepared, golden("A31").subject())  # SB off, another kernel, 2 apps
    assert sorted(r.rule_id for r in off.failed) == [
        ids.custom_rule_id("cos_kernel"), ids.custom_rule_id("sb_on"),
        ids.custom_rule_id("three_apps")]
    sb = off.result(ids.custom_rule_id("sb_on"))
    assert sb is not None and "expression is false" in sb.message


def test_expression_error_is_a_failed_rule_not_a_crash() -> None:
    doc = _rules(("missing", "claims.no_such_field == 1"), ("div", "1 / 0 == 1"),
                 ("not_bool", "claims.banks"), ("type", 'claims.banks + 1 == "x"'))
    verdict = evaluate(prepare(load_policy(doc)), golden("A36").subject())
    for name, needle in (("missing", "no_such_field"), ("div", "divide by zero"),
                         ("not_bool", "not a boolean"), ("type", "evaluation error")):
        r = verdict.result(ids.custom_rule_id(name))
        assert r is not None and r.outcome is Outcome.FAIL, name
        assert needle in r.message, r.message


def test_oversized_or_malformed_expression_refused_at_load_with_line() -> None:
    big = "true && " * 600 + "true"
    with pytest.raises(PolicyError) as info:
        load_policy(_rules(("ok", "true"), ("big", big)))
    assert info.value.line == 11 and "at most 4096" in info.value.message
    with pytest.raises(PolicyError) as syntax:
        load_policy(_rules(("bad", "claims.secure_boot ==")))
    assert syntax.value.line == 9 and "syntax" in syntax.value.message
    with pytest.raises(CelError):
        cel.compile_expression("(" * 40 + "1" + ")" * 40)


def test_oversized_input_is_refused_and_fails_closed() -> None:
    program = cel.compile_expression("true")
    with pytest.raises(cel.InputTooLarge):
        cel.prepare_input({"x": list(range(cel.MAX_INPUT_NODES + 1))})
    deep: dict[str, object] = {}
    node = deep
    for _ in range(cel.MAX_INPUT_DEPTH + 2):
        node["a"] = {}
        node = node["a"]  # type: ignore[assignment]
    with pytest.raises(cel.InputTooLarge):
        cel.prepare_input(deep)
    assert cel.evaluate_expression(program, cel.prepare_input({"x": [1]})).passed


def test_step_budget_stops_a_runaway_expression_deterministically() -> None:
    program = cel.compile_expression("claims.x.all(a, claims.x.all(b, claims.x.all(c, true)))")
    data = cel.prepare_input({"x": list(range(200))})
    first = cel.evaluate_expression(program, data, max_steps=50_000, deadline_seconds=None)
    again = cel.evaluate_expression(program, data, max_steps=50_000, deadline_seconds=None)
    assert not first.passed and "step budget of 50000 exhausted" in first.reason
    assert first == again
    small = cel.prepare_input({"x": [1, 2]})
    assert cel.evaluate_expression(program, small, max_steps=50_000).passed


def test_budget_exhaustion_in_policy_is_a_failed_rule() -> None:
    doc = _rules(("slow", "claims.key_databases.all(d, claims.key_databases.all(e, "
                          "d.entries.all(x, e.entries.all(y, x.digest != \"\" ))))"))
    verdict = evaluate(prepare(load_policy(doc)), golden("A39").subject(), cel_max_steps=20_000)
    r = verdict.result(ids.custom_rule_id("slow"))
    assert r is not None and r.outcome is Outcome.FAIL and "step budget" in r.message
