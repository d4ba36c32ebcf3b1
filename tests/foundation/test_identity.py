"""A stage's identity is the content of what decides its output: an edited recipe or tokenizer
makes a rerun into the same folder refuse ("another config"), never silently keep old output; a
recipe template that uses an undefined variable is refused before any request."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from factory.core.errors import FactoryError
from tests.clihelp import cli, one_error

RECIPE = "name: tiny\ndescription: d\nkind: synthetic\nsampling: {{max_tokens: 8}}\nsteps:\n  - name: fact\n    user: \"{user}\"\n"


def setup(tmp_path: Path, user: str = "One sentence about {{ title }}: {{ text }}") -> tuple[Path, Path]:
    from factory.teacher.server import free_port

    (tmp_path / "s.jsonl").write_text(json.dumps({"text": "A seed about rivers.", "id": "river"}) + "\n")
    recipe = tmp_path / "tiny.yaml"
    recipe.write_text(RECIPE.format(user=user))
    gen = tmp_path / "gen.yaml"  # nobody listens at the endpoint: a run stops at the start-up probe
    gen.write_text(f"seeds: {tmp_path / 's.jsonl'}\nrecipes: [{recipe}]\nshards: 1\nout: {tmp_path / 'gen'}\n"
                   f"teacher:\n  endpoints: [{{base_url: 'http://127.0.0.1:{free_port()}/v1', model: m}}]\n"
                   "  retry: {max_attempts: 1}\n")
    return recipe, gen


def test_edited_recipe_is_a_changed_config(tmp_path):
    recipe, gen = setup(tmp_path)
    one_error(cli("generate", str(gen)), "cannot reach")  # the folder is claimed for this recipe
    first = json.loads((tmp_path / "gen/manifest.json").read_text())
    one_error(cli("generate", str(gen)), "cannot reach")  # the same recipe: not refused
    recipe.write_text(RECIPE.format(user="Two sentences about {{ title }}: {{ text }}"))
    line = one_error(cli("generate", str(gen)), str(tmp_path / "gen"), "another config", "new output folder")
    assert first["config_hash"] in line
    assert json.loads((tmp_path / "gen/manifest.json").read_text())["config_hash"] == first["config_hash"]


def test_edited_template_file_changes_the_recipe_hash(tmp_path):
    from factory.recipes import load_recipe

    (tmp_path / "t.j2").write_text("About {{ title }}.")
    (tmp_path / "r.yaml").write_text("name: r\ndescription: d\nkind: synthetic\nsteps:\n  - {name: a, user_file: t.j2}\n")
    before = load_recipe(str(tmp_path / "r.yaml")).content_sha
    assert load_recipe(str(tmp_path / "r.yaml")).content_sha == before
    (tmp_path / "t.j2").write_text("About {{ title }}!")
    assert load_recipe(str(tmp_path / "r.yaml")).content_sha != before


def test_undefined_template_variable_is_refused_before_any_request(tmp_path):
    recipe, gen = setup(tmp_path, user="About {{ title }} for {{ audience }}")
    line = one_error(cli("generate", str(gen)), str(recipe), "field 'steps[fact].user'", "audience", "variables:")
    assert "cannot reach" not in line  # refused before the endpoint is even asked
    assert not (tmp_path / "gen").exists()
    one_error(cli("recipes", "show", str(recipe)), str(recipe), "field 'steps[fact].user'", "audience")


def test_later_steps_and_output_template_see_earlier_steps(tmp_path):
    from factory.recipes import load_recipe
    from factory.seeds.sources import wiki_rows

    (tmp_path / "r.yaml").write_text(
        "name: r\ndescription: d\nkind: synthetic\nvariables: {style: ['plain {{ topic }}']}\nsteps:\n"
        "  - {name: draft, user: 'Write {{ style }} about {{ title }}'}\n"
        "  - {name: fix, user: 'Fix {{ draft.split()[0] }} {% for w in draft %}{{ w }}{% endfor %}'}\n"
        "output: {template: '{{ draft }} {{ fix }} {{ verdicts }}'}\n")
    r = load_recipe(str(tmp_path / "r.yaml"))
    r.check_templates(wiki_rows(1)[0])
    (tmp_path / "r.yaml").write_text(
        "name: r\ndescription: d\nkind: synthetic\nsteps:\n  - {name: draft, user: 'Write about {{ title }}'}\n"
        "output: {template: '{{ draft }} {{ later }}'}\n")
    with pytest.raises(FactoryError, match="later") as e:
        load_recipe(str(tmp_path / "r.yaml")).check_templates(wiki_rows(1)[0])
    assert e.value.field == "output.template"


def test_builtin_recipes_render_against_their_sample_seed():
    from factory.cli.recipes import _seed
    from factory.recipes import list_recipes

    for r in list_recipes():
        r.check_templates(_seed(r, None))


def test_edited_tokenizer_file_is_a_changed_config(tmp_path):
    from factory.mix import tokenize
    from factory.seeds import sources as seeds

    seeds.run(seeds.SeedsConfig(n=40, out=str(tmp_path / "seeds")))
    src = {"web": {"path": str(tmp_path / "seeds")}}
    made = tokenize.run(tokenize.TokenizeConfig(sources=src, tokenizer={"train": {"vocab_size": 300}},
                                                out=str(tmp_path / "t1")))
    assert made["status"] == "done"
    tok = tmp_path / "tokenizer.json"
    tok.write_bytes((tmp_path / "t1/tokenizer.json").read_bytes())
    cfg = tokenize.TokenizeConfig(sources=src, tokenizer={"path": str(tok)}, out=str(tmp_path / "t2"))
    assert tokenize.run(cfg)["status"] == "done"
    assert tokenize.run(cfg)["status"] == "done"  # the same file: a rerun is fine
    edited = json.loads(tok.read_text())
    edited["model"]["vocab"]["zzz-new"] = len(edited["model"]["vocab"])
    tok.write_text(json.dumps(edited))
    with pytest.raises(FactoryError, match="another config"):
        tokenize.run(cfg)


def test_tokenize_warns_about_a_source_with_no_documents(tmp_path):
    (tmp_path / "s.jsonl").write_text("".join(json.dumps({"text": f"Seed number {i} about rivers and hills."}) + "\n"
                                              for i in range(30)))
    (tmp_path / "s.yaml").write_text("source: jsonl\npath: s.jsonl\n")
    assert cli("seeds", "s.yaml", "--out", "seeds", cwd=tmp_path).returncode == 0
    r = cli("tokenize", "--source", "web=seeds", "--source", "rewrite=seeds:rewrite", "--vocab", "300", "--out", "tok",
            cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    out = " ".join((r.stdout + r.stderr).split())
    assert "warning: source 'rewrite' has 0 documents of kind rewrite in seeds" in out and "fix:" in out
    assert "source 'web'" not in out


def test_edited_benchmark_file_is_a_changed_curation_config(tmp_path):
    """Decontamination reads the benchmark files: editing one makes a rerun into the same folder refuse."""
    from factory.core.schema import make_doc
    from factory.core.stage import StageDir
    from factory.curate import load, run

    src = StageDir(str(tmp_path / "gen"), "gen", {"n": 3})
    src.write_docs("part-0.parquet", [make_doc(f"Document {i} says rivers carry water and silt to the sea, "
                                               f"slowly and for a long time, {i}.", "synthetic", "t") for i in range(3)])
    src.finish()
    bench = tmp_path / "bench.jsonl"
    bench.write_text(json.dumps({"question": "What do rivers carry to the sea?", "answer": "water and silt"}) + "\n")
    cfg = load(None, inputs=[str(tmp_path / "gen")], out=str(tmp_path / "cur"))
    cfg.decont.benchmarks = [str(bench)]
    cfg.filters.faithfulness.enabled = False
    first = run(cfg)
    assert first["status"] == "done" and run(cfg)["updated_at"] == first["updated_at"]  # the same files: skipped
    bench.write_text(json.dumps({"question": "What do glaciers carve out of rock?", "answer": "valleys"}) + "\n")
    with pytest.raises(FactoryError, match="another config"):
        run(cfg)
