"""`factory tokenize`: stage folders of documents -> a tokenizer and `.ds` shards per source."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from factory.core.errors import FactoryError
from factory.core.ui import console, table


def _parse_source(spec: str) -> tuple[str, dict]:
    """`name=path` or `name=path:kind1,kind2`."""
    if "=" not in spec:
        raise FactoryError(f"bad --source {spec!r}", field="--source", fix="write name=path or name=path:kind1,kind2")
    name, rest = spec.split("=", 1)
    path, sep, kinds = rest.rpartition(":")
    if not sep or not kinds or "/" in kinds:  # no kinds, or the ':' is a URL's scheme (s3://...)
        path, kinds = rest, ""
    return name, {"path": path, **({"kinds": kinds.split(",")} if kinds else {})}


def tokenize_cmd(
    config: Optional[Path] = typer.Argument(None, help="Tokenize config YAML (or give --source and --out)."),
    out: Optional[str] = typer.Option(None, "--out", help="Output folder."),
    source: list[str] = typer.Option([], "--source", help="name=stage_folder[:kind,kind] (repeatable)."),
    vocab: Optional[int] = typer.Option(None, "--vocab", help="Train a BPE with this vocabulary size."),
    tokenizer: Optional[str] = typer.Option(None, "--tokenizer", help="Use this tokenizer.json instead of training."),
) -> None:
    """Train (or load) a tokenizer and write datatrove .ds shards, one folder per source."""
    from factory.core.config import read_yaml, validate
    from factory.mix.tokenize import TokenizeConfig, run

    data = read_yaml(config) if config else {}
    where = str(config) if config else "command line"
    if source:
        data["sources"] = dict(_parse_source(s) for s in source)
    if out:
        data["out"] = out
    if tokenizer:
        data["tokenizer"] = {"path": tokenizer}
    elif vocab:
        data["tokenizer"] = {"train": {"vocab_size": vocab}}
    cfg = validate(TokenizeConfig, data, where)
    m = run(cfg, where)
    rows = [[k, v["docs"], f"{v['tokens']:,}", len(v["files"])] for k, v in m["sources"].items()]
    console.print(table(f"tokenized into {cfg.out} (vocab {m['tokenizer']['vocab_size']})",
                        ["source", "docs", "tokens", "shards"], rows))
    for name, v in m["sources"].items():
        if not v["docs"]:
            src = cfg.sources[name]
            kinds = f" of kind {', '.join(src.kinds)}" if src.kinds else ""
            console.print(f"[yellow]warning: source '{name}' has 0 documents{kinds} in {src.path}; a mix that draws "
                          f"from it is refused (fix: generate documents{kinds}, e.g. with a recipe of that kind, or "
                          f"drop the source)[/]")


def register(app: typer.Typer) -> None:
    app.command("tokenize")(tokenize_cmd)
