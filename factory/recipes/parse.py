"""Output parsers: turn a teacher's raw text into plain text, JSON checked against a schema,
fenced code, or question/answer pairs. A parser either returns a value or raises ParseError
with a short machine-readable reason, so a bad output is rejected with its cause, never guessed at.
"""

from __future__ import annotations

import ast
import json
import re
from typing import Any

PARSERS = ("text", "json", "code", "qa")


class ParseError(ValueError):
    """The output does not have the requested shape; `reason` is a short slug."""

    def __init__(self, reason: str, detail: str = ""):
        self.reason, self.detail = reason, detail
        super().__init__(f"{reason}: {detail}" if detail else reason)


def parse_text(raw: str) -> str:
    text = (raw or "").strip()
    if not text:
        raise ParseError("empty", "the teacher returned no text")
    return text


# JSON ----------------------------------------------------------------------------------------
_FENCE_JSON = re.compile(r"```(?:json)?\s*\n(.*?)(?:```|$)", re.S | re.I)


def _balanced(raw: str) -> str | None:
    """The first balanced {...} or [...] span, skipping brackets inside strings."""
    starts = [i for i in (raw.find("{"), raw.find("[")) if i >= 0]
    if not starts:
        return None
    start = min(starts)
    stack, in_str, esc = [], False, False
    pairs = {"{": "}", "[": "]"}
    for i in range(start, len(raw)):
        c = raw[i]
        if in_str:
            esc = (c == "\\") and not esc
            if c == '"' and not esc:
                in_str = False
            continue
        if c == '"':
            in_str = True
        elif c in pairs:
            stack.append(pairs[c])
        elif c in "}]":
            if not stack or stack.pop() != c:
                return None
            if not stack:
                return raw[start : i + 1]
    return None


def parse_json(raw: str, schema: dict[str, Any] | None = None) -> Any:
    """JSON from a fenced block or the first balanced object/array, validated against `schema`."""
    text = parse_text(raw)
    candidates = [m.group(1) for m in _FENCE_JSON.finditer(text)] + [text]
    value, last_err = None, "no JSON object or array found"
    for cand in candidates:
        span = _balanced(cand)
        if span is None:
            continue
        try:
            value = json.loads(span)
            break
        except json.JSONDecodeError as e:
            last_err = f"invalid JSON: {e.msg} at char {e.pos}"
    else:
        raise ParseError("bad_json", last_err)
    if schema:
        import jsonschema

        try:
            jsonschema.validate(value, schema)
        except jsonschema.ValidationError as e:
            path = "/".join(str(p) for p in e.absolute_path) or "(root)"
            raise ParseError("schema", f"{path}: {e.message[:200]}") from None
    return value


# fenced code ---------------------------------------------------------------------------------
_FENCE = re.compile(r"```[ \t]*([\w+#.-]*)[ \t]*\n(.*?)```", re.S)
_OPEN_FENCE = re.compile(r"```[ \t]*([\w+#.-]*)[ \t]*\n(.*)$", re.S)


def parse_code(raw: str, lang: str = "python", allow_unclosed: bool = True) -> str:
    """The first fenced block in `lang` (or untagged); Python code must also parse.

    An unclosed final fence (output cut at max_tokens) is accepted when `allow_unclosed`, but
    Python must still compile, so a truncated function is rejected as `syntax`.
    """
    text = parse_text(raw)
    blocks = [(t.lower(), body) for t, body in _FENCE.findall(text)]
    if not blocks and allow_unclosed:
        m = _OPEN_FENCE.search(text)
        if m:
            blocks = [(m.group(1).lower(), m.group(2))]
    if not blocks:
        raise ParseError("no_code_block", "no ``` fenced block in the output")
    aliases = {"python": {"python", "py", "python3", ""}}.get(lang, {lang, ""})
    chosen = next((b for t, b in blocks if t in aliases), None)
    if chosen is None:
        raise ParseError("wrong_language", f"fenced blocks are {sorted({t for t, _ in blocks})}, not {lang}")
    code = chosen.strip("\n")
    if not code.strip():
        raise ParseError("empty_code", "the code block is empty")
    if lang == "python":
        try:
            ast.parse(code)
        except SyntaxError as e:
            raise ParseError("syntax", f"line {e.lineno}: {e.msg}") from None
    return code


# question / answer pairs ---------------------------------------------------------------------
_QA = re.compile(
    r"(?:^|\n)\s*(?:\d+[.)]\s*)?(?:\*\*)?(?:Q|Question)\s*\d*\s*[:.](?:\*\*)?\s*(?P<q>.+?)\s*"
    r"\n\s*(?:\*\*)?(?:A|Answer)\s*\d*\s*[:.](?:\*\*)?\s*(?P<a>.+?)"
    r"(?=\n\s*(?:\d+[.)]\s*)?(?:\*\*)?(?:Q|Question)\s*\d*\s*[:.]|\Z)",
    re.S | re.I,
)


def parse_qa(raw: str, min_pairs: int = 1) -> list[dict[str, str]]:
    """`Q:`/`A:` (or `Question:`/`Answer:`, optionally numbered or bold) pairs, in order."""
    text = parse_text(raw)
    pairs = []
    for m in _QA.finditer(text):
        q, a = " ".join(m.group("q").split()), " ".join(m.group("a").split())
        if q and a:
            pairs.append({"question": q, "answer": a})
    if len(pairs) < min_pairs:
        raise ParseError("no_qa_pairs", f"found {len(pairs)} Q/A pairs, need {min_pairs}")
    return pairs


def format_qa(pairs: list[dict[str, str]]) -> str:
    return "\n\n".join(f"Question: {p['question']}\nAnswer: {p['answer']}" for p in pairs)


def parse(kind: str, raw: str, *, schema: dict | None = None, lang: str = "python", min_pairs: int = 1) -> Any:
    if kind == "text":
        return parse_text(raw)
    if kind == "json":
        return parse_json(raw, schema)
    if kind == "code":
        return parse_code(raw, lang)
    if kind == "qa":
        return parse_qa(raw, min_pairs)
    raise ValueError(f"unknown parser {kind!r}; choose one of {PARSERS}")


def render(kind: str, value: Any, lang: str = "python") -> str:
    """The document text for a parsed value, when no output template is given."""
    if kind == "json":
        return json.dumps(value, indent=2, ensure_ascii=False)
    if kind == "code":
        return f"```{lang}\n{value}\n```"
    if kind == "qa":
        return format_qa(value)
    return str(value)
