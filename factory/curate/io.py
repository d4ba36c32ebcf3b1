"""Reader and writer adapters between our document rows (DOC_SCHEMA) and datatrove Documents.

A row's `kind`, `source` and `meta` travel untouched in `Document.metadata`, so the kept shards
come out with exactly the provenance they came in with. Rejected documents get `reason` and
`detail` columns next to the document columns.
"""

from __future__ import annotations

import json
import sys
from functools import lru_cache
from typing import Any

import pyarrow as pa
from datatrove.data import Document
from datatrove.pipeline.readers import JsonlReader, ParquetReader
from datatrove.pipeline.writers import JsonlWriter, ParquetWriter
from datatrove.utils.word_tokenizers import WordTokenizer, load_word_tokenizer

from factory.core.errors import FactoryError
from factory.core.schema import DOC_SCHEMA

REJECTED_SCHEMA = pa.schema(list(DOC_SCHEMA) + [pa.field("reason", pa.string()), pa.field("detail", pa.string())])
EMPTY = "\u2205"  # placeholder text for an empty row, so datatrove keeps it until the `empty` filter rejects it
_KEEP = ("kind", "source", "meta")


class SharedTokenizer(WordTokenizer):
    """Datatrove's word tokenizer for a language, shared by every step of a process.

    Steps hold this handle instead of their own tokenizer: pickling or deep-copying it yields the
    handle again, so a worker loads spaCy once, not once per step and task.
    """

    def __init__(self, language: str):
        super().__init__(language)

    def __reduce__(self):
        return (SharedTokenizer, (self.language,))

    def __deepcopy__(self, memo):
        return self

    def __hash__(self):
        return hash(("shared-tokenizer", self.language))

    def __eq__(self, other):
        return isinstance(other, SharedTokenizer) and other.language == self.language

    def word_tokenize(self, text: str) -> list[str]:
        return list(_words(self.language, text))  # a copy: a step may change its list

    def sent_tokenize(self, text: str) -> list[str]:
        return _tokenizer(self.language).sent_tokenize(text)

    def span_tokenize(self, text: str) -> list[tuple[int, int]]:
        return _tokenizer(self.language).span_tokenize(text)


@lru_cache(maxsize=8)
def _words(language: str, text: str) -> tuple[str, ...]:
    """Words of the last few texts: the MinHash and decontamination steps both tokenize a
    document's same normalized text, one after the other (28% of all calls in a default run)."""
    return tuple(_tokenizer(language).word_tokenize(text))


@lru_cache(maxsize=None)
def _tokenizer(language: str) -> WordTokenizer:
    """datatrove's tokenizer for `language`, loaded once per process with torch out of sight.

    spaCy imports thinc, and thinc imports torch and counts CUDA devices: seconds in every worker
    (more on a GPU host, with all of them at once) for a blank tokenizer that uses neither. Unless
    something here imported torch already, `import torch` fails while spaCy loads and works again
    after (thinc then runs without torch, which word tokenizing never needs).
    """
    hide = "torch" not in sys.modules
    if hide:
        sys.modules["torch"] = None  # type: ignore[assignment]  # import raises ModuleNotFoundError
    try:
        tok = load_word_tokenizer(language)
        tok.word_tokenize("load")
    finally:
        if hide and sys.modules.get("torch", 0) is None:
            del sys.modules["torch"]
    return tok


def row_to_doc(self, data: dict, path: str, id_in_file: int | str) -> dict:
    """ParquetReader adapter: a DOC_SCHEMA row -> Document fields."""
    text = data.get("text") or ""
    md = {k: data.get(k) for k in _KEEP}
    if not text.strip():
        md["_empty"] = True
    return {"text": text if text.strip() else EMPTY, "id": data.get("id") or f"{path}/{id_in_file}", "metadata": md}


def doc_to_row(doc: Document) -> dict[str, Any]:
    md = doc.metadata
    return {"id": doc.id, "text": "" if md.get("_empty") else doc.text, "kind": md.get("kind"),
            "source": md.get("source"), "meta": md.get("meta")}


def _write_adapter(self, doc: Document) -> dict:
    return doc_to_row(doc)


def _reject_adapter(self, doc: Document) -> dict:
    rej = doc.metadata.get("_reject") or {}
    detail = rej.get("detail")
    if detail is None and doc.metadata.get("filter_reason"):
        detail = doc.metadata["filter_reason"]
    return {**doc_to_row(doc), "reason": rej.get("reason") or self.reason,
            "detail": detail if isinstance(detail, str) or detail is None else json.dumps(detail, sort_keys=True)}


def reject(doc: Document, reason: str, detail: Any = None) -> tuple[bool, str]:
    """Mark a document as rejected (for a BaseFilter.filter return value)."""
    doc.metadata["_reject"] = {"reason": reason, "detail": detail}
    return False, reason


def doc_reader(files: list[str], root: str) -> ParquetReader:
    """A datatrove ParquetReader over the given shard files (paths relative to `root`), sharded by rank."""
    return _ListReader(root, files)


FILES_PER_RANK = 4  # below this many files per rank, ranks split rows instead of files


class _ListReader(ParquetReader):
    """ParquetReader that takes its file list directly (no glob, no paths file on disk).

    With many files a rank reads every world_size-th file, as datatrove does. With few (one seeds
    file, 17 shards on 16 ranks) whole files would leave ranks idle or doubly loaded, so each rank
    reads an equal run of rows across the files instead, touching only the row groups it overlaps.
    Either way a document keeps its id and its row index in its file.
    """

    name = "📒 Rows"

    def __init__(self, root: str, files: list[str]):
        super().__init__(root, adapter=row_to_doc, recursive=False)
        self.files = list(files)

    def run(self, data=None, rank: int = 0, world_size: int = 1):
        if data:
            yield from data
        if len(self.files) >= FILES_PER_RANK * world_size:
            docs = self.read_files_shard(self.files[rank::world_size])
        else:
            docs = self.read_rows_shard(rank, world_size)
        for doc in docs:
            doc.metadata.pop("file_path", None)
            self.update_doc_stats(doc)
            yield doc

    def read_rows_shard(self, rank: int, world_size: int):
        """Rows [total * rank / world_size, total * (rank + 1) / world_size) of the files in order."""
        import pyarrow.parquet as pq

        groups = []  # per file: the row counts of its row groups
        for path in self.files:
            with self.data_folder.open(path, "rb") as f:
                md = pq.ParquetFile(f).metadata
                groups.append([md.row_group(g).num_rows for g in range(md.num_row_groups)])
        total = sum(map(sum, groups))
        lo, hi = total * rank // world_size, total * (rank + 1) // world_size
        first = 0  # index of the file's first row among all rows
        for path, sizes in zip(self.files, groups):
            if first < hi and first + sum(sizes) > lo:
                self.stat_update("input_files")
                with self.data_folder.open(path, "rb") as f, pq.ParquetFile(f) as pqf:
                    at, n = first, 0
                    for g, size in enumerate(sizes):
                        a, b = max(lo, at), min(hi, at + size)
                        if a < b:
                            rows = pqf.read_row_group(g).slice(a - at, b - a).to_pylist()
                            for i, row in enumerate(rows, start=a - first):
                                doc = self.get_document_from_dict(row, path, i)
                                if doc:
                                    n += 1
                                    yield doc
                        at += size
                self.stat_update("documents", value=n, unit="input_file")
            first += sum(sizes)


class RankJsonlReader(JsonlReader):
    """Reads back exactly the intermediate file its own rank wrote (`{rank:05d}.jsonl.gz`), if any."""

    name = "🐿 Rank jsonl"

    def __init__(self, folder: str):
        super().__init__(folder)

    def run(self, data=None, rank: int = 0, world_size: int = 1):
        if data:
            yield from data
        name = f"{rank:05d}.jsonl.gz"
        if self.data_folder.exists(name):
            for doc in self.read_files_shard([name]):
                doc.metadata.pop("file_path", None)
                yield doc


def work_writer(folder: str) -> JsonlWriter:
    """Intermediate shards between stages (not parquet, so readers of the stage folder never see them)."""
    return JsonlWriter(folder, output_filename="${rank}.jsonl.gz", compression="gzip")


class DocWriter(ParquetWriter):
    """Kept documents in DOC_SCHEMA, one shard per rank, zstd; a `.part` name until the stage finishes."""

    name = "📒 Kept rows"

    def __init__(self, folder: str):
        super().__init__(folder, output_filename="${rank}.parquet.part", compression="zstd", adapter=_write_adapter,
                         schema=DOC_SCHEMA, max_file_size=-1, use_content_defined_chunking=False)


class RejectWriter(ParquetWriter):
    """Rejected documents of one step, with `reason` (the step) and `detail` (the step's own reason)."""

    name = "📒 Rejected rows"

    def __init__(self, folder: str, reason: str):
        super().__init__(folder, output_filename=f"{reason}-${{rank}}.parquet.part", compression="zstd",
                         adapter=_reject_adapter, schema=REJECTED_SCHEMA, max_file_size=-1,
                         use_content_defined_chunking=False)
        self.reason = reason


def shard_files(url: str) -> tuple[str, list[str]]:
    """(root URL, document shard paths relative to it) of a stage folder or one parquet file (any fsspec URL)."""
    from factory.core.stage import doc_files, fresh_fs, storage_errors, to_url

    with storage_errors(url):
        fs, root = fresh_fs(url)
        if not fs.exists(root):
            raise FactoryError("input not found", where=str(url), field="inputs",
                               fix="check the path, or run the stage that writes it")
        if root.endswith(".parquet") and fs.isfile(root):
            parent, name = root.rsplit("/", 1)
            return to_url(fs, parent), [name]
        files = doc_files(fs, root)
    if not files:
        raise FactoryError("no parquet shards in this folder", where=str(url), field="inputs",
                           fix="point at a stage folder that holds document rows")
    return to_url(fs, root), [f[len(root) + 1:] for f in files]
