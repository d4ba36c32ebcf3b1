"""`factory recipes list | show NAME | try NAME | diversity PATH`: see, try and measure recipes."""

from __future__ import annotations

import asyncio
import json
from typing import Optional

import typer

from factory.core.ui import console, table

sub = typer.Typer(no_args_is_help=True, help="Phi-4-style recipes (YAML + Jinja2): list, show, try, measure diversity.")
DIRS = typer.Option(None, "--recipes-dir", "-d", help="a folder of user recipes (repeatable); also $FACTORY_RECIPES")


@sub.command("list")
def list_(dirs: Optional[list[str]] = DIRS) -> None:
    """Every recipe by name: built-ins first, then user folders."""
    from factory.recipes import list_recipes

    rows = [[r.name, r.spec.kind, len(r.spec.steps), ", ".join(v.type for v in r.spec.verify) or "-",
             r.spec.description.split(";")[0].split(",")[0][:60]] for r in list_recipes(dirs)]
    console.print(table("recipes", ["name", "kind", "steps", "verify", "description"], rows))


@sub.command("show")
def show(name: str, dirs: Optional[list[str]] = DIRS) -> None:
    """A recipe's file, variables, steps (with templates) and verifiers."""
    from factory.recipes import load_recipe

    r = load_recipe(name, dirs)
    seed = _seed(r, None)
    r.check_templates(seed, f"the sample seed {seed['meta']['seed_id']}")
    console.print(f"[bold]{r.name}[/bold] ({r.spec.kind}) from {r.path}\n{r.spec.description}\n")
    for k, v in r.spec.variables.items():
        console.print(f"[cyan]{k}[/cyan]: {' | '.join(v)}")
    for s in r.spec.steps:
        src = s.user_file or s.user
        if s.user_file:
            src = (r.path.parent / s.user_file).read_text() if (r.path.parent / s.user_file).is_file() else s.user_file
        console.print(f"\n[bold]step {s.name}[/bold] parse={s.parse} repeat={s.repeat} sampling={r.step_sampling(s)}")
        if s.system or s.system_file:
            console.print(f"[dim]system:[/dim] {s.system or s.system_file}")
        console.print(f"[dim]user:[/dim]\n{src}", markup=False)
    for v in r.spec.verify:
        console.print(f"\n[bold]verify[/bold] {v.model_dump(exclude_defaults=True)}")
    console.print(f"\n[bold]filters[/bold] {r.spec.filters.model_dump()}")


def _seed(recipe, index: int | None):
    """The seed at `index`, or (None) the first seed the recipe accepts."""
    if "code" in recipe.spec.seed_kinds:
        from factory.seeds.curate import code_rows

        rows = code_rows()
    else:
        from factory.seeds.sources import wiki_rows

        rows = wiki_rows()
    if index is None:
        return next((row for row in rows if recipe.accepts(row)), rows[0])
    if not 0 <= index < len(rows):
        from factory.core.errors import FactoryError

        raise FactoryError(f"seed index {index} is out of range (0..{len(rows) - 1})", field="--seed-index")
    return rows[index]


async def _try(recipe, seed, samples: int, base_urls: list[str], model: str, api_key_env: str | None) -> list:
    from factory.teacher.client import TeacherClient
    from factory.teacher.config import local_config

    cfg = local_config(base_urls, model, api_key_env=api_key_env, timeout_s=120)
    async with TeacherClient(cfg) as client:
        return [await recipe.run(seed, s, client.complete) for s in range(samples)]


@sub.command("try")
def try_(name: str, seed_index: int = typer.Option(0, "--seed-index", "-i", help="which seed (wiki summary, or code seed)"),
         samples: int = typer.Option(1, "--samples", help="samples (different sampled variables)"),
         base_url: Optional[str] = typer.Option(None, help="an OpenAI-compatible base URL (with /v1); default: start a local teacher"),
         model: Optional[str] = typer.Option(None, help="model name at --base-url (default: the first it serves)"),
         api_key_env: Optional[str] = typer.Option(None, "--api-key-env",
                                                   help="the environment variable holding --base-url's API key"),
         max_tokens: Optional[int] = typer.Option(None, help="cap max_tokens in every step"),
         dirs: Optional[list[str]] = DIRS) -> None:
    """Run one recipe on one seed against a teacher and print the documents or rejections."""
    from factory.recipes import load_recipe

    r = load_recipe(name, dirs, **({"max_tokens": max_tokens} if max_tokens else {}))
    note = r.check_lengths(name, "--max-tokens")
    if note:
        console.print(note, markup=False)
    seed = _seed(r, seed_index)
    console.print(f"[bold]seed[/bold] {seed['meta']['seed_id']}: {seed['text'][:200]!r}")
    if base_url:
        if not model:
            import openai

            from factory.teacher.config import Endpoint

            key = Endpoint(base_url=base_url, model="?", api_key_env=api_key_env).api_key("--api-key-env")
            model = next(iter(m.id for m in openai.OpenAI(base_url=base_url, api_key=key or "none").models.list()))
        results = asyncio.run(_try(r, seed, samples, [base_url], model, api_key_env))
    else:
        from factory.teacher.server import LocalTeacher

        with LocalTeacher(replicas=1) as t:
            results = asyncio.run(_try(r, seed, samples, t.endpoints, t.model, t.api_key_env))
    for s, res in enumerate(results):
        for d in res.docs:
            m = d["meta"]
            console.print(f"\n[green]sample {s}: doc {d['id']}[/green] kind={d['kind']} tokens={m['prompt_tokens']}+{m['completion_tokens']} "
                          f"finish={m['finish_reason']}\n[dim]{m['extra']}[/dim]")
            console.print(d["text"], markup=False)
        for reason, detail in res.rejected:
            console.print(f"\n[red]sample {s}: rejected ({reason})[/red] {json.dumps(detail)[:600]}", markup=False)


@sub.command("diversity")
def diversity(path: str = typer.Argument(..., help="a stage folder or parquet file of documents"),
              ngram: int = typer.Option(4, help="n for n-gram repetition"),
              out: Optional[str] = typer.Option(None, help="also write the report as JSON here")) -> None:
    """Repeated openings and n-gram repetition, overall and per recipe."""
    from factory.core.stage import read_docs
    from factory.recipes.diversity import report_rows

    rep = report_rows(read_docs(path).to_pylist(), ngram=ngram)
    rows = []
    for name, r in [("(all)", rep["all"]), *rep["by"].items()]:
        rows.append([name, r["docs"], r["openings_3"]["distinct_ratio"], r["openings_5"]["repeated_share"],
                     r["ngrams"]["repeated_share"], r["ngrams"]["within_doc_mean"],
                     "; ".join(f"{k} ({v})" for k, v in r["openings_3"]["top"][:3])])
    console.print(table("diversity", ["recipe", "docs", "distinct 3-word openings", "shared 5-word openings",
                                      f"repeated {ngram}-grams", "within-doc", "top openings"], rows))
    if out:
        with open(out, "w") as f:
            json.dump(rep, f, indent=2)


def register(app: typer.Typer) -> None:
    app.add_typer(sub, name="recipes")
