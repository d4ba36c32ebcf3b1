"""`factory mix plan FILE --data DIR`: the Phi-4-style mixture table, and plan.json for the trainer;
`factory mix search SEARCH.yaml`: a proposed mix from proxy runs."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Optional

import typer
from rich.table import Table

from factory.core.ui import console
from factory.mix.plan import plan_table

mix_app = typer.Typer(no_args_is_help=True, help="Plan token mixes (YAML) for training.")


@mix_app.command("plan")
def plan_cmd(
    file: Path = typer.Argument(..., help="Mix YAML."),
    data: str = typer.Option(".", "--data", help="Root (any fsspec URL) that relative source and tokenizer paths resolve against."),
    out: Optional[str] = typer.Option(None, "--out", help="Write plan.json here (any fsspec URL)."),
    tokens: Optional[int] = typer.Option(None, "--tokens", help="Override total_tokens."),
    fit: Optional[str] = typer.Option(None, "--fit", help="Override the mix's `fit` (refuse | cap | warn): what a "
                                                          "source over its max_epochs does."),
) -> None:
    """Count unique tokens per source, print the mixture table, write plan.json."""
    from factory.core.stage import check_store
    from factory.mix.plan import make_plan, write_plan
    from factory.mix.spec import load_mix

    if out:
        check_store(out)
    cfg = load_mix(file, tokens=tokens, fit=fit)
    p, warnings = make_plan(cfg, data, str(file))
    console.print(plan_table(p))
    for w in warnings:
        console.print(f"[yellow]warning: {w}[/]")
    if out:
        write_plan(p, out)
        console.print(f"plan written to {out}")


@mix_app.command("search")
def search_cmd(
    file: Path = typer.Argument(..., help="Search YAML (base mix, varied sources and bounds, target, proxies)."),
    out: Optional[str] = typer.Option(None, "--out", help="Folder of the search (default: the file's `out`)."),
    validate: bool = typer.Option(False, "--validate", help="Train the proposal and the baselines at the validation scale."),
    plan_only: bool = typer.Option(False, "--plan-only", help="Train nothing: write the task list of the next step "
                                   "(the proxies; then, with --validate, the validation runs) and stop. Train it with "
                                   "`python -m train.suite TASKS` (torch only, e.g. on a bare GPU host), then run this again."),
    results: Optional[list[Path]] = typer.Option(None, "--results", help="Runs trained elsewhere: a JSONL of their "
                                                 "eval.json records, or a folder of eval.json files (repeatable)."),
) -> None:
    """Proxy runs, a regression from shares to the target, and the best feasible mix (a ready YAML)."""
    from factory.ablate.search import search

    rep = search(file, out, validate=validate, plan_only=plan_only, results=results)
    if rep.get("imported"):
        console.print(f"{rep['imported']} finished run(s) imported")
    if rep.get("step") == "proxies":
        return _next_step(rep, file, out, validate)
    t = Table(title=f"mix search {rep['name']}: {rep['proxies']} proxies, {rep['chosen']} fit")
    for col in ("", *rep["proposal"], "target"):
        t.add_column(col)
    p = rep["predicted"]
    t.add_row("proposal", *(f"{v:.3f}" for v in rep["proposal"].values()),
              f"{p['score']:.4f} [{p['low']:.4f}, {p['high']:.4f}] predicted")
    b = rep["best_proxy"]
    t.add_row("best proxy", *(f"{b['shares'][k]:.3f}" for k in rep["proposal"]), f"{b['score']:.4f} observed")
    for name, r in (rep.get("validation") or {}).get("mixes", {}).items():
        t.add_row(f"{name} (validated)", *(f"{r['shares'][k]:.3f}" for k in rep["proposal"]),
                  f"{r['mean']:.4f} ± {r['half']:.4f}")
    console.print(t)
    console.print(f"fit held-out Spearman {rep['fit'][rep['chosen']]['spearman']:.2f}; mix written to {rep['mix_file']}")
    if rep.get("step") == "validate":
        _next_step(rep, file, out, validate)


def _next_step(rep: dict[str, Any], file: Path, out: Optional[str], validate: bool) -> None:
    again = f"factory mix search {file}" + (f" --out {out}" if out else "") + (" --validate" if validate else "")
    console.print(f"{rep['step']}: {rep['to_run']} runs to train ({rep['done']} done): python -m train.suite "
                  f"{rep['tasks_file']}\nthen, with its eval.json files here or brought back: {again} "
                  "[--results RESULTS.jsonl] [--plan-only]")


@mix_app.command("schema")
def schema_cmd(out: Path = typer.Option(Path("mixes/schema.json"), "--out")) -> None:
    """Write the JSON Schema of mix files."""
    from factory.mix.spec import json_schema

    out.write_text(json.dumps(json_schema(), indent=2) + "\n")
    console.print(f"schema written to {out}")


def register(app: typer.Typer) -> None:
    app.add_typer(mix_app, name="mix")
