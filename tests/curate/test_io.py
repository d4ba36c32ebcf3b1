"""Curation I/O: the reader shares the rows among ranks, by file when there are many files and by
rows when there are few (one seeds file must not leave 15 of 16 ranks idle), every row read once
with its id; the shared word tokenizer loads without torch, tokenizes as datatrove's does, and
tokenizes a repeated text once."""

from __future__ import annotations

import json
import subprocess
import sys

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from factory.core.stage import ROW_GROUP
from factory.curate.io import FILES_PER_RANK, doc_reader


def _files(tmp_path, sizes: list[int], with_ids: bool = True) -> list[str]:
    names = []
    for k, n in enumerate(sizes):
        cols = {"text": [f"document {k}.{i}" for i in range(n)]}
        if with_ids:
            cols["id"] = [f"f{k}-{i}" for i in range(n)]
        pq.write_table(pa.table(cols), tmp_path / f"part-{k}.parquet", row_group_size=ROW_GROUP)
        names.append(f"part-{k}.parquet")
    return names


def _shares(tmp_path, files: list[str], world: int) -> list[list[str]]:
    return [[d.id for d in doc_reader(files, str(tmp_path)).run(rank=r, world_size=world)] for r in range(world)]


@pytest.mark.parametrize("world", [1, 2, 3, 16])
def test_few_files_split_by_rows_evenly_in_order(tmp_path, world):
    files = _files(tmp_path, [5, 2 * ROW_GROUP + 500, 7])  # the big file has three row groups
    shares = _shares(tmp_path, files, world)
    assert [i for s in shares for i in s] == [f"f{k}-{i}" for k, n in enumerate([5, 2 * ROW_GROUP + 500, 7]) for i in range(n)]
    assert max(map(len, shares)) - min(map(len, shares)) <= 1


def test_row_split_keeps_the_row_index_ids_of_a_whole_file_read(tmp_path):
    files = _files(tmp_path, [30], with_ids=False)
    whole = _shares(tmp_path, files, 1)[0]
    assert whole[:2] == [f"{files[0]}/0", f"{files[0]}/1"]
    assert [i for s in _shares(tmp_path, files, 4) for i in s] == whole


def test_many_files_split_by_file(tmp_path):
    world = 2
    files = _files(tmp_path, [3] * (FILES_PER_RANK * world))
    shares = _shares(tmp_path, files, world)
    assert sorted(i for s in shares for i in s) == sorted(f"f{k}-{i}" for k in range(len(files)) for i in range(3))
    assert {i.split("-")[0] for i in shares[0]} == {f"f{k}" for k in range(0, len(files), world)}


def _tokenize_in_fresh_process(setup: str) -> list:
    text = "Dr. Smith went to Washington. It rained; the U.S. budget (2024) passed at 3.5%! Why?"
    code = f"""
import json, sys
{setup}
out = [tok.word_tokenize({text!r}), tok.sent_tokenize({text!r}), tok.span_tokenize({text!r}), "torch" in sys.modules]
import torch  # importable afterwards either way
print(json.dumps(out))
"""
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    return json.loads(r.stdout.strip().splitlines()[-1])


def test_tokenizer_loads_without_torch_and_matches_datatrove():
    ours = _tokenize_in_fresh_process("from factory.curate.io import SharedTokenizer\ntok = SharedTokenizer('en')")
    ref = _tokenize_in_fresh_process("import torch\nfrom datatrove.utils.word_tokenizers import load_word_tokenizer\n"
                                     "tok = load_word_tokenizer('en')")
    assert ours[3] is False and ref[3] is True  # spaCy loaded without pulling torch in
    assert ours[:3] == ref[:3] and len(ours[0]) > 10


def test_repeated_text_is_tokenized_once_and_each_caller_gets_its_own_list(monkeypatch):
    from factory.curate import io

    tok = io.SharedTokenizer("en")
    real = io._tokenizer("en")
    calls = []
    monkeypatch.setattr(real, "word_tokenize", lambda text: calls.append(text) or text.split())
    io._words.cache_clear()
    first = tok.word_tokenize("the same normalized text")
    first.append("changed by a step")
    again = tok.word_tokenize("the same normalized text")
    assert again == ["the", "same", "normalized", "text"] and calls == ["the same normalized text"]
    io._words.cache_clear()
