"""The calculator computes arithmetic exactly and refuses everything else with one line (fuzzed)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lmlab.prompting.calculator import CalculatorError, calculate


@pytest.mark.parametrize("expr, want", [
    ("48213 * 9127", "440040051"), ("2 + 3 * 4", "14"), ("(2 + 3) * 4", "20"), ("-7 // 2", "-4"),
    ("7 % 3", "1"), ("2 ** 10", "1024"), ("2^10", "1024"), ("10 / 4", "2.5"), ("12 / 4", "3"),
    ("1 / 3", "0.333333333333"), ("3 × 4 ÷ 2", "6"), ("-(-5)", "5"), ("1.5 * 2", "3"), ("4 ** 0.5", "2"),
    ("123456789012345678901234567890 * 10", "1234567890123456789012345678900"),
])
def test_arithmetic_is_exact(expr, want):
    assert calculate(expr) == want


@pytest.mark.parametrize("expr, message", [
    ("__import__('os').system('ls')", "not arithmetic"), ("open('x')", "not arithmetic"),
    ("x + 1", "not arithmetic"), ("'a' * 3", "not arithmetic"), ("1 < 2", "not arithmetic"),
    ("[1, 2]", "not arithmetic"), ("lambda: 1", "not arithmetic"), ("True + 1", "not arithmetic"),
    ("1j * 2", "not arithmetic"), ("2 ** 10000", "exponent"), ("99999 ** 99", "more than"),
    ("10 ** 59 * 10 ** 59", "more than"), ("1 / 0", "division by zero"), ("5 % 0", "division by zero"),
    ("0 ** -1", "negative power"), ("(-8) ** (1 / 3)", "not a real number"), ("", "empty"),
    ("1 +", "cannot parse"), ("1" * 300, "longer than"), ("(" * 150 + "1" + ")" * 49, "cannot parse"),
])
def test_everything_else_is_refused_in_one_line(expr, message):
    with pytest.raises(CalculatorError, match=message) as e:
        calculate(expr)
    assert "\n" not in str(e.value)


@settings(max_examples=400, deadline=None)
@given(st.text(max_size=60))
def test_any_text_gives_a_number_or_a_calculator_error(text):
    try:
        out = calculate(text)
    except CalculatorError:
        return
    float(out)  # whatever it accepted is a number


@st.composite
def trees(draw, depth=3):
    """(expression text, its value) built together, so the reference never needs eval."""
    if depth == 0 or draw(st.booleans()):
        n = draw(st.integers(-10**6, 10**6))
        return (f"({n})" if n < 0 else str(n)), n
    (a, va), (b, vb) = draw(trees(depth - 1)), draw(trees(depth - 1))
    op = draw(st.sampled_from(["+", "-", "*"]))
    return f"({a} {op} {b})", {"+": va + vb, "-": va - vb, "*": va * vb}[op]


@settings(max_examples=300, deadline=None)
@given(trees())
def test_integer_expressions_equal_their_value(tree):
    text, value = tree
    assert calculate(text) == str(value)
