"""A calculator a model may call: arithmetic parsed safely, never ``eval``.

The expression is parsed by Python's own parser into a syntax tree (``ast.parse``, which runs
nothing) and evaluated by walking it, allowing only numbers, ``+ - * / // % **``, unary signs and
parentheses; anything else (names, calls, attributes, strings, comparisons, ...) is refused. Sizes
are bounded before they are computed: the text's length, every number's digits, the exponent of a
power and the digits of every intermediate result, so no input makes it slow or huge. Integers stay
exact; a division that is not exact gives a float, written with up to 12 significant digits.
"""

from __future__ import annotations

import ast
import math
import operator

from lmlab.errors import LmlabError

MAX_CHARS = 200  # expression length
MAX_DIGITS = 60  # digits of any number, given or computed
MAX_EXPONENT = 200  # of a power, before its size is checked


class CalculatorError(LmlabError):
    """An expression the calculator refuses or cannot compute (the message says why, for the model
    to read as the tool's result)."""


_BINARY = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv,
           ast.FloorDiv: operator.floordiv, ast.Mod: operator.mod, ast.Pow: operator.pow}
_UNARY = {ast.UAdd: operator.pos, ast.USub: operator.neg}


def _digits(x: int | float) -> int:
    if isinstance(x, float):
        return 0 if x == 0 or not math.isfinite(x) else max(1, int(math.log10(abs(x))) + 1)
    return len(str(abs(x)))


def _check_size(x: int | float) -> int | float:
    if isinstance(x, complex):  # (-8) ** (1 / 3)
        raise CalculatorError("the result is not a real number")
    if isinstance(x, float) and not math.isfinite(x):
        raise CalculatorError("the result is not a finite number")
    if _digits(x) > MAX_DIGITS:
        raise CalculatorError(f"a number has more than {MAX_DIGITS} digits; use smaller numbers")
    return x


def _power(base: int | float, exp: int | float) -> int | float:
    if abs(exp) > MAX_EXPONENT:
        raise CalculatorError(f"the exponent {exp} is too large (at most {MAX_EXPONENT})")
    if base != 0 and abs(base) != 1 and _digits(base) * abs(exp) > MAX_DIGITS + _digits(base):
        raise CalculatorError(f"the power has more than {MAX_DIGITS} digits; use smaller numbers")
    if base == 0 and exp < 0:
        raise CalculatorError("zero cannot be raised to a negative power")
    return base ** exp


def _eval(node: ast.AST) -> int | float:
    if isinstance(node, ast.Expression):
        return _eval(node.body)
    if isinstance(node, ast.Constant) and type(node.value) in (int, float):
        return _check_size(node.value)
    if isinstance(node, ast.UnaryOp) and type(node.op) in _UNARY:
        return _UNARY[type(node.op)](_eval(node.operand))
    if isinstance(node, ast.BinOp) and type(node.op) in _BINARY:
        left, right = _eval(node.left), _eval(node.right)
        if isinstance(node.op, ast.Pow):
            return _check_size(_power(left, right))
        if isinstance(node.op, (ast.Div, ast.FloorDiv, ast.Mod)) and right == 0:
            raise CalculatorError("division by zero")
        if isinstance(node.op, ast.Div) and isinstance(left, int) and isinstance(right, int) \
                and left % right == 0:
            return _check_size(left // right)  # exact: keep it an integer
        return _check_size(_BINARY[type(node.op)](left, right))
    raise CalculatorError(f"{type(node).__name__.lower()} is not arithmetic; use numbers, + - * / // % ** "
                          "and parentheses")


def format_number(x: int | float) -> str:
    """Return ``x`` as the calculator writes it: an integer exactly, a float with up to 12
    significant digits (``-0`` as ``0``)."""
    if isinstance(x, int):
        return str(x)
    if x == int(x) and abs(x) < 1e15:
        return str(int(x))
    return f"{x:.12g}"


def calculate(expression: str) -> str:
    """Return the value of the arithmetic ``expression`` as text (:func:`format_number`); raise
    :class:`CalculatorError` (one line) for anything that is not arithmetic, too large, or undefined."""
    if not isinstance(expression, str) or not expression.strip():
        raise CalculatorError("the expression is empty; give arithmetic such as 12 * (3 + 4)")
    if len(expression) > MAX_CHARS:
        raise CalculatorError(f"the expression is longer than {MAX_CHARS} characters")
    text = expression.replace("×", "*").replace("÷", "/").replace("^", "**").strip()
    try:
        tree = ast.parse(text, mode="eval")
    except (SyntaxError, ValueError) as e:
        raise CalculatorError(f"cannot parse {expression!r} as arithmetic ({type(e).__name__})") from None
    try:
        return format_number(_eval(tree))
    except RecursionError:
        raise CalculatorError("the expression is nested too deeply") from None
    except OverflowError:
        raise CalculatorError("the result is too large") from None
