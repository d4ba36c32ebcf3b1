"""The curation reader shares the rows among ranks: by file when there are many files, by rows when
there are few (one seeds file must not leave 15 of 16 ranks idle); every row read once, ids kept."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from factory.curate.io import FILES_PER_RANK, doc_reader


def _files(tmp_path, sizes: list[int], with_ids: bool = True) -> list[str]:
    names = []
    for k, n in enumerate(sizes):
        cols = {"text": [f"document {k}.{i}" for i in range(n)]}
        if with_ids:
            cols["id"] = [f"f{k}-{i}" for i in range(n)]
        pq.write_table(pa.table(cols), tmp_path / f"part-{k}.parquet", row_group_size=1000)
        names.append(f"part-{k}.parquet")
    return names


def _shares(tmp_path, files: list[str], world: int) -> list[list[str]]:
    return [[d.id for d in doc_reader(files, str(tmp_path)).run(rank=r, world_size=world)] for r in range(world)]


@pytest.mark.parametrize("world", [1, 2, 3, 16])
def test_few_files_split_by_rows_evenly_in_order(tmp_path, world):
    files = _files(tmp_path, [5, 2500, 7])  # the big file has three row groups
    shares = _shares(tmp_path, files, world)
    assert [i for s in shares for i in s] == [f"f{k}-{i}" for k, n in enumerate([5, 2500, 7]) for i in range(n)]
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
