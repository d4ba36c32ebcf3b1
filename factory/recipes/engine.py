"""Run a recipe on one seed row: sample variables, render and call each step, parse, verify,
filter, and emit document rows with full provenance (or rejections with their reasons).

Variables are sampled from a RNG seeded by (seed id, recipe, sample), so a rerun renders the
same prompts and hits the teacher's request cache.
"""

from __future__ import annotations

import asyncio
import dataclasses
import math
import random
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Awaitable, Callable, Protocol

from factory.core.errors import FactoryError
from factory.core.schema import extra as row_extra
from factory.core.schema import make_doc, sha
from factory.recipes import verify as V
from factory.recipes.parse import ParseError, parse, render
from factory.recipes.spec import TOKENS_PER_WORD, RecipeSpec, StepSpec, VerifySpec, content_sha, load_spec, resolve


class CompletionLike(Protocol):
    text: str
    finish_reason: str
    prompt_tokens: int
    completion_tokens: int
    model: str
    cached: bool


Complete = Callable[..., Awaitable[CompletionLike]]


@dataclass
class RecipeResult:
    docs: list[dict[str, Any]] = field(default_factory=list)
    rejected: list[tuple[str, dict[str, Any]]] = field(default_factory=list)


def seed_context(row: dict[str, Any]) -> dict[str, Any]:
    """What templates see of the seed: text, title, topic, description, seed_id and meta.extra."""
    ex = row_extra(row)
    meta = row.get("meta") or {}
    seed_id = meta.get("seed_id") or row.get("id") or ""
    return {"text": row.get("text", ""), "title": ex.get("title") or seed_id.split(":", 1)[-1],
            "topic": ex.get("topic") or "general knowledge", "description": ex.get("description") or "",
            "seed_id": seed_id, "seed_kind": row.get("kind", ""), "extra": ex}


class _Any:
    """A stand-in for a step's output when checking templates: any attribute, item or loop works."""

    unsafe_callable = alters_data = False  # what Jinja's sandbox asks before a call

    def __getattr__(self, name: str) -> "_Any":
        if name.startswith("__"):
            raise AttributeError(name)
        return self

    def __getitem__(self, key: Any) -> "_Any":
        return self

    def __call__(self, *args: Any, **kwargs: Any) -> "_Any":
        return self

    def __iter__(self):
        return iter([self])

    def __len__(self) -> int:
        return 1

    def __str__(self) -> str:
        return "output"


class Recipe:
    """A loaded, validated recipe. `overrides` replace sampling keys in every step (e.g. max_tokens)."""

    def __init__(self, spec: RecipeSpec, templates: dict[str, Any], path: Path, overrides: dict[str, Any] | None = None):
        self.spec, self.templates, self.path = spec, templates, path
        self.overrides = dict(overrides or {})

    @property
    def name(self) -> str:
        return self.spec.name

    def __repr__(self) -> str:
        return f"Recipe({self.name!r}, steps={[s.name for s in self.spec.steps]})"

    def with_sampling(self, **overrides: Any) -> "Recipe":
        return Recipe(self.spec, self.templates, self.path, {**self.overrides, **overrides})

    @property
    def content_sha(self) -> str:
        """Hash of the recipe file, its template files and their includes."""
        return content_sha(self.path, self.spec)

    def accepts(self, seed_row: dict[str, Any]) -> bool:
        ex = seed_context(seed_row)["extra"]
        return (not self.spec.seed_kinds or seed_row.get("kind") in self.spec.seed_kinds) and all(
            ex.get(k) for k in self.spec.requires)

    def check_templates(self, seed_row: dict[str, Any], seed_where: str = "a sample seed") -> None:
        """Render every template against `seed_row` (step outputs and verdicts as stand-ins); a
        variable no template can see is one FactoryError naming the recipe file and the template."""
        base = seed_context(seed_row)
        variables = {}
        for key in sorted(self.spec.variables):
            for j in range(len(self.spec.variables[key])):
                self._render(f"variables.{key}.{j}", base, seed_where)
            variables[key] = self.templates[f"variables.{key}.0"].render(**base).strip()
        ctx: dict[str, Any] = {**base, **variables, "vars": variables}
        for i, step in enumerate(self.spec.steps):
            for part in ("system", "user"):
                if f"steps.{i}.{part}" in self.templates:
                    self._render(f"steps.{i}.{part}", ctx, seed_where)
            ctx[step.name] = _Any()
        ctx["verdicts"] = _Any()
        if "output.template" in self.templates:
            self._render("output.template", ctx, seed_where)

    def _render(self, key: str, ctx: dict[str, Any], seed_where: str) -> None:
        from jinja2 import UndefinedError

        try:
            self.templates[key].render(**ctx)
        except UndefinedError as e:
            step = key.split(".")
            field = f"steps[{self.spec.steps[int(step[1])].name}].{step[2]}" if step[0] == "steps" else key
            raise FactoryError(f"template uses an undefined variable ({e.message}, rendered against {seed_where})",
                               where=str(self.path), field=field,
                               fix="define it under `variables:`, or use a seed field (text, title, topic, "
                                   "description, seed_id, seed_kind, extra.*) or an earlier step's name") from None

    # variables ---------------------------------------------------------------------------------
    def sample_variables(self, seed_id: str, sample: int, ctx: dict[str, Any] | None = None) -> dict[str, str]:
        rng = random.Random(sha(seed_id, self.name, sample))
        fits = self.lengths_that_fit()
        out = {}
        for key in sorted(self.spec.variables):
            n = len(self.spec.variables[key])
            j = rng.randrange(n)  # drawn even when narrowed, so the other variables come out as without it
            if 0 < len(fits.get(key) or ()) < n:
                j = fits[key][random.Random(sha(seed_id, self.name, sample, key)).randrange(len(fits[key]))]
            out[key] = self.templates[f"variables.{key}.{j}"].render(**(ctx or seed_context({}))).strip()
        return out

    def output_max_tokens(self) -> int | None:
        """The max_tokens of the step whose text is the document (the output step, else the last)."""
        name = self.spec.output.step or self.spec.steps[-1].name
        return self.step_sampling(next(s for s in self.spec.steps if s.name == name)).get("max_tokens")

    def lengths_that_fit(self) -> dict[str, list[int]]:
        """Per variable of `length_words`: the indices of the values whose words fit the output's max_tokens."""
        cap = self.output_max_tokens()
        return {var: [j for j, w in enumerate(words) if not cap or math.ceil(w * TOKENS_PER_WORD) <= cap]
                for var, words in self.spec.length_words.items()}

    def check_lengths(self, where: str, field: str) -> str | None:
        """A FactoryError when max_tokens holds none of the lengths the recipe asks for; a line to print when
        it holds only some (those are then the only ones drawn); None when it holds them all."""
        cap, notes = self.output_max_tokens(), []
        for var, fit in self.lengths_that_fit().items():
            words, values = self.spec.length_words[var], self.spec.variables[var]
            if not fit:
                need = math.ceil(min(words) * TOKENS_PER_WORD)
                raise FactoryError(f"recipe {self.name}: max_tokens {cap} cannot hold the shortest length it asks for "
                                   f"({values[words.index(min(words))]!r}, about {need} tokens)", where=where,
                                   field=field, fix=f"raise max_tokens to at least {need}, or leave it to the recipe")
            if len(fit) < len(words):
                notes.append(f"recipe {self.name}: max_tokens {cap} holds about {int(cap / TOKENS_PER_WORD)} words, so "
                             f"{var} is drawn from {[values[j] for j in fit]} only")
        return "; ".join(notes) or None

    def step_sampling(self, step: StepSpec) -> dict[str, Any]:
        """Recipe sampling, then the step's, then overrides; an overridden max_tokens is a cap."""
        s = {**self.spec.sampling, **step.sampling}
        for k, v in self.overrides.items():
            s[k] = min(v, s[k]) if k == "max_tokens" and s.get(k) else v
        if step.parse == "json" and step.constrain and step.json_schema:
            s.setdefault("response_format", {"type": "json_object", "schema": step.json_schema})
        return s

    def messages(self, i: int, ctx: dict[str, Any]) -> list[dict[str, str]]:
        msgs = []
        sys_t = self.templates.get(f"steps.{i}.system")
        if sys_t is not None:
            msgs.append({"role": "system", "content": sys_t.render(**ctx).strip()})
        msgs.append({"role": "user", "content": self.templates[f"steps.{i}.user"].render(**ctx).strip()})
        return msgs

    # running -----------------------------------------------------------------------------------
    async def run(self, seed_row: dict[str, Any], sample: int, complete: Complete) -> RecipeResult:
        spec, res = self.spec, RecipeResult()
        base = seed_context(seed_row)
        seed_id = base["seed_id"]
        info: dict[str, Any] = {"seed_id": seed_id, "recipe": self.name, "sample": sample}

        def reject(reason: str, **detail: Any) -> RecipeResult:
            res.rejected.append((reason, {**info, **detail}))
            return res

        if spec.seed_kinds and seed_row.get("kind") not in spec.seed_kinds:
            return reject("seed_kind", detail=f"needs a {spec.seed_kinds} seed, got {seed_row.get('kind')!r}")
        missing = [k for k in spec.requires if not base["extra"].get(k)]
        if missing:
            return reject("seed_missing", detail=f"seed meta.extra lacks {missing}")
        variables = self.sample_variables(seed_id, sample, base)
        ctx: dict[str, Any] = {**base, **variables, "vars": variables}
        info["vars"] = variables
        usage = {"prompt_tokens": 0, "completion_tokens": 0}
        rendered, last, parsed, raws = [], None, {}, {}
        finish: dict[str, Any] = {}
        for i, step in enumerate(spec.steps):
            try:
                msgs = self.messages(i, ctx)
            except Exception as e:  # a template referring to something the seed lacks
                return reject("template", step=step.name, detail=f"{type(e).__name__}: {e}"[:300])
            sampling = self.step_sampling(step)
            rendered.append(msgs)
            keys = [sample] if step.repeat == 1 else [sample * step.repeat + r for r in range(step.repeat)]
            comps = await asyncio.gather(*(complete(msgs, sampling, sample=k) for k in keys))
            for c in comps:
                usage["prompt_tokens"] += int(c.prompt_tokens or 0)
                usage["completion_tokens"] += int(c.completion_tokens or 0)
            info.update(usage)
            last = comps[-1]
            finish[step.name] = [c.finish_reason for c in comps] if step.repeat > 1 else last.finish_reason
            values = []
            for c in comps:
                if step.remove:
                    text = c.text or ""
                    for rx in step.remove:
                        text = re.sub(rx, "", text, flags=re.S | re.M)
                    c = dataclasses.replace(c, text=text.strip()) if dataclasses.is_dataclass(c) else c
                hit = next((rx for rx in step.forbid if re.search(rx, c.text or "", re.M)), None)
                if hit is not None and step.repeat == 1:
                    return reject(f"forbidden_{step.name}", step=step.name, pattern=hit, raw=(c.text or "")[:500])
                try:
                    values.append(parse(step.parse, c.text, schema=step.json_schema, lang=step.lang, min_pairs=step.min_pairs))
                except ParseError as e:
                    if step.repeat == 1:
                        return reject(f"parse_{e.reason}", step=step.name, detail=e.detail[:300],
                                      finish_reason=c.finish_reason, raw=(c.text or "")[:500])
                    values.append("")  # a failed vote counts as a non-answer
            parsed[step.name] = values if step.repeat > 1 else values[0]
            raws[step.name] = [c.text for c in comps] if step.repeat > 1 else comps[0].text
            ctx[step.name] = parsed[step.name]
        verdicts: dict[str, Any] = {}
        for vs in spec.verify:
            v = await self._verify(vs, parsed, seed_row, base)
            verdicts[vs.type] = v
            if not v.get("ok") and vs.on_fail == "reject":
                return reject(f"verify_{vs.type}", verdict=v, status=v.get("status"))
        ctx["verdicts"] = verdicts
        out_step = spec.output.step or spec.steps[-1].name
        if spec.output.template:
            try:
                text = self.templates["output.template"].render(**ctx).strip()
            except Exception as e:
                return reject("template", step="output", detail=f"{type(e).__name__}: {e}"[:300])
        else:
            step = next(s for s in spec.steps if s.name == out_step)
            text = render(step.parse, parsed[out_step], step.lang).strip()
        f = spec.filters
        if len(text) < f.min_chars:
            return reject("too_short", chars=len(text), min_chars=f.min_chars, text=text[:300])
        if f.max_chars and len(text) > f.max_chars:
            return reject("too_long", chars=len(text), max_chars=f.max_chars)
        if len(text.split()) < f.min_words:
            return reject("too_few_words", words=len(text.split()), min_words=f.min_words)
        final_step = spec.steps[-1]
        doc = make_doc(
            text, spec.kind, f"synthetic/{self.name}", sample=sample,
            seed_id=seed_id, recipe=self.name, prompt_sha=sha(rendered),
            teacher_model=last.model, sampling=self.step_sampling(final_step),
            prompt_tokens=usage["prompt_tokens"], completion_tokens=usage["completion_tokens"],
            finish_reason=last.finish_reason,
            extra={"vars": variables, "steps": len(spec.steps), "verdicts": verdicts, "sample": sample,
                   "finish_reasons": finish, "topic": base["topic"], "title": base["title"],
                   "cached": bool(getattr(last, "cached", False))},
        )
        res.docs.append(doc)
        return res

    async def _verify(self, vs: VerifySpec, parsed: dict[str, Any], seed_row: dict[str, Any], base: dict[str, Any]) -> dict[str, Any]:
        value = parsed[vs.step or self.spec.steps[-1].name]
        if vs.type == "sympy_answer":
            return V.check_math(str(value), vs.require_answer)
        if vs.type == "vote":
            return V.check_vote(list(value), vs.min_agree, vs.max_agree)
        if vs.type == "python_exec":
            code, files = str(value), None
            if vs.with_seed:
                code, files = "from solution import *\n" + code, {"solution.py": seed_row.get("text", "")}
            return await asyncio.to_thread(V.check_python, code, timeout_s=vs.timeout_s, memory_mb=vs.memory_mb, files=files)
        if vs.type == "code_match":
            return await asyncio.to_thread(V.check_code_match, str(value), seed_row.get("text", ""),
                                           base["extra"].get("tests"), threshold=vs.threshold,
                                           timeout_s=vs.timeout_s, memory_mb=vs.memory_mb)
        raise ValueError(vs.type)


def load_recipe(name_or_path: str | Path, dirs: list[str | Path] | None = None, **overrides: Any) -> Recipe:
    """A recipe by built-in name, by name in user folders (`dirs`, $FACTORY_RECIPES), or by path."""
    path = resolve(name_or_path, dirs)
    spec, templates = load_spec(path)
    return Recipe(spec, templates, path, overrides)


def list_recipes(dirs: list[str | Path] | None = None) -> list[Recipe]:
    from factory.recipes.spec import list_paths

    return [load_recipe(p) for _, p in list_paths(dirs)]
