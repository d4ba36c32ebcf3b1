"""Score a causal LM on benchmarks given as data: a folder with `benchmark.yaml` + `data.jsonl`, or
a bare JSONL file in lm-eval's form (question / choices / answer); either may sit at an fsspec URL
(s3://, gs://), read through a local copy.

Types: `mc_loglik` (the choice with the highest log-likelihood given the prompt; normalisation
none | length (per token) | bytes (per UTF-8 byte, lm-eval's acc_norm)), `gen_exact_match`
(greedy decoding, then exact / first-word / number match) and `val_loss` (mean token loss over
documents in `text`, or over the tail windows of a folder of datatrove `.ds` shards).

`model(tokens [B, T]) -> logits [B, T, V]`; the tokenizer is a `tokenizers.Tokenizer`. Scoring is
batched (sorted by length, right-padded: causal attention makes padding after a row harmless)
and deterministic; log-probabilities are gathered on the model's device. `Evaluator` loads and
tokenizes the benchmarks once and scores every multiple-choice and loss benchmark of a model in
one pass; each multiple-choice benchmark also gives `<name>_bpb`, the bits per byte of the correct
answer. Only torch, numpy, yaml, tokenizers and the stdlib are used.
"""

from __future__ import annotations

import json
import math
import re
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F
import yaml

TYPES = ("mc_loglik", "gen_exact_match", "val_loss")
NORMS = ("none", "length", "bytes")
BOS_NAMES = ("<|endoftext|>", "<|begin_of_text|>", "<s>", "<bos>", "</s>", "<eos>", "<|eos|>")
_LETTERS = "ABCDEFGHIJ"


class BenchmarkError(ValueError):
    """A benchmark file that cannot be read; the message names the file and the field."""


# --------------------------------------------------------------------------- loading

def _read_jsonl(path: Path) -> list[dict]:
    text = path.read_text()
    if path.suffix == ".json" and text.lstrip().startswith("["):
        return json.loads(text)
    rows = []
    for i, line in enumerate(text.splitlines(), 1):
        if line.strip():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as e:
                raise BenchmarkError(f"{path}: line {i} is not JSON ({e.msg})") from None
    return rows


def _answer_index(ans: Any, choices: list[str], where: str) -> int:
    if isinstance(ans, bool):
        raise BenchmarkError(f"{where}: field 'answer' is a boolean")
    if isinstance(ans, int) and 0 <= ans < len(choices):
        return ans
    if isinstance(ans, str):
        s = ans.strip()
        if s.isdigit() and int(s) < len(choices):
            return int(s)
        if len(s) == 1 and s.upper() in _LETTERS[: len(choices)]:
            return _LETTERS.index(s.upper())
        if s in choices:
            return choices.index(s)
    raise BenchmarkError(f"{where}: field 'answer' ({ans!r}) is not an index, letter or text of one of {len(choices)} choices")


def local_copy(url: str) -> Path:
    """A benchmark folder (its top-level files) or file at a URL, copied to a local temp folder."""
    import hashlib
    import tempfile

    from train import storage

    url = url.rstrip("/")
    dest = Path(tempfile.gettempdir()) / "benchmarks" / hashlib.sha256(url.encode()).hexdigest()[:16] / url.rsplit("/", 1)[-1]
    if storage.exists(storage.join(url, "benchmark.yaml")):
        fs, root = storage.fs_path(url)
        with storage.errors(url):
            for f in fs.find(root, maxdepth=1):  # files only
                storage.get_file(fs.unstrip_protocol(f), dest / f.rsplit("/", 1)[-1])
    elif storage.exists(url):
        storage.get_file(url, dest)
    else:
        raise BenchmarkError(f"{url}: benchmark not found")
    return dest


def load_benchmark(path: str | Path) -> tuple[dict, list[dict]]:
    """(spec, items); items normalised to question / choices / answer (index for mc, text for gen)."""
    if "://" in str(path) and not str(path).startswith("file://"):
        path = local_copy(str(path))
    p = Path(path)
    if p.is_dir():
        if not (p / "benchmark.yaml").exists():
            raise BenchmarkError(f"{p}: no benchmark.yaml (a benchmark folder holds benchmark.yaml and data.jsonl)")
        spec = yaml.safe_load((p / "benchmark.yaml").read_text()) or {}
        data = p / spec.get("data", "data.jsonl")
    elif p.is_file():
        spec, data = {"name": p.stem}, p
    else:
        raise BenchmarkError(f"{p}: benchmark not found")
    spec.setdefault("name", p.stem if p.is_file() else p.name)
    fields = {"question": "question", "choices": "choices", "answer": "answer", "text": "text", **(spec.get("fields") or {})}
    if spec.get("type") == "val_loss" and spec.get("ds"):
        ds = Path(spec["ds"]) if Path(spec["ds"]).is_absolute() else p / spec["ds"]
        return {**spec, "ds": str(ds)}, []
    if not data.exists():
        raise BenchmarkError(f"{data}: data file not found (benchmark {spec['name']})")
    raw = _read_jsonl(data)
    if not raw:
        raise BenchmarkError(f"{data}: no items")
    if "type" not in spec:  # a bare lm-eval style file: choices -> multiple choice, else generative
        spec["type"] = "mc_loglik" if raw[0].get(fields["choices"]) else "gen_exact_match"
        spec.setdefault("prompt", "Question: {question}\nAnswer:")
    if spec["type"] not in TYPES:
        raise BenchmarkError(f"{p}: field 'type' is {spec['type']!r}; use one of {TYPES}")
    if spec.get("normalisation", "none") not in NORMS:
        raise BenchmarkError(f"{p}: field 'normalisation' is {spec['normalisation']!r}; use one of {NORMS}")
    items = []
    for i, r in enumerate(raw, 1):
        where = f"{data}: item {i}"
        if spec["type"] == "val_loss":
            if not isinstance(r.get(fields["text"]), str):
                raise BenchmarkError(f"{where}: field '{fields['text']}' missing")
            items.append({"text": r[fields["text"]]})
            continue
        q = r.get(fields["question"])
        if not isinstance(q, str):
            raise BenchmarkError(f"{where}: field '{fields['question']}' missing or not text")
        if spec["type"] == "mc_loglik":
            ch = r.get(fields["choices"])
            if isinstance(ch, dict) and "text" in ch:  # ARC-style {"text": [...], "label": [...]}
                ch = ch["text"]
            if not isinstance(ch, list) or len(ch) < 2:
                raise BenchmarkError(f"{where}: field '{fields['choices']}' must list 2 or more choices")
            items.append({"question": q, "choices": [str(c) for c in ch], "answer": _answer_index(r.get(fields["answer"]), ch, where)})
        else:
            a = r.get(fields["answer"])
            answers = [str(x) for x in a] if isinstance(a, list) else [str(a)] if a is not None else []
            if not answers:
                raise BenchmarkError(f"{where}: field '{fields['answer']}' missing")
            items.append({"question": q, "answers": answers})
    return spec, items


# --------------------------------------------------------------------------- tokens

def bos_id(tokenizer) -> int | None:
    """The document-separator token the training data starts documents with, if the tokenizer has one."""
    for name in BOS_NAMES:
        i = tokenizer.token_to_id(name)
        if i is not None:
            return i
    return None


def _encode(tokenizer, texts: list[str]) -> list[list[int]]:
    return [e.ids for e in tokenizer.encode_batch(texts, add_special_tokens=False)] if texts else []


def _device(model) -> torch.device:
    try:
        return next(model.parameters()).device
    except (AttributeError, StopIteration):
        return torch.device("cpu")


def _max_len(model) -> int:
    a = getattr(model, "args", None) or getattr(model, "config", None)
    return int(getattr(a, "max_seq_len", None) or getattr(a, "max_position_embeddings", None) or 1024)


# --------------------------------------------------------------------------- scoring primitives

@torch.inference_mode()
def ll_batches(requests: list[tuple[list[int], list[int]]], batch_size: int, max_len: int) -> list[tuple]:
    """The padded batches of a loglikelihoods pass, made once (an Evaluator keeps them for every model
    it scores): length-sorted, each (request indices, inputs, targets, continuation mask), on the
    host (pinned where a GPU will read them)."""
    seqs = []
    for i, (ctx, cont) in enumerate(requests):
        full = (ctx + cont)[-(max_len + 1):]
        seqs.append((i, full, min(len(cont), len(full) - 1)))
    seqs.sort(key=lambda s: -len(s[1]))
    pin = torch.cuda.is_available()
    out = []
    for b in range(0, len(seqs), batch_size):
        chunk = seqs[b: b + batch_size]
        T = len(chunk[0][1]) - 1
        inp = torch.zeros(len(chunk), T, dtype=torch.long)
        tgt = torch.zeros(len(chunk), T, dtype=torch.long)
        mask = torch.zeros(len(chunk), T, dtype=torch.bool)
        for r, (_, full, nc) in enumerate(chunk):
            L = len(full) - 1
            inp[r, :L] = torch.tensor(full[:-1])
            tgt[r, :L] = torch.tensor(full[1:])
            mask[r, L - nc: L] = True
        if pin:
            inp, tgt, mask = inp.pin_memory(), tgt.pin_memory(), mask.pin_memory()
        out.append(([c[0] for c in chunk], inp, tgt, mask))
    return out


@torch.inference_mode()
def loglikelihoods(model, requests: list[tuple[list[int], list[int]]], batch_size: int = 32,
                   max_len: int | None = None, batches: list[tuple] | None = None) -> list[float]:
    """Sum of log p(continuation | context) for each (context ids, continuation ids) pair: one
    length-sorted batched pass (`batches`: ll_batches of these requests, made ahead), log-probabilities
    gathered on the model's device and read back once at the end."""
    dev = _device(model)
    batches = batches if batches is not None else ll_batches(requests, batch_size, max_len or _max_len(model))
    sums, order = [], []
    for idx, inp, tgt, mask in batches:
        lp = F.log_softmax(model(inp.to(dev, non_blocking=True)).float(), dim=-1)
        got = lp.gather(-1, tgt.to(dev, non_blocking=True)[..., None])[..., 0]
        sums.append(torch.where(mask.to(dev, non_blocking=True), got, torch.zeros((), device=dev)).sum(-1))
        order += idx
    out = [0.0] * len(requests)
    for i, v in zip(order, torch.cat(sums).cpu().tolist() if sums else []):
        out[i] = float(v)
    return out


@torch.inference_mode()
def greedy(model, prompts: list[list[int]], max_new_tokens: int, batch_size: int = 32,
           max_len: int | None = None, stop_ids: set[int] | None = None) -> list[list[int]]:
    """Greedy continuation ids for each prompt (batched; no KV cache, short answers only)."""
    max_len = max_len or _max_len(model)
    out: list[list[int]] = [[] for _ in prompts]
    order = sorted(range(len(prompts)), key=lambda i: -len(prompts[i]))
    for b in range(0, len(order), batch_size):
        idx = order[b: b + batch_size]
        rows = [prompts[i][-(max_len - max_new_tokens):] or [0] for i in idx]
        lens = [len(r) for r in rows]
        buf = torch.zeros(len(rows), max(lens) + max_new_tokens, dtype=torch.long)
        for r, ids in enumerate(rows):
            buf[r, : len(ids)] = torch.tensor(ids)
        done = [False] * len(rows)
        for _ in range(max_new_tokens):
            logits = model(buf[:, : max(lens)].to(_device(model)))
            nxt = logits[torch.arange(len(rows), device=logits.device), torch.tensor(lens, device=logits.device) - 1]
            nxt = nxt.argmax(-1).cpu().tolist()
            for r in range(len(rows)):
                if done[r]:
                    continue
                t = int(nxt[r])
                buf[r, lens[r]] = t
                lens[r] += 1
                out[idx[r]].append(t)
                done[r] = stop_ids is not None and t in stop_ids
            if all(done):
                break
    return out


def normalise(s: str) -> str:
    s = re.sub(r"\s+", " ", s.strip().lower())
    return s.strip(" .,;:!?\"'()[]")


def _match(gen: str, answers: list[str], mode: str, stops: list[str]) -> bool:
    for st in stops:
        if st:
            gen = gen.split(st)[0]
    if mode == "number":
        m = re.search(r"-?\d+(?:\.\d+)?", gen)
        return bool(m) and any(m.group(0) == a.strip() for a in answers)
    if mode == "first_word":
        w = gen.strip().split()
        return bool(w) and any(normalise(w[0]) == normalise(a) for a in answers)
    return any(normalise(gen) == normalise(a) for a in answers)


def _stderr(xs: list[float]) -> float:
    n = len(xs)
    return float(np.std(xs, ddof=1) / math.sqrt(n)) if n > 1 else float("nan")


# --------------------------------------------------------------------------- benchmark types

def _prompt(spec: dict, item: dict) -> str:
    return spec.get("prompt", "{question}").format(question=item["question"])


def mc_requests(tokenizer, spec: dict, items: list[dict]) -> list[tuple[list[int], list[int]]]:
    """One (context, continuation) pair per choice of every item, in item order."""
    pre, bos = spec.get("choice_prefix", " "), bos_id(tokenizer)
    ctxs = _encode(tokenizer, [_prompt(spec, it) for it in items])
    conts = _encode(tokenizer, [pre + c for it in items for c in it["choices"]])
    reqs, k = [], 0
    for it, ctx in zip(items, ctxs):
        ctx = ([bos] if bos is not None else []) + ctx
        for _ in it["choices"]:
            reqs.append((ctx, conts[k] or [0]))
            k += 1
    return reqs


def mc_result(spec: dict, items: list[dict], reqs: list, ll: list[float]) -> dict:
    """Accuracy under the benchmark's normalisation, and `bpb`: the bits per UTF-8 byte of the correct
    answer given the prompt (lower is better), a likelihood metric that moves before accuracy does
    in small models."""
    norm, pre = spec.get("normalisation", "none"), spec.get("choice_prefix", " ")
    correct, bpb, k = [], [], 0
    for it in items:
        scores = []
        for j, c in enumerate(it["choices"]):
            s = ll[k]
            if j == it["answer"]:
                bpb.append(-s / math.log(2) / max(1, len((pre + c).encode())))
            if norm == "length":
                s /= max(1, len(reqs[k][1]))
            elif norm == "bytes":
                s /= max(1, len((pre + c).encode()))
            scores.append(s)
            k += 1
        correct.append(float(int(np.argmax(scores)) == it["answer"]))
    return {"score": float(np.mean(correct)), "n": len(items), "stderr": _stderr(correct), "metric": f"acc({norm})",
            "bpb": float(np.mean(bpb)), "bpb_stderr": _stderr(bpb)}


def score_mc(model, tokenizer, spec: dict, items: list[dict], batch_size: int = 32) -> dict:
    reqs = mc_requests(tokenizer, spec, items)
    return mc_result(spec, items, reqs, loglikelihoods(model, reqs, batch_size))


def score_gen(model, tokenizer, spec: dict, items: list[dict], batch_size: int = 32) -> dict:
    bos = bos_id(tokenizer)
    prompts = [([bos] if bos is not None else []) + ids for ids in _encode(tokenizer, [_prompt(spec, it) for it in items])]
    stops = list(spec.get("stop", ["\n"]))
    stop_ids = {i for s in stops for i in [tokenizer.token_to_id(s)] if i is not None} | ({bos} if bos is not None else set())
    gens = greedy(model, prompts, int(spec.get("max_new_tokens", 8)), batch_size, stop_ids=stop_ids or None)
    texts = [tokenizer.decode([t for t in g if t != bos]) for g in gens]
    mode = spec.get("match", "exact")
    correct = [float(_match(t, it["answers"], mode, stops)) for t, it in zip(texts, items)]
    return {"score": float(np.mean(correct)), "n": len(items), "stderr": _stderr(correct), "metric": f"em({mode})",
            "examples": [{"prompt": it["question"][-80:], "gen": t, "answer": it["answers"][0]} for t, it in zip(texts[:3], items[:3])]}


def read_ds_tokens(folder: str | Path) -> np.ndarray:
    """All tokens of a folder of datatrove `.ds` shards (token width from the metadata, default uint16)."""
    files = sorted(Path(folder).rglob("*.ds"))
    if not files:
        raise BenchmarkError(f"{folder}: no .ds files")
    parts = []
    for f in files:
        width = 2  # datatrove's .ds.metadata first line: "<tokenizer>|<bytes per token>"
        meta = f.with_name(f.name + ".metadata")
        if meta.exists():
            tail = (meta.read_text().splitlines() or [""])[0].rsplit("|", 1)[-1].strip()
            width = 4 if tail == "4" else 2
        parts.append(np.memmap(f, dtype=np.uint16 if width == 2 else np.uint32, mode="r"))
    return np.concatenate(parts)


def val_windows(tokenizer, spec: dict, items: list[dict], max_len: int) -> list[list[int]]:
    """Token windows of seq_len + 1: the tail of a `.ds` folder, or the documents in `text`."""
    seq = min(int(spec.get("seq_len", 256)), max_len)
    if spec.get("ds"):
        toks = read_ds_tokens(spec["ds"])
        nwin = min(int(spec.get("windows", 64)), len(toks) // (seq + 1))
        start = len(toks) - nwin * (seq + 1)  # the tail of the source
        return [toks[start + i * (seq + 1): start + (i + 1) * (seq + 1)].astype(np.int64).tolist() for i in range(nwin)]
    bos = bos_id(tokenizer)
    windows = []
    for ids in _encode(tokenizer, [it["text"] for it in items]):
        ids = ([bos] if bos is not None else []) + ids
        windows += [ids[i: i + seq + 1] for i in range(0, max(1, len(ids) - 1), seq) if len(ids[i: i + seq + 1]) > 1]
    return windows


def val_result(windows: list[list[int]], ll: list[float]) -> dict:
    counts = [len(w) - 1 for w in windows]
    per_win = [-v / c for v, c in zip(ll, counts)]
    return {"score": -sum(ll) / max(1, sum(counts)), "n": len(windows), "stderr": _stderr(per_win),
            "metric": "loss", "tokens": sum(counts)}


def score_val(model, tokenizer, spec: dict, items: list[dict], batch_size: int = 16) -> dict:
    windows = val_windows(tokenizer, spec, items, _max_len(model))
    return val_result(windows, loglikelihoods(model, [([], w) for w in windows], batch_size))


SCORERS: dict[str, Callable] = {"mc_loglik": score_mc, "gen_exact_match": score_gen, "val_loss": score_val}


class Evaluator:
    """Benchmarks loaded and tokenized once, scored for any number of models: every multiple-choice
    and loss benchmark in one length-sorted batched pass, generative ones after it. Each
    multiple-choice benchmark also yields `<name>_bpb` (bits per byte of the correct answer)."""

    def __init__(self, tokenizer, bench_dirs: list[str | Path], max_items: int | None = None,
                 batch_size: int = 32, max_len: int = 2048):
        self.tokenizer, self.batch_size = tokenizer, batch_size
        self.benches = []  # (spec, items, requests or windows)
        for path in bench_dirs:
            spec, items = load_benchmark(path)
            if max_items is not None:
                items = items[:max_items]
            if spec["type"] == "mc_loglik":
                reqs = mc_requests(tokenizer, spec, items)
            elif spec["type"] == "val_loss":
                reqs = [([], w) for w in val_windows(tokenizer, spec, items, max_len)]
            else:
                reqs = None
            self.benches.append((spec, items, reqs))
        flat = [r for _, _, reqs in self.benches if reqs is not None for r in reqs]
        self.flat, self.batches = flat, ll_batches(flat, batch_size, max_len) if flat else []

    def __call__(self, model) -> dict[str, dict]:
        was_training = getattr(model, "training", False)
        if hasattr(model, "eval"):
            model.eval()
        try:
            return self._score(model)
        finally:
            if was_training:
                model.train()

    def _score(self, model) -> dict[str, dict]:
        results: dict[str, dict] = {}
        flat = self.flat
        t0 = time.perf_counter()
        ll = loglikelihoods(model, flat, batches=self.batches) if flat else []
        pass_s = time.perf_counter() - t0
        k = 0
        for spec, items, reqs in self.benches:
            t0 = time.perf_counter()
            if reqs is None:
                r = SCORERS[spec["type"]](model, self.tokenizer, spec, items, self.batch_size)
                r["seconds"] = round(time.perf_counter() - t0, 3)
            else:
                part, k = ll[k: k + len(reqs)], k + len(reqs)
                r = mc_result(spec, items, reqs, part) if spec["type"] == "mc_loglik" else val_result([w for _, w in reqs], part)
                r["seconds"] = round(pass_s * len(reqs) / max(1, len(flat)), 3)  # its share of the one pass
            r["higher_is_better"] = bool(spec.get("higher_is_better", spec["type"] != "val_loss"))
            results[spec["name"]] = r
            if "bpb" in r:
                results[f"{spec['name']}_bpb"] = {"score": r["bpb"], "n": r["n"], "stderr": r["bpb_stderr"], "metric": "bpb",
                                                  "higher_is_better": False, "seconds": 0.0}
        return results


def evaluate(model, tokenizer, bench_dirs: list[str | Path], max_items: int | None = None,
             batch_size: int = 32) -> dict[str, dict]:
    """{benchmark name: {score, n, stderr, metric, higher_is_better, seconds}} for each benchmark
    (and `<name>_bpb` for each multiple-choice one)."""
    return Evaluator(tokenizer, bench_dirs, max_items, batch_size, _max_len(model))(model)
