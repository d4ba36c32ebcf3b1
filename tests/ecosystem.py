"""Check that a stage folder loads, without options, in the tools people point at a dataset folder:
pyarrow (its data/ folder), `datasets.load_dataset("parquet", data_dir=folder)` (on a store:
`data_files=folder/data/*.parquet`, as datasets takes only a local data_dir) and
`huggingface_hub.DatasetCard.load(folder/README.md)`, local or on an S3-compatible server."""

from __future__ import annotations

import tempfile

import fsspec
import pytest


def loads_everywhere(folder: str, rows: int, licence: str | list[str], endpoint: str | None = None) -> None:
    """Assert all four tools read the `rows` documents of the stage folder at `folder` (a path, or an
    s3:// URL on the test server at `endpoint`) and that its card declares `licence`."""
    import datasets
    import pyarrow.dataset as pads
    import pyarrow.fs as pafs
    import pyarrow.parquet as pq
    from huggingface_hub import DatasetCard

    opts = {"client_kwargs": {"endpoint_url": endpoint}} if endpoint else {}
    fs, root = fsspec.core.url_to_fs(folder, **opts)
    pa_fs = pafs.PyFileSystem(pafs.FSSpecHandler(fs)) if endpoint else None
    data = f"{root}/data" if endpoint else f"{folder}/data"
    assert pq.read_table(data, filesystem=pa_fs).num_rows == rows
    assert pads.dataset(data, filesystem=pa_fs).count_rows() == rows
    with tempfile.TemporaryDirectory() as cache, pytest.MonkeyPatch.context() as mp:
        if endpoint:  # datasets' offline mode refuses every remote URL; the store is on loopback, no hub is asked
            mp.setattr(datasets.config, "HF_HUB_OFFLINE", False)
        where = {"data_files": f"{folder}/data/*.parquet"} if endpoint else {"data_dir": folder}  # data_dir: local only
        ds = datasets.load_dataset("parquet", **where, split="train", cache_dir=cache, storage_options=opts)
        assert len(ds) == rows and {"id", "text", "kind", "source", "meta"} <= set(ds.column_names)
    with tempfile.TemporaryDirectory() as tmp:
        card = f"{tmp}/README.md"
        fs.get_file(f"{root}/README.md", card)
        data_card = DatasetCard.load(card).data
    assert data_card.license == licence, data_card.license
    assert data_card.configs == [{"config_name": "default", "data_files": "data/*.parquet"}]
