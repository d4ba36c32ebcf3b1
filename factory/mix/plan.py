"""Plan a mix: count each source's unique tokens, split every phase into samples, cost the epochs.

`plan(mix_path, data_root)` reads a mix YAML (see `factory.mix.spec`), checks the tokenized shards
against the tokenizer, and returns plan.json's dict, which `train.loader.MixLoader` draws exactly:

- A phase of T tokens is N = T // seq_len samples (each trains seq_len targets). Token budgets
  come off first; the shares split the remaining samples by largest remainder, so the counts sum to
  N exactly. A source's `tokens` in the plan is its sample count times seq_len; its `share` is the
  share it actually gets (count / N).
- `unique_tokens` counts the source's `.ds` shards. A source of U tokens has W = (U-1) // seq_len
  windows of seq_len+1 tokens; `epochs` is samples / W for that phase. The epoch limit
  (`max_epochs`) applies to the sum over phases, because all phases draw from the same windows.
- Impossible plans are errors: a source drawn from that cannot fill one window, shards missing or
  made by another tokenizer, or a source over its epoch limit. With `fit: cap` such a source's share
  drops (in every phase alike) to what its `max_epochs` allows and the other sources of the phase take
  the rest in proportion to their shares; `fit: warn` trains past the limit and says so.

The data root and plan.json may be any fsspec URL (local, s3://, gs://). The plan names its
shards and tokenizer by absolute path or URL; the trainer memory-maps the shards, so a plan over
object storage trains from a local copy of that folder.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np
from fsspec.implementations.local import LocalFileSystem
from rich.table import Table

from factory.core.errors import FactoryError
from factory.core.stage import check_store, fresh_fs, is_url, join, put_bytes, storage_errors
from factory.core.ui import human
from factory.mix.spec import MixConfig, load_mix, phase_shares

CHUNK = 1 << 26  # bytes per read when scanning a remote shard for its largest token id


def _resolve(p: str, root: str | Path) -> str:
    """`p` as a URL: URLs and absolute paths as they are, others relative to the data root `root`."""
    if is_url(p):
        return p
    q = Path(p).expanduser()
    if not q.is_absolute() and is_url(str(root)):
        return join(str(root), p)
    return str((q if q.is_absolute() else Path(root) / q).resolve())


def _token_size(fs, meta: str) -> int | None:
    if not fs.exists(meta):
        return None
    text = fs.cat_file(meta).decode()
    tail = (text.splitlines()[0] if text else "").rsplit("|", 1)[-1]
    return int(tail) if tail.isdigit() else None


def _max_token(fs, path: str, dtype) -> int:
    if isinstance(fs, LocalFileSystem):
        return int(np.memmap(path, dtype=dtype, mode="r").max())
    top = 0
    with fs.open(path, "rb", block_size=CHUNK) as f:
        while chunk := f.read(CHUNK):
            top = max(top, int(np.frombuffer(chunk, dtype=dtype).max()))
    return top


def scan_source(folder: str, vocab_size: int, tok_sha: str, where: str, field: str) -> dict[str, Any]:
    """Docs and unique tokens of one tokenized source (any fsspec URL), after checking its shards fit the tokenizer."""
    with storage_errors(folder):
        fs, root = fresh_fs(folder)
        return _scan(fs, root, folder, vocab_size, tok_sha, where, field)


def _scan(fs, root: str, folder: str, vocab_size: int, tok_sha: str, where: str, field: str) -> dict[str, Any]:
    files = sorted(fs.glob(f"{root}/*.ds")) if fs.isdir(root) else []
    if not files:
        raise FactoryError(f"no .ds shards in {folder}", where=where, field=field,
                           fix="run `factory tokenize` for this source, or fix the path (relative paths resolve against --data)")
    want = 4 if vocab_size > 65536 else 2
    dtype = np.dtype(np.uint16 if want == 2 else np.uint32).newbyteorder("<")
    info = f"{root}/source.json"
    if fs.exists(info):
        made_with = json.loads(fs.cat_file(info)).get("tokenizer_sha256")
        if made_with and made_with != tok_sha:
            raise FactoryError(f"the shards in {folder} were made with another tokenizer (sha256 {made_with[:12]}, "
                               f"the mix's tokenizer is {tok_sha[:12]})", where=where, field="tokenizer",
                               fix="point `tokenizer` at the tokenizer.json these shards were made with, or re-tokenize")
    tokens = docs = 0
    for f in files:
        fname = f.rsplit("/", 1)[1]
        size = _token_size(fs, f"{f}.metadata")
        if size is not None and size != want:
            raise FactoryError(f"{fname} holds {size}-byte tokens, the tokenizer (vocab {vocab_size}) needs {want}-byte ones",
                               where=where, field="tokenizer", fix="use the tokenizer that made these shards, or re-tokenize")
        nbytes = fs.size(f)
        if nbytes % want:
            raise FactoryError(f"{fname} is {nbytes} bytes, not a whole number of {want}-byte tokens",
                               where=where, field=field, fix="re-tokenize this source")
        n = nbytes // want
        if not fs.exists(f"{f}.index"):
            raise FactoryError(f"{fname} has no .index file", where=where, field=field, fix="re-tokenize this source")
        ends = np.frombuffer(fs.cat_file(f"{f}.index"), dtype="<u8")
        if len(ends) and int(ends[-1]) != n:
            raise FactoryError(f"{fname}.index ends at token {int(ends[-1])}, the shard holds {n}", where=where, field=field,
                               fix="re-tokenize this source (the shard is truncated)")
        if n:
            top = _max_token(fs, f, dtype)
            if top >= vocab_size:
                raise FactoryError(f"{fname} holds token id {top}, the tokenizer has only {vocab_size}", where=where,
                                   field="tokenizer", fix="use the tokenizer these shards were made with")
        tokens += n
        docs += len(ends)
    return {"unique_tokens": tokens, "docs": docs, "files": len(files)}


def _split(n: int, shares: dict[str, float], budgets: dict[str, int], seq_len: int, names: list[str]) -> dict[str, int]:
    """Sample counts per source for a phase of n samples: budgets first, then shares by largest remainder."""
    counts = {k: budgets[k] // seq_len for k in budgets}
    rest = n - sum(counts.values())
    exact = {k: shares[k] * rest for k in shares}
    floor = {k: int(np.floor(v)) for k, v in exact.items()}
    left = rest - sum(floor.values())
    for k in sorted(floor, key=lambda k: (-(exact[k] - floor[k]), names.index(k)))[:left]:
        floor[k] += 1
    counts.update(floor)
    return {k: counts.get(k, 0) for k in names}


def make_plan(cfg: MixConfig, data_root: str | Path, where: str = "<mix>") -> tuple[dict[str, Any], list[str]]:
    """plan.json's dict for a validated mix, and warnings (sources over their epoch limit)."""
    from tokenizers import Tokenizer

    tok_path = _resolve(cfg.tokenizer, data_root)
    with storage_errors(tok_path):
        fs, p = fresh_fs(tok_path)
        if not fs.isfile(p):
            raise FactoryError(f"no tokenizer at {tok_path}", where=where, field="tokenizer",
                               fix="give the tokenizer.json written by `factory tokenize` (relative to --data)")
        raw = fs.cat_file(p)
    vocab = Tokenizer.from_str(raw.decode()).get_vocab_size()
    sha = hashlib.sha256(raw).hexdigest()
    names = [s.name for s in cfg.sources]
    scans = {s.name: scan_source(_resolve(s.path, data_root), vocab, sha, where, f"sources[{i}].path")
             for i, s in enumerate(cfg.sources)}
    L = cfg.seq_len
    windows = {k: max(0, (v["unique_tokens"] - 1) // L) for k, v in scans.items()}
    specs = phase_shares(cfg)
    total = cfg.total_tokens
    sizes = [t if t is not None else int(round(f * total)) for _, t, f, _, _ in specs]
    if total is not None and all(f is not None for _, _, f, _, _ in specs):
        sizes[-1] = total - sum(sizes[:-1])  # fractions that sum to 1 cover total_tokens exactly
    for j, ((pname, _, _, shares, budgets), size) in enumerate(zip(specs, sizes)):
        field = f"phases[{j}]" if cfg.phases else "total_tokens"
        if size // L <= 0:
            raise FactoryError(f"phase {pname!r} has {size} tokens, less than one sample of seq_len {L}", where=where,
                               field=field, fix="give the phase more tokens or use a shorter seq_len")
        if sum(b // L for b in budgets.values()) > size // L:
            raise FactoryError("token budgets exceed the phase", where=where, field=field, fix="lower the budgets")
    asked = [dict(sp[3]) for sp in specs]
    fitted, capped = (_fit_caps(cfg, specs, sizes, windows, where) if cfg.fit == "cap"
                      else ([sp[3] for sp in specs], set()))
    phases, drawn = [], dict.fromkeys(names, 0)
    for j, ((pname, _, _, _, budgets), size, shares) in enumerate(zip(specs, sizes, fitted)):
        n = size // L
        counts = _split(n, shares, budgets, L, names)
        rows = []
        for i, s in enumerate(cfg.sources):
            c = counts[s.name]
            if c and windows[s.name] == 0:
                raise FactoryError(f"source {s.name!r} has {scans[s.name]['unique_tokens']} tokens, too few for one "
                                   f"window of {L + 1}, but phase {pname!r} draws {c * L} tokens from it", where=where,
                                   field=f"sources[{i}].path", fix="give it data, set its share to 0, or lower seq_len")
            drawn[s.name] += c
            rows.append({"name": s.name, "path": _resolve(s.path, data_root), "kind": s.kind,
                         "share": round(c / n, 6), "unique_tokens": scans[s.name]["unique_tokens"], "tokens": c * L,
                         "epochs": round(c / windows[s.name], 4) if windows[s.name] else 0.0, "max_epochs": s.max_epochs})
            if s.name in capped and s.name in asked[j]:
                rows[-1]["asked_share"] = asked[j][s.name]
        phases.append({"name": pname, "tokens": n * L, "sources": rows})
    warnings = [f"source {k!r} capped at its max_epochs {cfg.sources[names.index(k)].max_epochs:g}: share "
                + ", ".join(f"{asked[j][k]:.3g} -> {r['share']:.3g}" + (f" in {ph['name']}" if len(phases) > 1 else "")
                            for j, ph in enumerate(phases) for r in ph["sources"] if r["name"] == k and k in asked[j])
                + "; the other sources take the rest" for k in names if k in capped]
    for i, s in enumerate(cfg.sources):
        ep = drawn[s.name] / windows[s.name] if windows[s.name] else 0.0
        if s.max_epochs is not None and ep > s.max_epochs:
            msg = f"source {s.name!r} is drawn {ep:.2f} epochs, over its max_epochs {s.max_epochs:g}"
            if cfg.fit != "warn":
                raise FactoryError(f"{msg} ({scans[s.name]['unique_tokens']:,} unique tokens)", where=where,
                                   field=f"sources[{i}].max_epochs",
                                   fix="add data, lower its share or total_tokens, raise max_epochs, or set `fit: cap` "
                                       "(its share drops to what max_epochs allows, the other sources take the rest)")
            warnings.append(msg)
    plan = {"mix": cfg.name, "seq_len": L, "seed": cfg.seed, "tokenizer": tok_path, "vocab_size": vocab,
            "total_tokens": sum(p["tokens"] for p in phases), "fit": cfg.fit, "capped": sorted(capped), "phases": phases}
    return plan, warnings


def _fit_caps(cfg: MixConfig, specs: list, sizes: list[int], windows: dict[str, int],
              where: str) -> tuple[list[dict[str, float]], set[str]]:
    """`fit: cap`: each phase's shares with every source inside its max_epochs. A source over it gets the share
    that reaches its cap (scaled alike in every phase); the phase's uncapped sources take what it gave up, in
    proportion to their shares; repeated until no source is over (rounding can leave one sample over once)."""
    L, names = cfg.seq_len, [s.name for s in cfg.sources]
    limit = {s.name: int(s.max_epochs * windows[s.name]) for s in cfg.sources if s.max_epochs is not None}
    shares = [dict(sp[3]) for sp in specs]
    capped: set[str] = set()
    for _ in range(4 * len(names) + 4):
        counts = [_split(size // L, sh, sp[4], L, names) for sp, size, sh in zip(specs, sizes, shares)]
        over = {k: lim / d for k, lim in limit.items() if (d := sum(c[k] for c in counts)) > lim}
        if not over:
            return shares, capped
        for k in over:
            if any(k in sp[4] for sp in specs):
                i = names.index(k)
                raise FactoryError(f"source {k!r} has a token budget past its max_epochs", where=where,
                                   field=f"sources[{i}].tokens", fix="lower its token budget or raise max_epochs")
        capped |= set(over)
        for j, sh in enumerate(shares):
            freed = 0.0
            for k, f in over.items():
                if k in sh:
                    freed += sh[k] * (1 - f)
                    sh[k] *= f
            takers = [k for k in sh if k not in capped and sh[k] > 0]
            if freed and not takers:
                raise FactoryError(f"every source of phase {specs[j][0]!r} is at its max_epochs: the data cannot "
                                   f"fill {sizes[j]:,} tokens", where=where, field="total_tokens",
                                   fix="add data, lower total_tokens, or raise max_epochs")
            total = sum(sh[t] for t in takers)
            for k in takers:
                sh[k] += freed * sh[k] / total
    raise FactoryError("the shares did not settle inside the sources' max_epochs", where=where, field="sources",
                       fix="add data, lower total_tokens, or raise max_epochs")


def plan(mix_path: str | Path, data_root: str | Path = ".", tokens: int | None = None,
         out: str | Path | None = None, fit: str | None = None) -> dict[str, Any]:
    """Plan the mix in `mix_path` against the tokenized sources under `data_root` (any fsspec URL);
    write `out` (any fsspec URL) if given."""
    if out:
        check_store(str(out))
    cfg = load_mix(mix_path, tokens=tokens, fit=fit)
    p, _ = make_plan(cfg, data_root, str(mix_path))
    if out:
        write_plan(p, out)
    return p


def write_plan(p: dict[str, Any], out: str | Path) -> str:
    """Write plan.json to `out` (any fsspec URL) in one piece: temp + rename locally, one PUT on a store."""
    return put_bytes(str(out), (json.dumps(p, indent=2) + "\n").encode())


def totals(p: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Per source over all phases: kind, unique tokens, tokens drawn, epochs, max_epochs."""
    out: dict[str, dict[str, Any]] = {}
    for ph in p["phases"]:
        for s in ph["sources"]:
            t = out.setdefault(s["name"], {"kind": s["kind"], "unique_tokens": s["unique_tokens"], "tokens": 0,
                                            "epochs": 0.0, "max_epochs": s["max_epochs"]})
            t["tokens"] += s["tokens"]
            t["epochs"] = round(t["epochs"] + s["epochs"], 4)
    return out


def plan_table(p: dict[str, Any]) -> Table:
    t = Table(title=f"mix {p['mix']}: {human(p['total_tokens'])} tokens, seq_len {p['seq_len']}, vocab {p['vocab_size']}")
    for c in ("phase", "source", "kind", "share", "unique", "drawn", "epochs", "max ep."):
        t.add_column(c, justify="left" if c in ("phase", "source", "kind") else "right", no_wrap=True)
    t.caption = "unique: tokens in the shards; drawn: tokens trained on; epochs: drawn windows / windows"
    tot = totals(p)
    multi = len(p["phases"]) > 1
    for ph in p["phases"]:
        for s in ph["sources"]:
            over = s["max_epochs"] is not None and tot[s["name"]]["epochs"] > s["max_epochs"]
            t.add_row(ph["name"], s["name"], s["kind"], f"{s['share']:.1%}", human(s["unique_tokens"]), human(s["tokens"]),
                      f"[yellow]{s['epochs']:.2f}[/]" if over else f"{s['epochs']:.2f}",
                      "-" if s["max_epochs"] is None else f"{s['max_epochs']:g}")
        t.add_section()
    if multi:
        for name, s in tot.items():
            over = s["max_epochs"] is not None and s["epochs"] > s["max_epochs"]
            t.add_row("[bold]all", name, s["kind"], f"{s['tokens'] / p['total_tokens']:.1%}", human(s["unique_tokens"]),
                      human(s["tokens"]), f"[yellow]{s['epochs']:.2f}[/]" if over else f"{s['epochs']:.2f}",
                      "-" if s["max_epochs"] is None else f"{s['max_epochs']:g}")
    return t


def teacher_share(p: dict[str, Any]) -> dict[str, Any]:
    """A plan's teacher-made (non-web) share of its training tokens, as asked and as drawn, and the capped sources."""
    rows = [(r, ph["tokens"]) for ph in p["phases"] for r in ph["sources"] if r["kind"] != "web"]
    return {"asked": round(sum(r.get("asked_share", r["share"]) * t for r, t in rows) / p["total_tokens"], 3),
            "drawn": round(sum(r["tokens"] for r, _ in rows) / p["total_tokens"], 3), "capped": p.get("capped", [])}
