"""Parsers on crafted outputs, well-formed and malformed."""

import pytest

from factory.recipes.parse import ParseError, parse, parse_code, parse_json, parse_qa, render

SCHEMA = {"type": "object", "required": ["facts"],
          "properties": {"facts": {"type": "array", "minItems": 1, "items": {"type": "string"}}}}


def test_text_strips_and_rejects_empty():
    assert parse("text", "  hello \n") == "hello"
    with pytest.raises(ParseError) as e:
        parse("text", "  \n ")
    assert e.value.reason == "empty"


def test_json_from_fence_or_prose():
    assert parse_json('```json\n{"facts": ["a"]}\n```', SCHEMA) == {"facts": ["a"]}
    assert parse_json('Sure, here it is: {"facts": ["a {b}", "c"]} hope it helps', SCHEMA)["facts"] == ["a {b}", "c"]
    assert parse_json("[1, 2, 3]") == [1, 2, 3]


@pytest.mark.parametrize("raw,reason", [
    ('{"facts": ["a", "b"', "bad_json"),           # truncated
    ("{'facts': ['single quotes']}", "bad_json"),   # not JSON
    ("no json here at all", "bad_json"),
    ('{"facts": "not a list"}', "schema"),
    ('{"facts": []}', "schema"),
    ('{"other": 1}', "schema"),
])
def test_json_malformed(raw, reason):
    with pytest.raises(ParseError) as e:
        parse_json(raw, SCHEMA)
    assert e.value.reason == reason


def test_code_picks_python_block():
    raw = "Here:\n```text\nnot this\n```\n```python\ndef f(x):\n    return x + 1\n```\nDone."
    assert parse_code(raw) == "def f(x):\n    return x + 1"
    assert parse_code("```\nprint(1)\n```") == "print(1)"
    assert parse_code("```py\nx = 1\n") == "x = 1"  # unclosed fence at max_tokens, still valid


@pytest.mark.parametrize("raw,reason", [
    ("def f(x):\n    return x", "no_code_block"),        # no fence
    ("```javascript\nlet x = 1;\n```", "wrong_language"),
    ("```python\ndef f(x:\n```", "syntax"),
    ("```python\ndef f(x):\n    return [x,\n", "syntax"),  # truncated mid-function
    ("```python\n\n```", "empty_code"),
])
def test_code_malformed(raw, reason):
    with pytest.raises(ParseError) as e:
        parse_code(raw)
    assert e.value.reason == reason


def test_qa_pairs_formats():
    raw = ("1. Question: What is H2O?\nAnswer: Water.\n\n2. **Q:** Who wrote it?\n**A:** Someone\nwith two lines.\n"
           "Q3: Last one?\nA3: Yes.")
    pairs = parse_qa(raw)
    assert [p["question"] for p in pairs] == ["What is H2O?", "Who wrote it?", "Last one?"]
    assert pairs[1]["answer"] == "Someone with two lines."
    assert render("qa", pairs).startswith("Question: What is H2O?\nAnswer: Water.")


def test_qa_none_or_too_few():
    with pytest.raises(ParseError) as e:
        parse_qa("Just a paragraph without any pairs.")
    assert e.value.reason == "no_qa_pairs"
    with pytest.raises(ParseError):
        parse_qa("Q: one?\nA: yes", min_pairs=2)
