"""Faithfulness of seed-grounded documents: names, numbers and dates that the seed does not support,
and supported ones put in a relation the seed does not make.

A rule-based extractor (offline, no model): numbers of two or more digits or with a decimal part,
and capitalized word runs that do not merely open a sentence. A span is supported when it occurs in
the seed text, its title or topic, or the recipe's variables, or when each of its words does.

Relations: a small teacher often rewords its seed with every name and number right but joined
wrongly ("extends into the Tibetan Plateau to the east", where the seed has the east for two other
provinces). Within one output sentence, each name, number or compass direction next to others (at
most `window` words apart) must have at least one of those neighbours near it in the seed too:
within `window` words, or in the same or a neighbouring seed sentence. The document's subject (its
title's words) is next to everything and is left out; spans the seed lacks are the span check's.
"""

from __future__ import annotations

import re
from typing import Any

from factory.curate.filters import Step, _extra, _meta, extra_of
from factory.curate.io import reject

_NUM = re.compile(r"(?<![\w.])\d[\d,]*(?:\.\d+)?(?=(?:st|nd|rd|th|s)?(?!\w))")
_CAP = re.compile(r"[A-Z][\w'’\-]*(?:(?:\s+(?:of|the|de|da|du|del|von|van|der|la|le|y))*\s+[A-Z][\w'’\-]*)*")
_OPENERS = re.compile(r"(?:^|[.!?:;\"“(\[]\s*|\n\s*(?:[-*•>#]+|\d+[.)])?\s*)$")
_WORD = re.compile(r"[\w'’]+")
_JOIN = {"of", "the", "de", "da", "du", "del", "von", "van", "der", "la", "le", "y"}
# capitalized words that open clauses or label parts of a document, never names by themselves
_STOP = set("""a an the this that these those it its he she his her they their them we our you your i in on at
of for to by with from as and or but if when while after before during since until so because although though
what who whom whose which where why how there here then than also however therefore thus yes no not is are was
were be been has have had do does did can could will would may might must should one two three four five six seven
eight nine ten first second third next finally today question answer step note summary example key fact facts
introduction conclusion overview definition lesson chapter section part title topic background draft revision
q a mr mrs ms dr st about into onto over under more most very such many much other some each every like only
just even both either neither whether within without between among through upon well make made known called used
using often also very been being these those them itself which while would could should shall""".split())


_SENT = re.compile(r"(?<=[.!?;])\s+|\n+")
_TOKEN = re.compile(r"(?<![\w.])\d[\d,]*(?:\.\d+)?|[\w'’]+")
DIRECTIONS = frozenset("""north south east west northern southern eastern western northeast northwest southeast
southwest northeastern northwestern southeastern southwestern""".split())


def _norm(s: str) -> str:
    return " ".join(_WORD.findall(s.lower().replace("’", "'"))).replace("'s ", " ").removesuffix("'s")


def _num(s: str) -> str:
    s = s.replace(",", "")
    return s[:-2] if s.endswith(".0") else s


def spans(text: str) -> list[tuple[str, str]]:
    """(kind, span) pairs: "number" or "name", in order of appearance."""
    out: list[tuple[str, str]] = []
    for m in _NUM.finditer(text):
        v = _num(m.group(0))
        if len(v.replace(".", "")) >= 2 and not _list_marker(text, m):
            out.append(("number", v))
    for m in _CAP.finditer(text):
        words = m.group(0).split()
        if _OPENERS.search(text[:m.start()]) or m.start() == 0:
            while words and words[0].lower().strip("'’") in _STOP | _JOIN:
                words = words[1:]
            if len(words) == 1 and not _capitalized_elsewhere(text, words[0], m.start()):
                continue  # a single word opening a sentence: most likely not a name
        while words and words[-1].lower() in _JOIN:
            words = words[:-1]
        if words and not all(w.lower().strip("'’") in _STOP for w in words):
            out.append(("name", " ".join(words)))
    return out


def _list_marker(text: str, m: re.Match) -> bool:
    line_start = text.rfind("\n", 0, m.start()) + 1
    return not text[line_start:m.start()].strip() and text[m.end():m.end() + 1] in (".", ")")


def _capitalized_elsewhere(text: str, word: str, at: int) -> bool:
    for m in re.finditer(rf"(?<![\w]){re.escape(word)}(?![\w])", text):
        if m.start() != at and not _OPENERS.search(text[:m.start()]):
            return True
    return False


def tokens(text: str) -> list[str]:
    """Lowercased words (a trailing 's cut) and numbers as `spans` writes them, in order."""
    out = []
    for m in _TOKEN.finditer(text):
        t = m.group(0)
        out.append(_num(t) if t[0].isdigit() else t.lower().replace("’", "'").removesuffix("'s"))
    return out


class Support:
    """What a seed supports: its normalized text, its words and its numbers, and where each token
    stands (position, sentence) for relations."""

    def __init__(self, *texts: str):
        joined = "\n".join(t for t in texts if t)
        self.text = f" {_norm(joined)} "
        self.words = set(self.text.split())
        self.numbers = {_num(m.group(0)) for m in _NUM.finditer(joined)}
        self.stems = set(content_words(joined))
        self.seq: list[str] = []
        self.sentence: list[int] = []  # the seed sentence of each token of seq
        for k, sent in enumerate(_SENT.split(joined)):
            t = tokens(sent)
            self.seq += t
            self.sentence += [k] * len(t)
        self._at: dict[str, list[int]] = {}
        for i, t in enumerate(self.seq):
            self._at.setdefault(t, []).append(i)

    def where(self, run: tuple[str, ...]) -> list[int]:
        """Positions in the seed where the token run starts."""
        n = len(run)
        return [i for i in self._at.get(run[0], []) if tuple(self.seq[i:i + n]) == run] if run else []

    def supports(self, kind: str, span: str) -> bool:
        if kind == "number":
            return span in self.numbers
        n = _norm(span)
        if f" {n} " in self.text:
            return True
        words = [w for w in n.split() if w not in _JOIN]
        return bool(words) and all(w in self.words or w.removesuffix("s") in self.words for w in words)


def _stem(w: str) -> str:
    for suf in ("ing", "ed", "es", "s", "ly"):
        if len(w) > len(suf) + 3 and w.endswith(suf):
            return w[: -len(suf)]
    return w


def content_words(text: str) -> list[str]:
    """Lowercased words of four or more letters that are not function words, stemmed."""
    return [_stem(w) for w in _WORD.findall(text.lower()) if len(w) >= 4 and w.isalpha() and w not in _STOP]


def novelty(text: str, support: Support) -> float:
    """The share of a document's content words that its seed never uses (0: all from the seed)."""
    words = content_words(text)
    if not words:
        return 0.0
    known = support.stems
    return sum(w not in known for w in words) / len(words)


def unsupported(text: str, support: Support) -> tuple[list[str], int]:
    """(unsupported spans, deduplicated, in order; how many distinct spans were checked)."""
    seen: dict[str, bool] = {}
    for kind, span in spans(text):
        if span not in seen:
            seen[span] = support.supports(kind, span)
    return [s for s, ok in seen.items() if not ok], len(seen)


def _items(sentence: str) -> list[tuple[str, tuple[str, ...], int]]:
    """(span, its tokens, its token position) of a sentence's names, numbers and lowercase compass
    directions, each span once."""
    toks = tokens(sentence)
    out, seen = [], set()
    for _, span in spans(sentence):
        run = tuple(tokens(span))
        at = next((i for i in range(len(toks) - len(run) + 1) if tuple(toks[i:i + len(run)]) == run), None)
        if run and at is not None and run not in seen:
            seen.add(run)
            out.append((span, run, at))
    for i, (m, t) in enumerate(zip(_TOKEN.finditer(sentence), toks)):
        if t in DIRECTIONS and m.group(0).islower() and (t,) not in seen:
            seen.add((t,))
            out.append((t, (t,), i))
    return out


def relations(text: str, support: Support, subject: str = "", window: int = 12,
              sentences: int = 1) -> tuple[list[str], int]:
    """(items whose neighbours in an output sentence are none of them near it in the seed, as
    "item (near a, b)"; how many items with neighbours were checked). Near in the seed: at most
    `window` tokens apart, or at most `sentences` seed sentences apart."""
    subj = set(tokens(subject)) - _STOP - _JOIN
    bad, checked = [], 0
    for sent in _SENT.split(text):
        its = []
        for span, run, at in _items(sent):
            where = support.where(run)
            if (where or run[0] in DIRECTIONS) and not set(run) & subj:
                its.append((span, run, at, where))
        for span, run, at, where in its:
            near = [b for b in its if b[1] != run and not set(b[1]) & set(run) and abs(b[2] - at) <= window + len(run)
                    and not (run[0] in DIRECTIONS and b[1][0] in DIRECTIONS)]  # a direction belongs to a name
            if not near:
                continue
            checked += 1
            if not any(abs(p - q) <= window + max(len(run), len(b[1]))
                       or abs(support.sentence[p] - support.sentence[q]) <= sentences
                       for b in near for p in where for q in b[3]):
                bad.append(f"{span} (near {', '.join(b[0] for b in near)})")
    return bad, checked


def _strings(v: Any) -> list[str]:
    if isinstance(v, str):
        return [v]
    if isinstance(v, dict):
        return [s for x in v.values() for s in _strings(x)]
    if isinstance(v, list):
        return [s for x in v for s in _strings(x)]
    return []


class SeedTexts:
    """seed_id -> (text, title/topic/description) from seed stage folders, loaded once per process."""

    def __init__(self, folders: list[str]):
        self.folders = list(folders)
        self._map: dict[str, str] | None = None

    def __getstate__(self):
        return {"folders": self.folders, "_map": None}

    def get(self, seed_id: str | None) -> str | None:
        if self._map is None:
            self._map = load_seeds(self.folders)
        return self._map.get(seed_id) if seed_id else None


def load_seeds(folders: list[str]) -> dict[str, str]:
    import fsspec
    import pyarrow.parquet as pq

    from factory.curate.io import shard_files

    out: dict[str, str] = {}
    for url in folders:
        root, files = shard_files(url)
        fs, path = fsspec.core.url_to_fs(root)
        for f in files:
            with fs.open(f"{path}/{f}", "rb") as fh:
                for r in pq.ParquetFile(fh).read(columns=["id", "text", "meta"]).to_pylist():
                    m = r.get("meta") or {}
                    sid = m.get("seed_id") or r["id"]
                    extra = extra_of(m)
                    ctx = " \n".join(_strings({k: extra.get(k) for k in ("title", "topic", "description")}))
                    out[sid] = f"{r['text']}\n{ctx}"
                    out.setdefault(r["id"], out[sid])
    return out


class FaithfulnessFilter(Step):
    """Reject a document when more than `max_unsupported` of its names and numbers (and at least
    `min_unsupported` of them) are not supported by its seed, or when more than `max_relations` of
    them stand next to others the seed never puts near them (`relation_window` words; 0: off); the
    spans and relations go in the rejected row."""

    name = reason = "unfaithful"

    def __init__(self, seeds: list[str], max_unsupported: float, min_unsupported: int, skip_recipes: list[str],
                 max_novelty: float = 1.0, novelty_per_recipe: dict[str, float] | None = None,
                 relation_window: int = 0, relation_sentences: int = 1, max_relations: int = 0,
                 exclusion_writer=None):
        super().__init__(exclusion_writer)
        self.relation_window, self.relation_sentences, self.max_relations = \
            relation_window, relation_sentences, max_relations
        self.seeds = SeedTexts(seeds)
        self.max_unsupported, self.min_unsupported = max_unsupported, min_unsupported
        self.skip = set(skip_recipes)
        self.max_novelty, self.novelty_per_recipe = max_novelty, dict(novelty_per_recipe or {})

    def filter(self, doc):
        meta = _meta(doc)
        if meta.get("recipe") in self.skip:
            return True
        seed = self.seeds.get(meta.get("seed_id"))
        if seed is None:
            return True
        variables = " \n".join(s for k, v in _extra(doc).items() if k not in ("verdicts", "stripped")
                               for s in _strings(v))
        support = Support(seed, variables)
        bad, total = unsupported(doc.text, support)
        novel = novelty(doc.text, support)
        self.stat_update("checked")
        spans_ = f"{len(bad)}/{total} unsupported: " + "; ".join(bad)[:400]
        if total and len(bad) >= self.min_unsupported and len(bad) / total > self.max_unsupported:
            return reject(doc, self.reason, spans_)
        if self.relation_window:
            subject = _extra(doc).get("title") or str(meta.get("seed_id") or "").partition(":")[2]
            rel, checked = relations(doc.text, support, str(subject), self.relation_window, self.relation_sentences)
            if len(rel) > self.max_relations:
                return reject(doc, self.reason, f"{len(rel)}/{checked} relations the seed does not make: "
                              + "; ".join(rel)[:400] + f"; {spans_}")
        limit = self.novelty_per_recipe.get(meta.get("recipe"), self.max_novelty)
        if novel > limit:
            return reject(doc, self.reason, f"novel words {novel:.2f} > {limit}; {spans_}")
        return True
