"""The kernel command line as Linux parses it (``services.verifier.policy.kernel_params``).

Each case is a behaviour of Linux's ``next_arg``/``parse_args`` (``lib/cmdline.c``,
``kernel/params.c``, ``lib/ctype.c``) that a plain whitespace split gets wrong.
"""

from __future__ import annotations

import hashlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from services.verifier.policy.kernel_params import (
    UnreadableCommandLine,
    forbidden_hit,
    kernel_parameters,
    load_options_forms,
    missing_required,
)


def _pairs(line: str) -> list[tuple[str, str | None]]:
    return [(p.name, p.value) for p in kernel_parameters(line)]


def test_quoted_values_keep_spaces_and_lose_their_quotes() -> None:
    assert _pairs('a b="x y" c') == [("a", None), ("b", "x y"), ("c", None)]
    assert _pairs("  ") == []


def test_a_leading_quote_is_dropped_from_the_parameter() -> None:
    assert _pairs('"init=/bin/sh"') == [("init", "/bin/sh")]
    assert _pairs('"init=/bin/sh quiet"') == [("init", "/bin/sh quiet")]


def test_dashes_and_underscores_are_the_same_in_names() -> None:
    params = kernel_parameters("ima-appraise=off")
    assert params[0].name == "ima_appraise"
    assert forbidden_hit(params, ("ima_appraise",)) is not None
    assert forbidden_hit(kernel_parameters("ima_appraise=off"), ("ima-appraise",)) is not None


def test_whitespace_is_linuxs_not_pythons() -> None:
    # 0xA0 separates parameters for Linux (isspace in lib/ctype.c); \x1c does not
    assert [p.name for p in kernel_parameters("a\x1clockdown=integrity")] == ["a\x1clockdown"]
    assert missing_required(kernel_parameters("a\x1clockdown=integrity"),
                            ("lockdown=integrity",)) == "lockdown=integrity"
    # a UTF-8 character whose bytes hold 0xA0 ("à" is C3 A0) is split there, as Linux does
    assert [p.name for p in kernel_parameters("x=\u00e0 y")][1:] == ["y"]
    assert [p.name for p in kernel_parameters("a\u00e0init=/bin/sh")][1:] == ["init"]


def test_lines_that_cannot_be_rebuilt_are_refused() -> None:
    with pytest.raises(UnreadableCommandLine, match="not UTF-8"):
        kernel_parameters("quiet\ufffdinit=/bin/sh")
    with pytest.raises(UnreadableCommandLine, match="surrogate"):
        kernel_parameters("quiet \ud800")


def test_a_bare_double_dash_hands_the_rest_to_init() -> None:
    params = kernel_parameters("ro -- lockdown=integrity")
    assert [p.for_init for p in params] == [False, True]
    assert missing_required(params, ("lockdown=integrity",)) == "lockdown=integrity"
    assert forbidden_hit(params, ("lockdown",)) is not None  # refusing it stays safe


def test_required_values_are_judged_by_the_last_one() -> None:
    assert missing_required(kernel_parameters("lockdown=integrity lockdown=none"),
                            ("lockdown=integrity",)) == "lockdown=integrity"
    assert missing_required(kernel_parameters("lockdown=none lockdown=integrity"),
                            ("lockdown=integrity",)) is None
    assert missing_required(kernel_parameters("ro quiet"), ("ro",)) is None


def test_options_past_the_kernels_limit_are_not_applied() -> None:
    line = "x=" + "a" * 3000 + " lockdown=integrity"
    assert missing_required(kernel_parameters(line), ("lockdown=integrity",)) is not None
    assert forbidden_hit(kernel_parameters(line), ("lockdown",)) is not None


def test_the_line_ends_at_a_nul() -> None:
    assert _pairs("ro\x00init=/bin/sh") == [("ro", None)]


def test_forbidden_key_value_matches_only_that_value() -> None:
    params = kernel_parameters("init=/sbin/init")
    assert forbidden_hit(params, ("init=/bin/sh",)) is None
    assert forbidden_hit(params, ("init",)) is not None


def test_load_options_forms_cover_grub_systemd_and_chainloader() -> None:
    line = "/vmlinuz root=/dev/sda1 ro"
    forms = load_options_forms(line)
    assert ("BOOT_IMAGE=" + line).encode("utf-16-le") + b"\x00\x00" in forms
    assert "root=/dev/sda1 ro".encode("utf-16-le") + b"\x00\x00" in forms
    assert line.encode("utf-16-le") in forms
    assert len({hashlib.sha256(f).digest() for f in forms}) == len(forms)


@given(st.text(max_size=200))
def test_any_line_parses_or_is_refused_by_name(line: str) -> None:
    try:
        params = kernel_parameters(line)
    except UnreadableCommandLine:
        return
    for p in params:
        assert p.name or p.value is not None
        assert "-" not in p.name
