"""Recipe files: validation errors name the file and field; user recipes; deterministic variables."""

import pytest

from factory.core.errors import FactoryError
from factory.core.schema import make_doc
from factory.recipes import list_recipes, load_recipe, seed_context

BUILTINS = {"textbook", "qa_rewrite", "wiki_rewrite", "distill", "knowledge_list", "exercises", "discussion",
            "self_revision", "instruction_reversal", "qa_vote"}

MINIMAL = """
name: mine
description: a user recipe
kind: synthetic
variables: {tone: [calm, "excited about {{ title }}"]}
steps:
  - name: only
    user: "Write about {{ title }} in a {{ tone }} tone.\\n{{ text }}"
"""


def write(tmp_path, text, name="mine.yaml"):
    p = tmp_path / name
    p.write_text(text)
    return p


def test_builtins_load():
    names = {r.name for r in list_recipes()}
    assert BUILTINS <= names
    for r in list_recipes():
        assert r.spec.steps and r.spec.description


def test_user_recipe_by_path_and_dir(tmp_path):
    p = write(tmp_path, MINIMAL)
    assert load_recipe(p).name == "mine"
    assert load_recipe("mine", [tmp_path]).name == "mine"
    assert "mine" in {r.name for r in list_recipes([tmp_path])}


def test_builtin_wins_over_user_file_of_same_name(tmp_path):
    write(tmp_path, MINIMAL.replace("name: mine", "name: textbook"), "textbook.yaml")
    assert load_recipe("textbook", [tmp_path]).path.parent.name == "builtin"


def test_unknown_name_lists_known():
    with pytest.raises(FactoryError) as e:
        load_recipe("no_such_recipe")
    assert "textbook" in str(e.value)


@pytest.mark.parametrize("mutate,field", [
    (lambda s: s.replace("kind: synthetic", "kind: poetry"), "kind"),
    (lambda s: s.replace("description: a user recipe\n", ""), "description"),
    (lambda s: s + "colour: blue\n", "colour"),
    (lambda s: s.replace("    user:", "    sampling: {temprature: 0.5}\n    user:"), "steps.0.sampling"),
    (lambda s: s.replace("    user:", "    parse: xml\n    user:"), "steps.0.parse"),
    (lambda s: s.replace("tone: [calm", "tone: [").replace(', "excited about {{ title }}"', ""), "variables"),
    (lambda s: s + "output: {step: missing}\n", "(top level)"),
    (lambda s: s.replace("    user:", "    forbid: ['(unclosed']\n    user:"), "steps.0.forbid"),
    (lambda s: s.replace("    user:", "    repeat: 0\n    user:"), "steps.0.repeat"),
    (lambda s: s + "verify: [{type: oracle}]\n", "verify.0.type"),
])
def test_bad_fields_are_named(tmp_path, mutate, field):
    p = write(tmp_path, mutate(MINIMAL))
    with pytest.raises(FactoryError) as e:
        load_recipe(p)
    assert str(p) in str(e.value) and field in str(e.value)


def test_bad_template_syntax_named(tmp_path):
    p = write(tmp_path, MINIMAL.replace("{{ title }} in", "{{ title in"))
    with pytest.raises(FactoryError) as e:
        load_recipe(p)
    assert "steps.0.user" in str(e.value) and "template" in str(e.value)


def test_missing_template_file(tmp_path):
    p = write(tmp_path, MINIMAL.replace('    user: "Write', '    user_file: nope.j2\n    x: "Write'))
    with pytest.raises(FactoryError):
        load_recipe(p)
    p = write(tmp_path, MINIMAL.replace('    user: "Write about {{ title }} in a {{ tone }} tone.\\n{{ text }}"', "    user_file: nope.j2"))
    with pytest.raises(FactoryError) as e:
        load_recipe(p)
    assert "nope.j2" in str(e.value)


def test_variables_deterministic_and_seed_conditioned(tmp_path):
    r = load_recipe(write(tmp_path, MINIMAL))
    seed = make_doc("Text.", "web", "wiki", seed_id="wiki:Moon", extra={"title": "Moon", "topic": "space"})
    ctx = seed_context(seed)
    draws = [r.sample_variables("wiki:Moon", s, ctx)["tone"] for s in range(40)]
    assert draws == [load_recipe(write(tmp_path, MINIMAL)).sample_variables("wiki:Moon", s, ctx)["tone"] for s in range(40)]
    assert set(draws) == {"calm", "excited about Moon"}


def test_textbook_variables_spread():
    r = load_recipe("textbook")
    combos = {tuple(sorted(r.sample_variables(f"wiki:T{i}", 0).items())) for i in range(60)}
    assert len(combos) > 30  # audience x style x length x opening are really sampled


def test_overrides_apply_to_every_step():
    r = load_recipe("self_revision", max_tokens=48)
    assert all(r.step_sampling(s)["max_tokens"] == 48 for s in r.spec.steps)
    assert load_recipe("self_revision").step_sampling(r.spec.steps[1])["max_tokens"] == 250


def test_json_step_constrains_decoding():
    r = load_recipe("knowledge_list")
    assert r.step_sampling(r.spec.steps[0])["response_format"]["type"] == "json_object"


def test_a_max_tokens_too_small_for_a_length_takes_it_out_of_the_draw():
    full = load_recipe("textbook")  # its own max_tokens (700) holds 500 words
    assert full.lengths_that_fit() == {"length": [0, 1, 2]} and full.check_lengths("x", "f") is None
    drawn = {full.sample_variables(f"s{i}", 0)["length"] for i in range(60)}
    assert drawn == set(full.spec.variables["length"])
    capped = load_recipe("textbook", max_tokens=320)  # the demo's cap: 150 words (203 tokens) only
    assert capped.lengths_that_fit() == {"length": [0]}
    note = capped.check_lengths("x", "f")
    assert note == "recipe textbook: max_tokens 320 holds about 237 words, so length is drawn from ['about 150 words'] only"
    assert {capped.sample_variables(f"s{i}", 0)["length"] for i in range(60)} == {"about 150 words"}
    # every other variable is drawn as before: the same audience and style for the same seed and sample
    for i in range(20):
        a, b = full.sample_variables(f"s{i}", 0), capped.sample_variables(f"s{i}", 0)
        assert (a["audience"], a["style"]) == (b["audience"], b["style"])
    with pytest.raises(FactoryError) as e:
        load_recipe("textbook", max_tokens=64).check_lengths("gen.yaml", "recipe_sampling.max_tokens")
    assert e.value.where == "gen.yaml" and e.value.field == "recipe_sampling.max_tokens"
    assert "max_tokens 64 cannot hold" in str(e.value) and "at least 203" in str(e.value)


@pytest.mark.parametrize("block, says", [
    ("length_words: {size: [10, 20]}", "not one of the variables"),
    ("length_words: {tone: [10]}", "one positive word count per value"),
    ("length_words: {tone: [10, 0]}", "one positive word count per value"),
])
def test_bad_length_words_name_the_file_and_the_problem(tmp_path, block, says):
    p = write(tmp_path, MINIMAL + block + "\n")
    with pytest.raises(FactoryError) as e:
        load_recipe(p)
    assert str(p) in str(e.value) and says in str(e.value)


def test_recipes_try_refuses_a_length_it_cannot_hold_before_starting_a_teacher():
    import subprocess
    import sys

    r = subprocess.run([sys.executable, "-m", "factory.cli", "recipes", "try", "textbook", "--max-tokens", "64"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert "max_tokens 64 cannot hold the shortest length" in r.stderr and "'--max-tokens'" in r.stderr
