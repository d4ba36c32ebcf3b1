"""N-gram decontamination against local benchmark JSONL files (no lighteval, no hub).

We build the index ourselves in datatrove's format (`<task>.index.hashes`: a flat array of uint64
xxhash values of space-joined, normalized word n-grams, exactly as NGramsDecontIndexer writes it)
and check documents with a subclass of datatrove's NGramsDecontFilter. The subclass adds what the
stock filter lacks: benchmark texts shorter than `n_grams` words (but at least `min_words`) are
indexed whole and matched as windows of their own length, and a `flag` mode that keeps the
document and records the hit in `meta.extra.contamination`.
"""

from __future__ import annotations

import json
from typing import Any, Iterable

import numpy as np
from datatrove.pipeline.decont.n_grams import NGramsDecontConfig, NGramsDecontFilter
from datatrove.utils.hashing import create_hash_func
from datatrove.utils.text import ngrams, simplify_text
from datatrove.utils.word_tokenizers import load_word_tokenizer

from factory.core.errors import FactoryError
from factory.core.stage import fresh_fs, join, put_bytes, read_text, storage_errors, to_url
from factory.curate.io import reject

LENGTHS_FILE = "lengths.json"


def benchmark_files(paths: list[str]) -> list[str]:
    """The benchmark JSONL files named by `paths` (files, or folders searched for *.jsonl; any fsspec URL)."""
    files: list[str] = []
    for url in map(str, paths):
        with storage_errors(url):
            fs, p = fresh_fs(url)
            if fs.isdir(p):
                found = sorted(fs.glob(f"{p}/**/*.jsonl"))
                if not found:
                    raise FactoryError("no *.jsonl benchmark files in this folder", where=url, field="decont.benchmarks",
                                       fix="point at JSONL files with question/choices/answer fields")
                files += [to_url(fs, f) for f in found]
            elif fs.isfile(p):
                files.append(url)
            else:
                raise FactoryError("benchmark file not found", where=url, field="decont.benchmarks", fix="check the path")
    return files


def _texts(item: dict[str, Any], fields: list[str]) -> list[str]:
    out = []
    for f in fields:
        v = item.get(f)
        if isinstance(v, str) and v.strip():
            out.append(v)
        elif isinstance(v, list):
            out.extend(str(x) for x in v if isinstance(x, (str, int, float)) and str(x).strip())
    return out


def task_name(url: str) -> str:
    """`<folder>` for `<folder>/data.jsonl`, else the file name without its extension."""
    parts = str(url).rstrip("/").split("/")
    name = parts[-2] if parts[-1] == "data.jsonl" and len(parts) > 1 else parts[-1].rsplit(".", 1)[0]
    return name.replace(" ", "_").replace(":", "_")


def build_index(files: list[str], out_dir: str, fields: list[str], n_grams: int, min_words: int,
                language: Any = "en") -> dict[str, int]:
    """Write `<task>.index.hashes` per benchmark file and `lengths.json`; return hashes per task.

    Indexed per item: the n-grams of each text field alone and of all fields joined (catching
    n-grams that run from a question into its answer); a text shorter than n_grams but with at
    least min_words words is indexed whole. Files and `out_dir` are fsspec URLs.
    """
    cfg = NGramsDecontConfig(n_grams=n_grams)
    tok = load_word_tokenizer(language)
    h = create_hash_func(cfg.hash_config)
    lengths: set[int] = set()
    counts: dict[str, int] = {}
    for path in files:
        hashes: set[int] = set()
        for lineno, line in enumerate(read_text(str(path)).splitlines(), 1):
            if not line.strip():
                continue
            try:
                item = json.loads(line)
            except ValueError as e:
                raise FactoryError(f"line {lineno} is not JSON: {e}", where=str(path), field="decont.benchmarks",
                                   fix="one JSON object per line") from None
            texts = _texts(item, fields) if isinstance(item, dict) else []
            for text in texts + ([" ".join(texts)] if len(texts) > 1 else []):
                words = tok.word_tokenize(simplify_text(text, cfg.norm_config))
                if len(words) >= n_grams:
                    hashes.update(h(" ".join(g)) for g in ngrams(words, n_grams))
                elif len(words) >= min_words:
                    hashes.add(h(" ".join(words)))
                    lengths.add(len(words))
        name = task_name(path)
        arr = np.array(sorted(hashes), dtype=cfg.hash_config.np_descr)
        put_bytes(join(str(out_dir), f"{name}.index.hashes"), arr.tobytes())
        counts[name] = counts.get(name, 0) + len(arr)
    put_bytes(join(str(out_dir), LENGTHS_FILE), json.dumps(sorted(lengths)).encode())
    return counts


class Decontaminate(NGramsDecontFilter):
    """datatrove's n-gram decontamination filter, plus short-text windows and a flag mode."""

    name = "💥 N-grams decontaminate"
    reason = "contamination"

    def __init__(self, index_folder: str, n_grams: int, action: str = "remove", language: Any = "en",
                 exclusion_writer=None):
        super().__init__(index_folder, config=NGramsDecontConfig(n_grams=n_grams), exclusion_writer=exclusion_writer,
                         language=language)
        self.action = action
        self._lengths: list[int] | None = None

    def windows(self) -> list[int]:
        if self._lengths is None:
            extra = []
            if self.index_folder.exists(LENGTHS_FILE):
                with self.index_folder.open(LENGTHS_FILE, "rt") as f:
                    extra = json.load(f)
            self._lengths = sorted({self.config.n_grams, *extra})
        return self._lengths

    def hit(self, text: str) -> tuple[str, str] | None:
        if self._index_hashes is None:
            self.load_index_hashes()
        if not self._index_hashes:
            return None
        words = self.tokenizer.word_tokenize(simplify_text(text, self.config.norm_config))
        for n in self.windows():
            for g in ngrams(words, n):
                s = " ".join(g)
                task = self._index_hashes.get(self.hash_func(s))
                if task is not None:
                    return task, s
        return None

    def filter(self, doc):
        found = self.hit(doc.text)
        if not found:
            return True
        task, gram = found
        self.stat_update(f"contaminated_{task}")
        if self.action == "flag":
            meta = dict(doc.metadata.get("meta") or {})
            extra = json.loads(meta.get("extra") or "{}")
            extra["contamination"] = {"task": task, "ngram": gram}
            meta["extra"] = json.dumps(extra, sort_keys=True)
            doc.metadata["meta"] = meta
            return True
        return reject(doc, self.reason, {"task": task, "ngram": gram})


def iter_items(files: Iterable[str]) -> Iterable[dict]:
    for p in files:
        for line in read_text(str(p)).splitlines():
            if line.strip():
                yield json.loads(line)
