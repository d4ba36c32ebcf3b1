"""Verifiers on crafted outputs: sympy math checks, code match, voting."""

import pytest
import sympy

from factory.recipes.verify import (
    MathParseError,
    answers_agree,
    check_code_match,
    check_math,
    check_python,
    check_vote,
    code_similarity,
    parse_math,
)


@pytest.mark.parametrize("s,val", [
    ("3 * 4", 12), ("2^10", 1024), ("1,000 + 5", 1005), ("\\frac{1}{2}", sympy.Rational(1, 2)),
    ("25%", sympy.Rational(1, 4)), ("sqrt(16)", 4), ("12 × 3", 36), ("7 − 2", 5),
])
def test_parse_math_values(s, val):
    assert sympy.simplify(parse_math(s) - val) == 0


@pytest.mark.parametrize("s", [
    "__import__('os').system('echo pwned')",  # never evaluated
    "open('x')", "2 ** 10 ** 10", "9 ** 99999", "factorial(100000)", "x.y", "[1, 2]", "lambda: 1", "1/0", "Paris",
])
def test_parse_math_refuses_unsafe_or_huge(s):
    with pytest.raises(MathParseError):
        parse_math(s)


def test_math_verified_and_rounding():
    v = check_math("Exercise: split 10 apples in 3.\nSolution: 10 / 3 = 3.33\n3.33 * 3 = 9.99\nAnswer: 10/3")
    assert v["ok"] and v["status"] == "verified" and v["equalities_checked"] == 2


def test_math_wrong_step_rejected():
    v = check_math("Solution: 12 * 3 = 38\nAnswer: 38")
    assert not v["ok"] and v["status"] == "wrong_step" and "12 * 3 = 38" in v["equalities_wrong"][0]


def test_math_answer_contradicts_itself():
    v = check_math("Solution: we add them.\nAnswer: 2 + 2 = 5")
    assert not v["ok"] and v["status"] == "answer_mismatch"


def test_math_answer_line_variants():
    assert check_math("so we get\nThe answer is: 36")["value"] == "36"
    assert check_math("**Final Answer:** 3*4 = 12")["status"] == "verified"
    assert check_math("**Final Answer:** 3*4 = 13")["status"] == "answer_mismatch"


def test_math_no_answer_or_words():
    assert check_math("No numbers here.")["status"] == "no_answer"
    assert check_math("No numbers here.")["ok"]
    assert not check_math("No numbers here.", require_answer=True)["ok"]
    v = check_math("Answer: Paris")
    assert v["ok"] and v["status"] == "not_math"


ORIGINAL = "def add(a, b):\n    \"\"\"Sum.\"\"\"\n    return a + b\n"
TESTS = "from solution import add\nassert add(2, 3) == 5\nassert add(-1, 1) == 0\n"


def test_code_match_by_tests():
    regen = "def add(x, y):\n    total = x\n    total += y\n    return total\n"
    v = check_code_match(regen, ORIGINAL, TESTS, threshold=0.99)
    assert v["ok"] and v["status"] == "tests_passed" and v["tests_passed"]


def test_code_match_failing_tests_but_similar():
    regen = "def add(a, b):\n    return a - b\n"
    v = check_code_match(regen, ORIGINAL, TESTS, threshold=0.6)
    assert not v["tests_passed"] and v["ok"] and v["status"] == "similar"


def test_code_mismatch_rejected():
    regen = "import math\n\ndef area(r):\n    for i in range(10):\n        print(i)\n    return math.pi * r * r\n"
    v = check_code_match(regen, ORIGINAL, TESTS, threshold=0.6)
    assert not v["ok"] and v["status"] == "mismatch" and v["tests"]["status"] == "error"


def test_code_match_loop_is_killed():
    v = check_code_match("def add(a, b):\n    while True:\n        pass\n", ORIGINAL, TESTS, threshold=1.0, timeout_s=1)
    assert not v["tests_passed"] and v["tests"]["status"] == "timeout"


def test_similarity_ignores_renames_and_docstrings():
    a = "def f(x):\n    '''doc'''\n    return x * 2 + 1\n"
    b = "def g(y):\n    return y * 2 + 1\n"
    assert code_similarity(a, b)["ast"] == 1.0
    assert code_similarity(a, "print('hi')")["ast"] < 0.5


def test_python_exec_verdict():
    assert check_python("print(sum(range(5)))")["ok"]
    v = check_python("import socket\nsocket.socket()")
    assert not v["ok"] and v["status"] == "network"


def test_vote_keeps_partial_agreement():
    v = check_vote(["Paris", "paris.", "The answer is Paris", "Lyon"])
    assert v["ok"] and v["status"] == "kept" and v["agreement"] == 0.75 and v["majority"] == "Paris"


def test_vote_drops_unanimous_and_scattered():
    assert check_vote(["42", "42.0", "The answer is 42", "42"])["status"] == "all_agree"
    assert check_vote(["red", "blue", "green", "1912"])["status"] == "none_agree"
    assert not check_vote([])["ok"]


def test_answers_agree():
    assert answers_agree("1,000", "1000")
    assert answers_agree("the Eiffel Tower", "Eiffel Tower.")
    assert not answers_agree("1000", "100")
    assert not answers_agree("", "")
