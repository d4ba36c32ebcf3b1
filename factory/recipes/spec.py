"""The recipe file format (YAML), validated with pydantic; templates are checked at load time.

A recipe is data: a user adds one by adding a YAML file (and optional .j2 templates next to it).
Names resolve to the built-in folder first, then to the user folders given, then to a path.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

from jinja2 import StrictUndefined, TemplateNotFound, TemplateSyntaxError
from jinja2.sandbox import SandboxedEnvironment
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from factory.core.config import read_text_file, read_yaml, validate
from factory.core.errors import FactoryError

BUILTIN = Path(__file__).parent / "builtin"
# BPE tokenizers of today's teachers (SmolLM2, Llama 3, Qwen 2.5, GPT-4o) spend about 1.3 tokens per English
# word; 1.35 leaves a little room, so a completion asked for N words fits in ceil(1.35 N) tokens
TOKENS_PER_WORD = 1.35
USER_DIRS_ENV = "FACTORY_RECIPES"  # os.pathsep-separated folders of user recipes

SAMPLING_KEYS = {
    "temperature", "top_p", "max_tokens", "stop", "seed", "presence_penalty", "frequency_penalty",
    "response_format", "n", "top_k", "min_p", "repeat_penalty",
}


def _check_sampling(v: dict[str, Any]) -> dict[str, Any]:
    bad = sorted(set(v) - SAMPLING_KEYS)
    if bad:
        raise ValueError(f"unknown sampling keys {bad}; allowed: {sorted(SAMPLING_KEYS)}")
    return v


class StepSpec(BaseModel):
    """One teacher call (or `repeat` independent calls) with its templates and parser."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)
    name: str = Field(pattern=r"^[a-z_][a-z0-9_]*$")
    system: str | None = None
    system_file: str | None = None
    user: str | None = None
    user_file: str | None = None
    sampling: dict[str, Any] = {}
    parse: Literal["text", "json", "code", "qa"] = "text"
    json_schema: dict[str, Any] | None = Field(None, alias="schema")
    constrain: bool = False  # ask the server to constrain decoding to the JSON schema
    lang: str = "python"
    min_pairs: int = Field(1, ge=1)
    repeat: int = Field(1, ge=1, le=64)
    remove: list[str] = []  # regexes (DOTALL, MULTILINE) cut from the output before anything else
    forbid: list[str] = []  # regexes: an output matching one is rejected (e.g. code inside an instruction)

    _check = field_validator("sampling")(classmethod(lambda cls, v: _check_sampling(v)))

    @field_validator("forbid", "remove")
    @classmethod
    def _regexes(cls, v: list[str]) -> list[str]:
        import re

        for r in v:
            try:
                re.compile(r)
            except re.error as e:
                raise ValueError(f"bad regex {r!r}: {e}") from None
        return v

    @model_validator(mode="after")
    def _one_user(self) -> "StepSpec":
        if (self.user is None) == (self.user_file is None):
            raise ValueError("give exactly one of `user` (inline template) or `user_file` (.j2 file)")
        if self.system is not None and self.system_file is not None:
            raise ValueError("give at most one of `system` and `system_file`")
        return self


class OutputSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")
    step: str | None = None  # default: the last step
    template: str | None = None  # Jinja2 composing the document from all step outputs


class VerifySpec(BaseModel):
    model_config = ConfigDict(extra="forbid")
    type: Literal["python_exec", "sympy_answer", "code_match", "vote"]
    step: str | None = None  # whose output to check (default: the last step)
    on_fail: Literal["reject", "keep"] = "reject"
    timeout_s: float = Field(5.0, gt=0, le=120)
    memory_mb: int = Field(512, ge=64, le=8192)
    threshold: float = Field(0.6, ge=0, le=1)  # code_match similarity
    require_answer: bool = False  # sympy_answer: fail when no `Answer:` line
    with_seed: bool = False  # python_exec: the seed's code is importable as `solution` (and star-imported)
    min_agree: float = Field(0.0, ge=0, le=1)  # vote: keep when min_agree < agreement < max_agree
    max_agree: float = Field(1.0, ge=0, le=1)


class FilterSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")
    min_chars: int = Field(0, ge=0)
    max_chars: int | None = Field(None, ge=1)
    min_words: int = Field(0, ge=0)


class RecipeSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(pattern=r"^[a-z][a-z0-9_]*$")
    description: str
    kind: Literal["synthetic", "rewrite", "qa", "code"]
    seed_kinds: list[str] = ["web"]  # which seed rows it accepts (e.g. ["code"])
    requires: list[str] = []  # keys the seed's meta.extra must have (e.g. tests)
    variables: dict[str, list[str]] = {}
    # the words each value of a variable asks the teacher for, in the variable's order, e.g.
    # `length_words: {length: [150, 300, 500]}`: a max_tokens too small for a value takes it out of the draw
    length_words: dict[str, list[int]] = {}
    sampling: dict[str, Any] = {"temperature": 0.8, "max_tokens": 512}
    steps: list[StepSpec] = Field(min_length=1)
    output: OutputSpec = OutputSpec()
    verify: list[VerifySpec] = []
    filters: FilterSpec = FilterSpec()

    _check = field_validator("sampling")(classmethod(lambda cls, v: _check_sampling(v)))

    @field_validator("variables")
    @classmethod
    def _nonempty(cls, v: dict[str, list[str]]) -> dict[str, list[str]]:
        for k, vals in v.items():
            if not vals:
                raise ValueError(f"variable {k!r} has no values to sample")
        return v

    @model_validator(mode="after")
    def _refs(self) -> "RecipeSpec":
        names = [s.name for s in self.steps]
        if len(set(names)) != len(names):
            raise ValueError(f"step names must be unique: {names}")
        clash = set(names) & set(self.variables)
        if clash:
            raise ValueError(f"step names clash with variable names: {sorted(clash)}")
        for var, words in self.length_words.items():
            if var not in self.variables:
                raise ValueError(f"length_words names {var!r}, which is not one of the variables {sorted(self.variables)}")
            if len(words) != len(self.variables[var]) or min(words) < 1:
                raise ValueError(f"length_words.{var} needs one positive word count per value of {var!r} "
                                 f"({len(self.variables[var])} values, {len(words)} counts)")
        for ref in [self.output.step] + [v.step for v in self.verify]:
            if ref is not None and ref not in names:
                raise ValueError(f"unknown step {ref!r}; steps are {names}")
        return self


def environment(folder: Path) -> SandboxedEnvironment:
    """Sandboxed Jinja2 with strict undefineds; `{% include %}` resolves next to the recipe."""
    from jinja2 import FileSystemLoader

    env = SandboxedEnvironment(
        undefined=StrictUndefined, loader=FileSystemLoader([str(folder), str(BUILTIN)]),
        keep_trailing_newline=False, trim_blocks=True, lstrip_blocks=True,
    )
    env.filters["words"] = lambda s, n: " ".join(str(s).split()[: int(n)])
    env.filters["cap"] = lambda s: str(s)[:1].upper() + str(s)[1:]  # unlike `capitalize`, keeps names
    return env


def user_dirs(extra: list[str | Path] | None = None) -> list[Path]:
    dirs = [Path(d) for d in (extra or [])]
    dirs += [Path(d) for d in os.environ.get(USER_DIRS_ENV, "").split(os.pathsep) if d]
    return dirs


def resolve(name_or_path: str | Path, dirs: list[str | Path] | None = None) -> Path:
    """Built-in name first, then `<dir>/<name>.yaml` in user folders, then a file path."""
    s = str(name_or_path)
    for folder in [BUILTIN, *user_dirs(dirs)]:
        p = folder / f"{s}.yaml"
        if p.is_file():
            return p
    p = Path(s)
    if p.is_file():
        return p
    known = ", ".join(sorted(n for n, _ in list_paths(dirs)))
    raise FactoryError(f"no recipe named {s!r}", where=s, fix=f"use one of: {known}, or a path to a recipe YAML")


def list_paths(dirs: list[str | Path] | None = None) -> list[tuple[str, Path]]:
    seen: dict[str, Path] = {}
    for folder in [BUILTIN, *user_dirs(dirs)]:
        for p in sorted(folder.glob("*.yaml")) if folder.is_dir() else []:
            seen.setdefault(p.stem, p)  # built-ins win
    return sorted(seen.items())


def template_path(recipe: Path, file: str) -> Path | None:
    """A step's template file: next to the recipe, else among the built-ins."""
    for fp in (recipe.parent / file, BUILTIN / file):
        if fp.is_file():
            return fp
    return None


def content_sha(path: Path, spec: RecipeSpec) -> str:
    """A hash of everything that decides a recipe's prompts: its YAML, its template files and the
    templates they include, so an edited recipe is a changed config for the stages that ran it."""
    from jinja2 import meta

    from factory.core.schema import sha

    env = environment(path.parent)
    texts = [path.read_bytes()]
    sources = [s for st in spec.steps for s in (st.system, st.user) if s] + [spec.output.template or ""]
    for st in spec.steps:
        for file in (st.system_file, st.user_file):
            fp = template_path(path, file) if file else None
            if fp is not None:
                texts.append(fp.read_bytes())
                sources.append(fp.read_text(errors="replace"))
    seen: set[str] = set()
    while sources:
        try:
            refs = meta.find_referenced_templates(env.parse(sources.pop()))
        except TemplateSyntaxError:
            continue
        for name in sorted({r for r in refs if r} - seen):
            seen.add(name)
            try:
                src = env.loader.get_source(env, name)[0]
            except TemplateNotFound:  # fails at render time, with its name
                continue
            texts.append(src.encode())
            sources.append(src)
    return sha(*texts)


def load_spec(path: Path) -> tuple[RecipeSpec, dict[str, Any]]:
    """Validate a recipe file; return the spec and its compiled templates, keyed by field path."""
    spec = validate(RecipeSpec, read_yaml(path), str(path))
    env = environment(path.parent)
    templates: dict[str, Any] = {}

    def compile_(field: str, source: str | None, file: str | None) -> None:
        if file is not None:
            fp = template_path(path, file)
            if fp is None:
                raise FactoryError("template file not found", where=str(path), field=field + "_file",
                                   fix=f"put {file} next to the recipe")
            source = read_text_file(fp, "a Jinja2 template")
        if source is None:
            return
        try:
            templates[field] = env.from_string(source)
        except TemplateSyntaxError as e:
            raise FactoryError(f"template error: {e.message} (line {e.lineno})", where=str(path), field=field,
                               fix="correct the Jinja2 syntax") from None

    for i, step in enumerate(spec.steps):
        compile_(f"steps.{i}.system", step.system, step.system_file)
        compile_(f"steps.{i}.user", step.user, step.user_file)
    compile_("output.template", spec.output.template, None)
    for k, vals in spec.variables.items():
        for j, v in enumerate(vals):
            compile_(f"variables.{k}.{j}", v, None)
    return spec, templates
