"""zram-generator's size expressions, evaluated as fasteval does (zramd/sizeexpr.py).

Cases come from zram-generator's man page (zram-generator.conf.md), its src/config.rs unit
tests and its tests/*/zram-generator.conf files; the operator-order cases from fasteval's
evaler.rs (the order ^ % / * - + and the direction of each)."""

from __future__ import annotations

import math

import pytest

from zramd import sizeexpr


def ev(text: str, ram: float = 100, **variables: float) -> float:
    return sizeexpr.parse(text).evaluate({"ram": ram, **variables})


@pytest.mark.parametrize(
    ("text", "ram", "mib"),
    [
        # src/config.rs tests
        ("0.5 * ram", 100, 50),
        ("500", 5000, 500),
        ("500k", 5000, 500_000),
        ("32G", 5000, 32e9),
        ("min(ram / 2, 4096)", 100, 50),
        ("min(ram / 2, 4096)", 10000, 4096),
        ("min(0.5 * ram, 4000)", 3000, 1500),
        # the man page's default curve: 1G -> 512M, 4G -> 2G, 8G -> 4G
        ("min(ram / 2, 4096)", 1024, 512),
        ("min(ram / 2, 4096)", 4096, 2048),
        ("min(ram / 2, 4096)", 8192, 4096),
        # the man page's piecewise-linear example: 1:1 to 4G, then 1:2, at most 32G
        ("min(min(ram, 4096) + max(ram - 4096, 0) / 2, 32 * 1024)", 1024, 1024),
        ("min(min(ram, 4096) + max(ram - 4096, 0) / 2, 32 * 1024)", 8192, 6144),
        ("min(min(ram, 4096) + max(ram - 4096, 0) / 2, 32 * 1024)", 61440, 32768),
        ("min(min(ram, 4096) + max(ram - 4096, 0) / 2, 32 * 1024)", 65536, 32768),
        # tests/*/zram-generator.conf
        ("ram * 0.75", 2000, 1500),
        ("min(0.75 * ram, 6000)", 16000, 6000),
        ("ram*0.8", 1000, 800),
        ("min(ram / 10, 2048)", 8000, 800),
        ("ram / 10", 8000, 800),
    ],
)
def test_zram_generator_cases(text: str, ram: float, mib: float) -> None:
    assert ev(text, ram) == pytest.approx(mib)


def test_set_variables_are_names() -> None:
    assert ev("0.5 * ram * two", 100, two=2) == 100  # src/config.rs, with set!two


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("1 - 2 + 3", 2),
        ("8 / 2 / 2", 2),  # / left to right
        ("2 - 3 - 4", -5),
        ("2 ^ 3 ^ 2", 512),  # ^ right to left
        ("-2 ^ 2", 4),  # unary minus binds tighter than ^ (fasteval)
        ("2 * 3 % 2", 2),  # % before *: 2 * (3 % 2)
        ("7 % 4 * 2", 6),
        ("12 / 3 * 2", 8),
        ("2 * (3 + 4)", 14),
        ("--3", 3),
        ("+-3", -3),
        ("2*-3", -6),
        ("-(2 + 3)", -5),
        (".5 + 1.", 1.5),
        ("1.5e3", 1500),
        ("2E-1", 0.2),
        ("3m", 0.003),
        ("3µ", 3e-6),
        ("1T", 1e12),
        ("-7 % 3", -1),  # Rust's f64 %: the sign of the dividend
    ],
)
def test_fasteval_operator_rules(text: str, value: float) -> None:
    assert ev(text) == pytest.approx(value)


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("abs(-3)", 3),
        ("int(-2.7)", -2),
        ("ceil(2.1)", 3),
        ("floor(-2.1)", -3),
        ("sign(-0.5)", -1),
        ("round(2.5)", 3),  # half away from zero, as Rust (Python's round() gives 2)
        ("round(-2.5)", -3),
        ("round(10, 25)", 30),  # round(modulus, x)
        ("log(1000)", 3),
        ("log(2, 8)", 3),
        ("e()", math.e),
        ("pi()", math.pi),
        ("sin(0)", 0),
        ("max(1, 5, 3)", 5),
        ("min(4)", 4),
        ("min (1, 2)", 1),  # a space before the parenthesis is allowed
        ("ram()", 100),  # fasteval: a name with empty parentheses is the variable
        ("max(1; 2)", 2),  # fasteval accepts ';' between arguments
    ],
)
def test_functions(text: str, value: float) -> None:
    assert ev(text) == pytest.approx(value)


def test_ieee_results_are_returned_not_raised() -> None:
    assert math.isnan(ev("(ram-100)/0"))  # src/config.rs: NaN
    assert ev("(ram-99)/0") == math.inf  # src/config.rs: +inf
    assert ev("-1/0") == -math.inf
    assert math.isnan(ev("5 % 0"))
    assert math.isnan(ev("(-8) ^ 0.5"))
    assert ev("10 ^ 400") == math.inf
    assert ev("log(0)") == -math.inf
    assert math.isnan(ev("log(-1)"))
    assert ev("max(log(-1), 3)") == 3  # Rust's max ignores NaN


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("", "empty expression"),
        ("min(ram / 2", "not closed"),
        ("(ram", "not closed"),
        ("ram)", "without a matching"),
        ("ram 2", "unexpected '2'"),
        ("ram / 2 # half of it", "comments go on a line of their own"),
        ("ram < 4096", "comparison and logical operators"),
        ("ram == 1", "comparison and logical operators"),
        ("ram && 1", "comparison and logical operators"),
        ("!ram", "logical operators"),
        ("[ram]", "use parentheses"),
        ("min[1, 2]", "call functions with parentheses"),
        ('print("x", ram)', "print()"),
        ('"ram"', "strings"),
        ("array(1,2)", "unknown function array()"),  # src/config.rs: Undefined("array")
        ("min()", "takes 1 or more"),
        ("round(1, 2, 3)", "takes 1 or 2"),
        ("pi(1)", "takes 0"),
        ("3.5.6", "is not a number"),
        ("2e", "is not a number"),
        ("min(1 2)", "expected ',' or ')'"),
        ("2 *", "the expression ends"),
        ("(" * 40 + "1" + ")" * 40, "nested more than 32 deep"),
        ("1+" * 2100 + "1", "longer than 4096"),
    ],
)
def test_parse_errors_say_what_and_where(text: str, problem: str) -> None:
    with pytest.raises(sizeexpr.ExprError, match=problem.replace("(", r"\(").replace(")", r"\)")):
        sizeexpr.parse(text)


def test_parse_error_gives_the_column() -> None:
    with pytest.raises(sizeexpr.ExprError, match=r"unexpected '\$' \(column 7\)"):
        sizeexpr.parse("ram / $")


def test_unknown_variable_names_the_known_ones() -> None:
    expr = sizeexpr.parse("ram * two")
    assert expr.variables == {"ram", "two"}
    with pytest.raises(sizeexpr.ExprError, match="unknown variable 'two'; known: ram"):
        expr.evaluate({"ram": 1})
    with pytest.raises(sizeexpr.ExprError, match=r"functions need parentheses: min\(...\)"):
        sizeexpr.parse("min").evaluate({"ram": 1})


def test_nan_and_inf_are_not_literals() -> None:
    """fasteval reads NaN and inf only with its alpha-keywords feature, which zram-generator
    does not enable: they are (unknown) names."""
    for text in ("NaN", "inf"):
        with pytest.raises(sizeexpr.ExprError, match="unknown variable"):
            ev(text)
