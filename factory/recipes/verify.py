"""Verifiers: each turns a step's output into a verdict dict with `ok` and a `status`.

- python_exec: the code runs to exit 0 in the sandbox.
- sympy_answer: the final `Answer:` expression parses (safely: an AST whitelist, never eval) and
  agrees with itself, and every arithmetic equality in the worked solution holds.
- code_match: regenerated code passes the seed's tests, or is AST/token-similar to the original.
- vote: several independent answers; kept only when some but not all agree.
"""

from __future__ import annotations

import ast
import difflib
import io
import math
import re
import tokenize
from collections import Counter
from typing import Any

import sympy

from factory.recipes.sandbox import run_python

# safe math ----------------------------------------------------------------------------------
_FUNCS = {"sqrt": sympy.sqrt, "sin": sympy.sin, "cos": sympy.cos, "tan": sympy.tan, "log": sympy.log,
          "ln": sympy.log, "exp": sympy.exp, "abs": sympy.Abs, "factorial": sympy.factorial}
_CONSTS = {"pi": sympy.pi, "e": sympy.E, "π": sympy.pi}
_BINOPS = {ast.Add: lambda a, b: a + b, ast.Sub: lambda a, b: a - b, ast.Mult: lambda a, b: a * b,
           ast.Div: lambda a, b: a / b, ast.Pow: lambda a, b: a ** b, ast.Mod: lambda a, b: a % b}
MAX_EXPONENT = 1000
MAX_LEN = 200


class MathParseError(ValueError):
    pass


def _normalize(s: str) -> str:
    s = s.strip().strip("*$` ").rstrip(".")
    s = re.sub(r"\\frac\{([^{}]*)\}\{([^{}]*)\}", r"(\1)/(\2)", s)
    s = re.sub(r"\\sqrt\{([^{}]*)\}", r"sqrt(\1)", s)
    for a, b in (("\\cdot", "*"), ("\\times", "*"), ("×", "*"), ("·", "*"), ("÷", "/"), ("−", "-"),
                 ("^", "**"), ("\\pi", "pi"), ("\\left", ""), ("\\right", ""), ("\\(", ""), ("\\)", "")):
        s = s.replace(a, b)
    s = re.sub(r"(?<=\d),(?=\d{3}\b)", "", s)  # 1,000 -> 1000
    s = re.sub(r"(\d+(?:\.\d+)?)\s*%", r"(\1/100)", s)
    return s.strip()


def _build(node: ast.AST) -> Any:
    if isinstance(node, ast.Expression):
        return _build(node.body)
    if isinstance(node, ast.Constant) and isinstance(node.value, (int, float)) and not isinstance(node.value, bool):
        return sympy.nsimplify(node.value) if isinstance(node.value, float) else sympy.Integer(node.value)
    if isinstance(node, ast.Name):
        if node.id in _CONSTS:
            return _CONSTS[node.id]
        if len(node.id) == 1 and node.id.isalpha():
            return sympy.Symbol(node.id)
        raise MathParseError(f"unknown name {node.id!r}")
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)):
        v = _build(node.operand)
        return -v if isinstance(node.op, ast.USub) else v
    if isinstance(node, ast.BinOp) and type(node.op) in _BINOPS:
        a, b = _build(node.left), _build(node.right)
        if isinstance(node.op, ast.Pow) and (not b.is_number or abs(b) > MAX_EXPONENT or (a.is_number and abs(a) > 10**6 and abs(b) > 50)):
            raise MathParseError("exponent too large or symbolic")
        if isinstance(node.op, (ast.Div, ast.Mod)) and b == 0:
            raise MathParseError("division by zero")
        return _BINOPS[type(node.op)](a, b)
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in _FUNCS and len(node.args) == 1 and not node.keywords:
        arg = _build(node.args[0])
        if node.func.id == "factorial" and (not arg.is_number or abs(arg) > 500):
            raise MathParseError("factorial argument too large")
        return _FUNCS[node.func.id](arg)
    raise MathParseError(f"not allowed: {type(node).__name__}")


def parse_math(text: str) -> Any:
    """A sympy expression from a short arithmetic/algebra string, without eval."""
    s = _normalize(text)
    if not s or len(s) > MAX_LEN:
        raise MathParseError("empty or too long")
    try:
        tree = ast.parse(s, mode="eval")
    except SyntaxError:
        raise MathParseError(f"not an expression: {s!r}") from None
    return _build(tree)


def _close(a: Any, b: Any, rhs_text: str = "") -> bool:
    try:
        diff = sympy.simplify(a - b)
        if diff == 0:
            return True
        fa, fb = complex(sympy.N(a)), complex(sympy.N(b))
    except (TypeError, ValueError):
        return False
    decimals = len(rhs_text.split(".")[1]) if "." in rhs_text else 0
    tol = max(1e-9 * max(abs(fa), abs(fb), 1), 0.5 * 10 ** -decimals if decimals else 0)
    return abs(fa - fb) <= tol


_ANSWER = re.compile(r"(?im)^[\s*#>-]*(?:the\s+)?(?:final\s+)?answer(?:\s+is)?\s*\**\s*[:=]\s*\**\s*(.+?)\s*$")
_EQUALITY = re.compile(r"(?<![\w.])((?:\(?-?\d+(?:\.\d+)?\)?\s*[-+*/×÷^]\s*)+\(?-?\d+(?:\.\d+)?\)?)\s*=\s*(-?\d[\d,]*(?:\.\d+)?)(?![\w.]*\d)")


def check_math(text: str, require_answer: bool = False) -> dict[str, Any]:
    """Verdict on a worked solution: its arithmetic equalities and its final `Answer:`."""
    wrong, checked = [], 0
    for m in _EQUALITY.finditer(text):
        lhs_s, rhs_s = m.group(1), m.group(2).replace(",", "")
        try:
            lhs, rhs = parse_math(lhs_s), parse_math(rhs_s)
        except MathParseError:
            continue
        checked += 1
        if not _close(lhs, rhs, rhs_s):
            wrong.append(m.group(0)[:80])
    verdict: dict[str, Any] = {"equalities_checked": checked, "equalities_wrong": wrong}
    answers = _ANSWER.findall(text)
    if not answers:
        verdict.update(status="no_answer" if not wrong else "wrong_step", ok=not require_answer and not wrong)
        return verdict
    answer = answers[-1]
    verdict["answer"] = answer[:120]
    parts = [p for p in _normalize(answer).split("=") if p.strip()]
    try:
        values = [parse_math(p) for p in parts]
    except MathParseError as e:
        verdict.update(status="not_math" if not wrong else "wrong_step", ok=not wrong, detail=str(e)[:120])
        return verdict
    verdict["value"] = str(values[-1])[:80]
    if any(not _close(v, values[-1], parts[-1]) for v in values[:-1]):
        verdict.update(status="answer_mismatch", ok=False)
    elif wrong:
        verdict.update(status="wrong_step", ok=False)
    else:
        verdict.update(status="verified", ok=True)
    return verdict


# code ---------------------------------------------------------------------------------------
def _ast_shape(code: str) -> list[str]:
    """Node types with operators, names dropped: a shape that ignores renaming."""
    out = []
    for node in ast.walk(ast.parse(code)):
        if isinstance(node, (ast.Load, ast.Store, ast.Del)):
            continue
        tag = type(node).__name__
        if isinstance(node, (ast.BinOp, ast.UnaryOp, ast.BoolOp)):
            tag += ":" + type(node.op).__name__
        elif isinstance(node, ast.Compare):
            tag += ":" + ",".join(type(o).__name__ for o in node.ops)
        elif isinstance(node, ast.Constant):
            tag += ":" + repr(node.value)[:20]
        out.append(tag)
    return out


def _tokens(code: str) -> list[str]:
    skip = {tokenize.COMMENT, tokenize.NL, tokenize.NEWLINE, tokenize.INDENT, tokenize.DEDENT, tokenize.ENDMARKER}
    try:
        return [t.string for t in tokenize.generate_tokens(io.StringIO(code).readline) if t.type not in skip]
    except (tokenize.TokenError, IndentationError, SyntaxError):
        return code.split()


def _strip_docstrings(code: str) -> str:
    try:
        tree = ast.parse(code)
    except SyntaxError:
        return code
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef, ast.Module)) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant) and isinstance(first.value.value, str):
                node.body = node.body[1:] or [ast.Pass()]
    return ast.unparse(tree)


def code_similarity(a: str, b: str) -> dict[str, float]:
    """AST-shape and token similarity (difflib ratio, 0..1), docstrings and comments ignored."""
    a2, b2 = _strip_docstrings(a), _strip_docstrings(b)
    try:
        ast_sim = difflib.SequenceMatcher(None, _ast_shape(a2), _ast_shape(b2), autojunk=False).ratio()
    except SyntaxError:
        ast_sim = 0.0
    tok_sim = difflib.SequenceMatcher(None, _tokens(a2), _tokens(b2), autojunk=False).ratio()
    return {"ast": round(ast_sim, 4), "tokens": round(tok_sim, 4)}


def check_python(code: str, *, timeout_s: float = 5.0, memory_mb: int = 512, files: dict[str, str] | None = None) -> dict[str, Any]:
    r = run_python(code, files=files, timeout_s=timeout_s, memory_mb=memory_mb)
    v = r.verdict()
    v["status"] = r.reason
    return v


def check_code_match(code: str, original: str, tests: str | None, *, threshold: float = 0.6,
                     timeout_s: float = 5.0, memory_mb: int = 512) -> dict[str, Any]:
    """Kept when the seed's tests pass on `code` (as solution.py) or similarity >= threshold."""
    sim = code_similarity(code, original)
    verdict: dict[str, Any] = {"similarity": sim, "threshold": threshold, "tests_run": bool(tests)}
    passed = False
    if tests:
        r = run_python(tests, files={"solution.py": code}, timeout_s=timeout_s, memory_mb=memory_mb)
        passed = r.ok
        verdict["tests"] = {"status": r.reason, "stderr": r.stderr[-400:], "isolation": r.isolation}
    verdict["tests_passed"] = passed
    similar = max(sim.values()) >= threshold
    verdict["ok"] = passed or similar
    verdict["status"] = "tests_passed" if passed else ("similar" if similar else "mismatch")
    return verdict


# voting -------------------------------------------------------------------------------------
_ARTICLES = re.compile(r"\b(a|an|the)\b")
_LEADS = re.compile(r"^(the\s+)?(final\s+)?answer\s+(is|:)\s*|^answer\s*:\s*", re.I)


def normalize_answer(s: str) -> str:
    s = (s or "").strip().split("\n")[0]
    s = re.split(r"(?<=[a-z0-9)])[.!?;](?:\s|$)", s, maxsplit=1)[0]  # the first sentence
    s = _LEADS.sub("", s.strip().lower())
    s = re.sub(r"(?<=\d),(?=\d{3}\b)", "", s)
    s = re.sub(r"[^\w\s.\-/]", " ", s).strip(" .")
    s = _ARTICLES.sub(" ", s)
    return " ".join(s.split())


def _f1(a: str, b: str) -> float:
    ta, tb = a.split(), b.split()
    common = sum((Counter(ta) & Counter(tb)).values())
    if not common:
        return 0.0
    p, r = common / len(ta), common / len(tb)
    return 2 * p * r / (p + r)


def answers_agree(a: str, b: str, f1: float = 0.6) -> bool:
    na, nb = normalize_answer(a), normalize_answer(b)
    if not na or not nb:
        return False
    try:
        fa, fb = float(na.replace(",", "")), float(nb.replace(",", ""))
        return math.isclose(fa, fb, rel_tol=1e-6, abs_tol=1e-9)
    except ValueError:
        pass
    return na == nb or _f1(na, nb) >= f1


def check_vote(answers: list[str], min_agree: float = 0.0, max_agree: float = 1.0) -> dict[str, Any]:
    """Greedy clusters of agreeing answers; drop when all agree (too easy) or none do (too hard)."""
    clusters: list[list[int]] = []
    for i, a in enumerate(answers):
        for c in clusters:
            if answers_agree(answers[c[0]], a):
                c.append(i)
                break
        else:
            clusters.append([i])
    clusters.sort(key=len, reverse=True)
    n, top = len(answers), len(clusters[0]) if clusters else 0
    agreement = top / n if n else 0.0
    all_agree, none_agree = n > 0 and top == n, top <= 1
    ok = not all_agree and not none_agree and min_agree <= agreement <= max_agree
    status = "all_agree" if all_agree else "none_agree" if none_agree else "kept" if ok else "out_of_band"
    return {"ok": ok, "status": status, "agreement": round(agreement, 4), "n": n, "clusters": [len(c) for c in clusters],
            "majority": answers[clusters[0][0]].strip()[:300] if clusters else "",
            "answers": [normalize_answer(a)[:80] for a in answers]}
