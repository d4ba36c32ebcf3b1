"""What keeps a worker's memory flat in a shard's size: documents spooled to a local file in
batches and read back sorted and deduplicated, and the GC freeze that ends with the shard."""

from __future__ import annotations

import gc

import pyarrow as pa

from factory.core.schema import DOC_SCHEMA, make_doc
from factory.generate import shard
from factory.generate.shard import REJECT_SCHEMA, Spool, quiet_gc, reject_row, unique_by_id


def doc(i: int, text: str | None = None) -> dict:
    return make_doc(text or f"document number {i}", "synthetic", "synthetic/t", seed_id=f"s{i}", recipe="t")


def test_spooled_documents_come_back_sorted_and_unique(tmp_path, monkeypatch):
    monkeypatch.setattr(shard, "SPILL_ROWS", 4)  # 11 rows: two batches on disk, three in memory
    sp = Spool(DOC_SCHEMA, str(tmp_path))
    rows = [doc(i) for i in range(9)] + [doc(3), doc(7)]  # two ids seen twice, in later batches
    for r in rows:
        sp.add(r)
    assert sp.n == 11 and len(sp.rows) == 3 and (tmp_path / sp.path.rsplit("/", 1)[1]).exists()
    table, dropped = unique_by_id(sp.table())
    ids = table["id"].to_pylist()
    assert dropped == 2 and ids == sorted({r["id"] for r in rows}) and table.num_rows == 9
    assert table.schema.equals(DOC_SCHEMA)
    back = {r["id"]: r for r in table.to_pylist()}
    assert all(back[r["id"]] == r for r in rows)  # rows come back whole, meta included


def test_a_small_shard_never_touches_disk_and_an_empty_one_is_empty(tmp_path):
    sp = Spool(REJECT_SCHEMA, str(tmp_path))
    sp.add(reject_row("s1", "t", 0, "too_short", {"chars": 3}))
    assert sp.table().num_rows == 1 and not list(tmp_path.iterdir())
    empty, dropped = unique_by_id(pa.Table.from_pylist([], schema=DOC_SCHEMA))
    assert empty.num_rows == 0 and dropped == 0


def test_gc_freeze_lasts_as_long_as_the_outermost_shard():
    assert gc.get_freeze_count() == 0
    with quiet_gc():
        frozen = gc.get_freeze_count()
        with quiet_gc():  # a second shard on the same worker meanwhile
            pass
        assert frozen > 0 and gc.get_freeze_count() >= frozen
    assert gc.get_freeze_count() == 0
