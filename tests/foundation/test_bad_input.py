"""Bad bytes and broken rows in every input reader, run as a user runs them: through the `factory`
command. Broken rows are quarantined with a reason and the line an editor shows, good rows go
through; a file that cannot be read at all is one line naming the file and the fix; a command that
fails on its input writes nothing, and a run that fails later leaves its manifest `failed`."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from factory.core.errors import FactoryError
from tests.clihelp import ROOT, cli, one_error

BINARY = b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\xff\xfe"


def seeds_jsonl(path: Path) -> Path:
    """Two good rows around a non-UTF-8 line, a line that is not JSON, and a row without text."""
    path.write_bytes(b'{"text": "The first good seed.", "id": "a"}\n'
                     b'{"text": "bad \xff byte"}\n'
                     b'{not json\n'
                     b'\n'
                     b'{"title": "no text here"}\n'
                     b'{"text": "The second good seed.", "id": "b"}\n')
    return path


def test_seeds_quarantine_bad_bytes_and_broken_rows_with_their_line(tmp_path):
    seeds_jsonl(tmp_path / "s.jsonl")
    (tmp_path / "s.yaml").write_text("source: jsonl\npath: s.jsonl\nname: t\nid_field: id\n")
    r = cli("seeds", "s.yaml", "--out", "out", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    m = json.loads((tmp_path / "out/manifest.json").read_text())
    assert m["status"] == "done" and m["counts"] == {"in": 5, "out": 2}
    assert m["dropped"] == {"bad_utf8": 1, "bad_json": 1, "missing_text": 1}
    good = pq.read_table(tmp_path / "out/data/train-seeds.parquet").to_pylist()
    assert sorted(g["text"] for g in good) == ["The first good seed.", "The second good seed."]
    bad = pq.read_table(tmp_path / "out/rejected/seeds.parquet").to_pylist()
    assert [(b["line"], b["reason"]) for b in bad] == [(2, "bad_utf8"), (3, "bad_json"), (5, "missing_text")]
    for b in bad:  # the label and the detail name the same line, and no other
        assert b["detail"].startswith(f"line {b['line']}: ") and "line 1 " not in b["detail"], b


def test_seeds_file_that_is_not_parquet_is_one_error_and_writes_nothing(tmp_path):
    (tmp_path / "s.parquet").write_bytes(BINARY)
    (tmp_path / "s.yaml").write_text("source: parquet\npath: s.parquet\n")
    one_error(cli("seeds", "s.yaml", "--out", "out", cwd=tmp_path), "s.parquet", "field 'path'", "not a readable parquet")
    assert not (tmp_path / "out").exists()


def test_seeds_with_no_usable_row_writes_nothing(tmp_path):
    (tmp_path / "s.jsonl").write_bytes(BINARY * 3)
    (tmp_path / "s.yaml").write_text("source: jsonl\npath: s.jsonl\n")
    one_error(cli("seeds", "s.yaml", "--out", "out", cwd=tmp_path), "s.jsonl", "field 'text'", "no usable rows")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("command", [["seeds", "{f}"], ["mix", "plan", "{f}"], ["recipes", "show", "{f}"],
                                     ["generate", "{f}"], ["tokenize", "{f}"], ["train", "{f}"],
                                     ["ablate", "{f}"], ["curate", "{f}"]])
def test_binary_config_file_is_one_error_naming_it(tmp_path, command):
    f = tmp_path / "conf.yaml"
    f.write_bytes(BINARY)
    line = one_error(cli(*[c.format(f=f) for c in command], cwd=tmp_path), str(f))
    assert "UTF-8" in line or "binary" in line


def test_binary_recipe_template_is_one_error_naming_it(tmp_path):
    (tmp_path / "t.j2").write_bytes(BINARY)
    (tmp_path / "r.yaml").write_text("name: r\ndescription: d\nkind: synthetic\nsteps:\n"
                                     "  - {name: write, user_file: t.j2}\n")
    one_error(cli("recipes", "show", str(tmp_path / "r.yaml")), "t.j2", "UTF-8")


def gen_config(tmp_path: Path, seeds: str, port: int) -> Path:
    f = tmp_path / "gen.yaml"
    f.write_text(f"seeds: {seeds}\nrecipes: [{ROOT / 'tests/generate/recipes/tiny_fact.yaml'}]\nshards: 2\n"
                 f"out: {tmp_path / 'gen'}\nteacher:\n  endpoints: [{{base_url: 'http://127.0.0.1:{port}/v1', model: m}}]\n"
                 "  retry: {max_attempts: 2, base_s: 0.05, max_s: 0.1}\n")
    return f


def test_generate_seed_rows_keep_their_line_numbers(tmp_path):
    from factory.generate import GenerateConfig, load_seeds

    seeds = seeds_jsonl(tmp_path / "s.jsonl")
    lines = seeds.read_bytes().splitlines()
    lines[0] = json.dumps({"text": "The first good seed.", "meta": {"seed_id": "a"}}).encode()
    lines[-1] = json.dumps({"text": "The second good seed.", "id": "b"}).encode()
    seeds.write_bytes(b"\n".join(lines) + b"\n")
    cfg = GenerateConfig(seeds=str(seeds), recipes=["distill"], teacher={"local_replicas": 1}, out=str(tmp_path / "o"))
    good, bad = load_seeds(cfg)
    assert [g["text"] for g in good] == ["The first good seed.", "The second good seed."]
    got = [(b["seed_id"], json.loads(b["detail"])["problem"]) for b in bad]
    assert [sid for sid, _ in got] == ["line 2", "line 3", "line 5"], got
    for sid, problem in got:
        assert problem.startswith(f"{sid}: ") and "line 1 " not in problem, (sid, problem)
    assert "not UTF-8" in got[0][1] and "not JSON" in got[1][1] and "text" in got[2][1]


def test_generate_on_bad_seeds_file_writes_nothing(tmp_path):
    (tmp_path / "s.parquet").write_bytes(BINARY)
    one_error(cli("generate", str(gen_config(tmp_path, str(tmp_path / "s.parquet"), 9))), "s.parquet")
    assert not (tmp_path / "gen").exists()


def test_generate_that_fails_after_start_leaves_manifest_failed(tmp_path):
    """No teacher at the endpoint: the run stops in one line and its folder says `failed`, not `running`."""
    from factory.teacher.server import free_port

    seeds = seeds_jsonl(tmp_path / "s.jsonl")
    r = cli("generate", str(gen_config(tmp_path, str(seeds), free_port())))
    one_error(r, "endpoints.0.base_url", "cannot reach")
    m = json.loads((tmp_path / "gen/manifest.json").read_text())
    assert m["status"] == "failed" and "cannot reach" in m["error"], m
    assert pq.read_table(tmp_path / "gen/rejected/seeds.parquet").num_rows == 3


def test_stage_dir_marks_a_failed_run_but_keeps_done_output(tmp_path):
    from factory.core.stage import StageDir

    with pytest.raises(FactoryError):
        with StageDir(str(tmp_path / "s"), "x", {"a": 1}):
            raise FactoryError("boom")
    assert StageDir.read_manifest(str(tmp_path / "s"))["status"] == "failed"
    with StageDir(str(tmp_path / "s"), "x", {"a": 1}) as st:  # a rerun finishes
        st.finish()
    with pytest.raises(FactoryError):
        with StageDir(str(tmp_path / "s"), "x", {"a": 1}):
            raise FactoryError("later")
    assert StageDir.read_manifest(str(tmp_path / "s"))["status"] == "done"


def test_generate_without_a_usable_seed_writes_nothing(tmp_path):
    (tmp_path / "s.jsonl").write_bytes(b'{"title": "no text"}\n\xff\xfe\n')
    one_error(cli("generate", str(gen_config(tmp_path, str(tmp_path / "s.jsonl"), 9))), "s.jsonl", "field 'seeds'",
              "no usable seed rows (2 malformed, first: line 1: missing or empty text)")
    assert not (tmp_path / "gen").exists()
