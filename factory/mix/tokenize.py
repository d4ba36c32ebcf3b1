"""Tokenize stage folders into datatrove `.ds` shards, one folder per source, with one tokenizer.

Trains a byte-level BPE tokenizer (`tokenizers`) on the texts of all sources, or loads a given
tokenizer.json, then writes every source with datatrove's `DocumentTokenizer` (document order
kept: the mixed loader shuffles windows itself).

    # factory tokenize tokenize.yaml   (or: factory tokenize --source web=runs/seeds --vocab 4096 --out ...)
    out: runs/demo/tokens
    sources:
      web: {path: runs/demo/seeds}
      synthetic: {path: runs/demo/curated, kinds: [synthetic, qa]}
      rewrite: {path: runs/demo/curated, kinds: [rewrite]}
    tokenizer: {train: {vocab_size: 4096, min_frequency: 2}}   # or {path: some/tokenizer.json}

Sources, `tokenizer.path` and `out` are fsspec URLs (local, s3://, gs://), each resolved with its
own filesystem. Output folder:

    out/tokenizer.json            the tokenizer (no post-processor; the EOS is added per document)
    out/manifest.json             stage manifest: config, per-source docs/tokens, tokenizer sha256
    out/<source>/<source>_<rank:05d>_unshuffled.ds            tokens
    out/<source>/<source>_<rank:05d>_unshuffled.ds.index      document ends
    out/<source>/<source>_<rank:05d>_unshuffled.ds.metadata   tokenizer + token size, count
    out/<source>/source.json      docs, tokens, files, tokenizer sha256 and vocab size (written
                                  last: a source folder without it is unfinished)

Binary format (datatrove 0.10, little-endian throughout):
- `.ds`: the token ids of every document, each followed by the EOS id, back to back; uint16 when
  the vocabulary has at most 65536 entries, else uint32 (datatrove's rule).
- `.ds.index`: uint64 per document: the token offset just past its end (its EOS) in the `.ds`.
- `.ds.metadata`: text, three lines: "<tokenizer URL>|<bytes per token>", the token count, the
  count in human units.
Rows are read in stage order; a shard holds at most `shard_docs` documents (rank r: rows
[r*shard_docs, (r+1)*shard_docs)), so sorting the file names gives back the row order. Decoding a
document (without the EOS) gives its text after the tokenizer's NFC normalisation.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from factory.core.config import load_config
from factory.core.errors import FactoryError
from factory.core.stage import StageDir, check_store, exists, read_bytes, read_docs, read_text, storage_errors, to_url
from factory.core.ui import progress

EOS = "<|endoftext|>"


class SourceIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    path: str = Field(description="A stage folder of document rows (parquet).")
    kinds: list[str] | None = Field(None, description="Keep only rows of these kinds.")


class TrainSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")
    vocab_size: int = Field(4096, ge=300, le=1 << 20)
    min_frequency: int = Field(2, ge=1)


class TokenizerSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")
    train: TrainSpec | None = None
    path: str | None = Field(None, description="An existing tokenizer.json (instead of training).")


class TokenizeConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    sources: dict[str, SourceIn] = Field(min_length=1)
    tokenizer: TokenizerSpec = Field(default_factory=lambda: TokenizerSpec(train=TrainSpec()))
    out: str
    eos: str = EOS
    shard_docs: int = Field(100_000, ge=1)


def file_sha(url: str | Path) -> str:
    """sha256 of a file at any fsspec URL."""
    return hashlib.sha256(read_bytes(str(url))).hexdigest()


def train_tokenizer(texts, vocab_size: int, min_frequency: int = 2, eos: str = EOS):
    """A byte-level BPE (NFC-normalised, no prefix space) trained on `texts`; `eos` is id 0."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, min_frequency=min_frequency, special_tokens=[eos],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(texts, trainer=trainer)
    return tok


def _texts(src: SourceIn, name: str, where: str) -> list[str]:
    try:
        with storage_errors(src.path):
            table = read_docs(src.path)
    except FactoryError as e:
        what = e.what if src.path in e.what else f"{e.what}: {src.path}"
        raise FactoryError(what, where=where, field=f"sources.{name}.path", fix=e.fix) from None
    rows = table.select(["text", "kind"]).to_pylist()
    return [r["text"] for r in rows if src.kinds is None or r["kind"] in src.kinds]


def _tokenizer(cfg: TokenizeConfig, stage: StageDir, texts: dict[str, list[str]], where: str) -> tuple[str, str]:
    """(URL, JSON) of the stage's tokenizer.json: kept from an earlier run, copied from
    `tokenizer.path` (any fsspec URL), or trained on the texts."""
    from tokenizers import Tokenizer

    url = to_url(stage.fs, stage.path("tokenizer.json"))
    if exists(url):  # a rerun with the same config keeps the tokenizer its shards were made with
        return url, read_text(url)
    spec = cfg.tokenizer
    if (spec.train is None) == (spec.path is None):
        raise FactoryError("give exactly one of tokenizer.train or tokenizer.path", where=where, field="tokenizer",
                           fix="train: {vocab_size: 4096} or path: some/tokenizer.json")
    if spec.path:
        if not exists(spec.path):
            raise FactoryError(f"no tokenizer file at {spec.path}", where=where, field="tokenizer.path", fix="check the path")
        text = read_text(spec.path)
        if Tokenizer.from_str(text).token_to_id(cfg.eos) is None:
            raise FactoryError(f"the tokenizer has no token {cfg.eos!r}", where=where, field="eos",
                               fix="set eos to the tokenizer's end-of-text token")
    else:
        every = [t for ts in texts.values() for t in ts]
        if not every:
            raise FactoryError("no text to train a tokenizer on", where=where, field="sources",
                               fix="check the source paths and kinds")
        text = train_tokenizer(every, spec.train.vocab_size, spec.train.min_frequency, cfg.eos).to_str()
    stage.write_bytes("tokenizer.json", text.encode())
    return url, text


def _step(folder: str, name: str, tok_url: str, tok_json: str, eos: str):
    """datatrove's DocumentTokenizer writing to `folder` (any fsspec URL), with the stage's tokenizer.

    datatrove loads a tokenizer only from a local file or a hub name, so the step gets it already
    loaded (with datatrove's EOS post-processor); `tok_url` is what the `.ds.metadata` files record.
    """
    from datatrove.pipeline.tokens import DocumentTokenizer
    from tokenizers import Tokenizer
    from tokenizers.processors import TemplateProcessing

    step = DocumentTokenizer(folder, tokenizer_name_or_path=tok_url, save_filename=name, eos_token=eos,
                             shuffle_documents=False, batch_size=1000)
    tok = Tokenizer.from_str(tok_json)
    tok.post_processor = TemplateProcessing(single="$A <EOS>", special_tokens=[("<EOS>", tok.token_to_id(eos))], pair=None)
    step.__dict__["tokenizer"] = tok  # fills datatrove's cached property
    return step


def _write_source(name: str, texts: list[str], tok_url: str, tok_json: str, cfg: TokenizeConfig,
                  stage: StageDir) -> dict[str, Any]:
    from datatrove.data import Document
    from loguru import logger

    fs, folder = stage.fs, stage.path(name)
    fs.invalidate_cache()
    if fs.exists(folder):
        fs.rm(folder, recursive=True)  # an unfinished earlier attempt: start this source over
    fs.makedirs(folder, exist_ok=True)
    n = max(1, -(-len(texts) // cfg.shard_docs))
    step = _step(to_url(fs, folder), name, tok_url, tok_json, cfg.eos)
    logger.disable("datatrove")  # one progress bar for the stage instead of a log line per shard
    try:
        for rank in range(n):
            part = texts[rank * cfg.shard_docs:(rank + 1) * cfg.shard_docs]
            step.run((Document(text=t, id=f"{name}/{rank * cfg.shard_docs + i}") for i, t in enumerate(part)), rank, n)
    finally:
        logger.enable("datatrove")
    fs.invalidate_cache()
    sizes = {f["name"].rsplit("/", 1)[1]: f["size"] for f in fs.ls(folder, detail=True)}
    files = sorted(f for f in sizes if f.endswith(".ds"))
    tokens = sum(sizes[f] for f in files) // step.token_size
    docs = sum(sizes.get(f"{f}.index", 0) // 8 for f in files)
    info = {"docs": int(docs), "tokens": int(tokens), "files": files, "token_size": step.token_size,
            "tokenizer_sha256": hashlib.sha256(tok_json.encode()).hexdigest(),
            "vocab_size": step.tokenizer.get_vocab_size()}
    if docs != len(texts):
        raise FactoryError(f"wrote {docs} documents for source {name!r}, expected {len(texts)}", where=to_url(fs, folder))
    stage.write_json(f"{name}/source.json", info)
    return info


def run(cfg: TokenizeConfig, where: str = "<tokenize config>") -> dict[str, Any]:
    """Tokenize every source of `cfg` into `cfg.out`; returns the stage manifest. Sources, the
    tokenizer and the output are fsspec URLs, each resolved with its own filesystem."""
    check_store(cfg.out)
    texts = {name: _texts(src, name, where) for name, src in cfg.sources.items()}
    with storage_errors(cfg.out, remote_only=True):
        return _run(cfg, texts, where)


def _run(cfg: TokenizeConfig, texts: dict[str, list[str]], where: str) -> dict[str, Any]:
    ident = cfg.model_dump(mode="json")
    if cfg.tokenizer.path:  # a given tokenizer decides the output by its content, not its name
        if not exists(cfg.tokenizer.path):
            raise FactoryError(f"no tokenizer file at {cfg.tokenizer.path}", where=where, field="tokenizer.path",
                               fix="check the path")
        ident["tokenizer_sha256"] = file_sha(cfg.tokenizer.path)
    with StageDir(cfg.out, "tokenize", ident, inputs=[s.path for s in cfg.sources.values()]) as stage:
        return _write(cfg, stage, texts, where)


def _write(cfg: TokenizeConfig, stage: StageDir, texts: dict[str, list[str]], where: str) -> dict[str, Any]:
    tok_url, tok_json = _tokenizer(cfg, stage, texts, where)
    sources: dict[str, Any] = {}
    with progress() as bar:
        task = bar.add_task("tokenize", total=len(texts), unit="sources", info="")
        for name, ts in texts.items():
            done = to_url(stage.fs, stage.path(f"{name}/source.json"))  # written last: the source is finished
            if exists(done):
                sources[name] = json.loads(read_text(done))
            else:
                sources[name] = _write_source(name, ts, tok_url, tok_json, cfg, stage)
            stage.counts[f"{name}.docs"] = sources[name]["docs"]
            stage.counts[f"{name}.tokens"] = sources[name]["tokens"]
            bar.update(task, advance=1, info=f"{name}: {sources[name]['tokens']:,} tokens")
    from tokenizers import Tokenizer

    tok = Tokenizer.from_str(tok_json)
    return stage.finish(tokenizer={"path": "tokenizer.json", "sha256": hashlib.sha256(tok_json.encode()).hexdigest(),
                                   "vocab_size": tok.get_vocab_size(), "eos": cfg.eos, "eos_id": tok.token_to_id(cfg.eos)},
                        sources=sources)


def load(path: str | Path, **overrides: Any) -> TokenizeConfig:
    return load_config(TokenizeConfig, path, {k: v for k, v in overrides.items() if v is not None})
