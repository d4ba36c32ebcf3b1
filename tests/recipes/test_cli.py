"""`factory recipes list | show | try | diversity`."""

import pytest
from typer.testing import CliRunner

from factory.cli import app
from factory.core.schema import make_doc
from factory.core.stage import StageDir

runner = CliRunner()


@pytest.fixture(autouse=True)
def wide_console():
    from factory.core.ui import console

    old = console.width
    console.width = 200  # names must not wrap in captured output
    yield
    console.width = old


def test_list_and_show():
    r = runner.invoke(app, ["recipes", "list"])
    assert r.exit_code == 0 and "textbook" in r.output and "instruction_reversal" in r.output
    r = runner.invoke(app, ["recipes", "show", "self_revision"])
    assert r.exit_code == 0 and "critique" in r.output and "rubric" in r.output.lower()
    r = runner.invoke(app, ["recipes", "show", "nope"])
    assert r.exit_code != 0


def test_user_dir_recipe_listed(tmp_path):
    (tmp_path / "mine.yaml").write_text("name: mine\ndescription: d\nkind: synthetic\nsteps: [{name: a, user: hi}]\n")
    r = runner.invoke(app, ["recipes", "list", "--recipes-dir", str(tmp_path)])
    assert r.exit_code == 0 and "mine" in r.output


def test_diversity_on_stage(tmp_path):
    st = StageDir(str(tmp_path / "gen"), "generate", {"x": 1})
    st.write_docs("part-0.parquet", [make_doc(f"Once upon a time {i} cats", "synthetic", "synthetic/textbook",
                                              recipe="textbook", seed_id=f"s{i}") for i in range(4)])
    r = runner.invoke(app, ["recipes", "diversity", str(tmp_path / "gen"), "--out", str(tmp_path / "d.json")])
    assert r.exit_code == 0 and "once upon a" in r.output and (tmp_path / "d.json").exists()


@pytest.mark.slow
def test_try_against_teacher(teacher):
    r = runner.invoke(app, ["recipes", "try", "distill", "--seed-index", "3", "--base-url", teacher.endpoints[0],
                            "--api-key-env", teacher.api_key_env, "--max-tokens", "32"])
    assert r.exit_code == 0, r.output
    assert "seed" in r.output and ("doc " in r.output or "rejected (" in r.output)
