"""`factory demo`: the whole path on the embedded defaults, every stage thin but real.

corpus (Wikipedia summaries) -> local llama.cpp teacher -> generate on Ray -> curate with datatrove
-> tokenize (BPE + .ds) -> plan two mixes -> train one model per mix (FSDP2, torchrun, 2 gloo
ranks) -> knowledge benchmarks -> table + plot. Each stage writes its own folder under `out`, so a
rerun skips what is finished.
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from factory.core.errors import FactoryError
from factory.core.stage import StageDir, write_card
from factory.core.ui import console, table, timed

REPO = Path(__file__).resolve().parent.parent


class DemoConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    out: str = "runs/demo"
    web_docs: int = Field(3000, ge=50, description="Wikipedia summaries in the web source")
    holdout: int = Field(200, ge=0, description="summaries kept out of training (validation loss)")
    seeds: int = Field(40, ge=1, description="web passages that seed the recipes")
    recipes: list[str] = ["textbook", "qa_rewrite", "wiki_rewrite"]
    samples_per_seed: int = 1
    replicas: int = Field(2, ge=1, description="llama.cpp teacher processes")
    max_tokens: int = Field(320, ge=16)
    mixes: list[str] = ["mixes/web_only.yaml", "mixes/phi4.yaml"]
    fit: Literal["refuse", "cap", "warn"] = Field("cap", description="a source over its max_epochs (see `fit` in a mix)")
    tokens: int | None = Field(None, description="training tokens per model (default: the mix's total_tokens)")
    seq_len: int | None = Field(None, description="override the mixes' sequence length")
    vocab_size: int = 4096
    preset: str = "tiny"
    nproc: int = 2
    global_batch: int = 16
    micro_batch: int = 8
    eval_items: int = 400
    seed: int = 0


def _corpus(cfg: DemoConfig, out: Path) -> dict[str, Any]:
    """Split the summaries into web / held-out / seed sets, and write the web and seed folders."""
    from factory.seeds.sources import WIKI_LICENCE, load_wiki_summaries, wiki_rows

    recs = load_wiki_summaries()
    rng = random.Random(cfg.seed)
    picked = rng.sample(recs, min(len(recs), cfg.web_docs + cfg.holdout))
    held, web = picked[: cfg.holdout], sorted(picked[cfg.holdout :], key=lambda r: r["title"])
    seeds = rng.sample(web, min(cfg.seeds, len(web)))
    for name, recs_ in (("web", web), ("seeds", seeds)):
        st = StageDir(str(out / name), name, {"n": len(recs_), "seed": cfg.seed, "web_docs": cfg.web_docs, "holdout": cfg.holdout})
        if not st.done("part-0.parquet"):
            st.write_docs("part-0.parquet", wiki_rows(records=recs_))
        st.counts["out"] = len(recs_)
        write_card(st, f"Wikipedia summaries ({name})", {"rows": len(recs_)}, WIKI_LICENCE)
        st.finish()
    return {"web_titles": [r["title"] for r in web], "held_titles": [r["title"] for r in held], "seeds": len(seeds)}


def _curate_config(cfg: DemoConfig, out: Path, bench_files: list[str]):
    from factory.core.config import read_yaml
    from factory.curate.config import DEFAULT_YAML, validate_config

    data = read_yaml(DEFAULT_YAML)
    data.update(inputs=[str(out / "generated")], out=str(out / "curated"))
    data.setdefault("dedup", {})["reference"] = [str(out / "seeds"), str(out / "web")]
    data.setdefault("decont", {})["benchmarks"] = bench_files
    return validate_config(data, str(DEFAULT_YAML))


def _mix_share(plan: dict[str, Any], kinds: tuple[str, ...] = ("synthetic", "rewrite", "qa", "code")) -> float:
    """Share of the planned tokens that is synthetic (teacher-made) data."""
    total = sum(s["tokens"] for ph in plan["phases"] for s in ph["sources"])
    syn = sum(s["tokens"] for ph in plan["phases"] for s in ph["sources"] if s["kind"] in kinds)
    return round(syn / total, 3) if total else 0.0


def run(cfg: DemoConfig) -> dict[str, Any]:
    from factory import curate, generate
    from factory.ablate import report
    from factory.evaluate import sets as evalsets
    from factory.evaluate.score import score_run
    from factory.mix import plan as mix
    from factory.mix import tokenize
    from factory.mix.plan import plan_table
    from factory.mix.spec import load_mix
    from factory.teacher.server import LocalTeacher
    from train.launch import run as train_run

    out = Path(cfg.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    t: dict[str, float] = {}
    summary: dict[str, Any] = {}

    with timed("corpus", t):
        corpus = _corpus(cfg, out)
        console.print(f"web {len(corpus['web_titles'])} docs, held out {len(corpus['held_titles'])}, seeds {corpus['seeds']}")
    with timed("benchmarks", t):
        built = evalsets.build(out / "benchmarks", holdout_titles=corpus["held_titles"], titles=corpus["web_titles"],
                               n=cfg.eval_items, seed=cfg.seed, benches=("wiki_mc", "wiki_cloze_mc", "arith_mc", "wiki_val"))
        bench_dirs = list(built["dirs"].values())
    with timed("generate", t):
        with LocalTeacher(replicas=cfg.replicas) as teacher:
            gcfg = generate.GenerateConfig(
                seeds=str(out / "seeds"), recipes=cfg.recipes, samples_per_seed=cfg.samples_per_seed,
                shards=4, teacher=teacher.config(),
                recipe_sampling={"max_tokens": cfg.max_tokens}, out=str(out / "generated"),
                workers=cfg.replicas, concurrency=2,
            )
            summary["generate"] = generate.run(gcfg)
    with timed("curate", t):
        ccfg = _curate_config(cfg, out, [str(Path(d) / "data.jsonl") for d in bench_dirs if (Path(d) / "data.jsonl").exists()])
        summary["curate"] = curate.run(ccfg)
    with timed("tokenize", t):
        tcfg = tokenize.TokenizeConfig(
            sources={
                "web": {"path": str(out / "web")},
                "synthetic": {"path": str(out / "curated"), "kinds": ["synthetic", "qa", "code"]},
                "rewrite": {"path": str(out / "curated"), "kinds": ["rewrite"]},
            },
            tokenizer={"train": {"vocab_size": cfg.vocab_size}},
            out=str(out / "tokens"),
        )
        summary["tokenize"] = tokenize.run(tcfg)
    plans: dict[str, dict[str, Any]] = {}
    with timed("mix", t):
        for mix_file in cfg.mixes:
            path = Path(mix_file) if Path(mix_file).is_absolute() else REPO / mix_file
            name = path.stem
            over = {"seq_len": cfg.seq_len} if cfg.seq_len else {}
            plans[name], warns = mix.make_plan(load_mix(path, tokens=cfg.tokens, fit=cfg.fit, **over), out / "tokens",
                                               str(path))
            for w in warns:
                console.print(f"[yellow]warning: {w}")
            mix.write_plan(plans[name], out / "mixes" / name / "plan.json")
            console.print(plan_table(plans[name]))
    results = []
    for name, plan in plans.items():
        with timed(f"train {name}", t):
            run_dir = out / "train" / name
            rcfg = {
                "run_dir": str(run_dir), "seed": cfg.seed, "model": {"preset": cfg.preset},
                "data": {"source": "plan", "plan": str(out / "mixes" / name / "plan.json")},
                "train": {"steps": 0, "global_batch": cfg.global_batch, "micro_batch": cfg.micro_batch, "tensorboard": False},
                "optim": {"lr": 2e-3, "warmup_steps": 10},
            }
            if not (run_dir / "hf" / "config.json").exists():
                train_run(rcfg, nproc=cfg.nproc)
        with timed(f"eval {name}", t):
            scores = score_run(str(run_dir), bench_dirs, cfg.eval_items, 32)
            results.append({"cell": name, "seed": cfg.seed, "params": {"mix": name, "synthetic_share": _mix_share(plan)}, "scores": scores})
    with timed("report", t):
        (out / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in results))
        paths = report.write(results, out / "report", x="synthetic_share", title="Demo: web-only vs Phi-4-style mix",
                             notes="One tiny model per mix on the same token budget; knowledge = facts of the web source.\n\n"
                                   + data_note(plans, out))
    _print_results(results, t, paths)
    console.print(data_note(plans, out), markup=False)
    (out / "timings.json").write_text(json.dumps(t, indent=2))
    return {"results": results, "timings": t, "report": paths}


def data_note(plans: dict[str, dict[str, Any]], out: Path) -> str:
    """What the teacher made and curation kept, what each mix drew of it, and what that means for the comparison."""
    from factory.mix.plan import teacher_share, totals

    lines, small = [], False
    gen, cur = (json.loads((out / s / "manifest.json").read_text()) for s in ("generated", "curated"))
    dropped = ", ".join(f"{n} {k}" for k, n in sorted(gen.get("dropped", {}).items(), key=lambda kv: -kv[1]))
    lines.append(f"- The teacher answered {gen['counts']['units']} requests with {gen['counts']['docs']} documents"
                 + (f" (the recipes rejected {dropped})" if dropped else "")
                 + f"; curation kept {cur['counts']['kept']} of {cur['counts']['in']}. `factory review {out}` shows each "
                   "document beside its seed and why it was kept or dropped.")
    if gen.get("dropped", {}).get("parse_no_qa_pairs"):
        lines.append("- parse_no_qa_pairs: the teacher did not write qa_rewrite's `Question:` / `Answer:` lines (a "
                     "135M model often answers in prose or lists instead); a stronger teacher follows the format.")
    for name, p in plans.items():
        t = totals(p)
        made = {k: v for k, v in t.items() if v["kind"] != "web"}
        if not made:
            continue
        ts = teacher_share(p)
        share, asked = ts["drawn"], ts["asked"]
        parts = ", ".join(f"{k} {v['unique_tokens']:,} unique tokens drawn {v['epochs']:.1f} epochs" for k, v in made.items())
        lines.append(f"- {name}: teacher-made text {parts}; {share:.1%} of the training tokens"
                     + (f" (the mix asks for {asked:.0%}; `fit: cap` lowered it to the sources' max_epochs)"
                        if p.get("capped") else "") + ".")
        small = small or share < 0.5 * asked
    if small:
        lines.append("- With this little teacher-made text the mixes differ less than their names say: the comparison "
                     "is between mostly-web models. Generate more (`--seeds`, a stronger teacher) for a real one.")
    return "\n".join(lines)


def _print_results(results: list[dict], t: dict[str, float], paths: dict[str, str]) -> None:
    benches = sorted({b for r in results for b in r["scores"]})
    rows = [[r["cell"], r["params"]["synthetic_share"], *[_fmt(r["scores"].get(b)) for b in benches]] for r in results]
    console.print(table("mixes compared", ["mix", "synthetic share", *benches], rows))
    console.print(table("stage wall times", ["stage", "seconds"], [[k, v] for k, v in t.items()] + [["total", round(sum(t.values()), 1)]]))
    console.print(f"report: {paths['report_md']}\nplot:   {paths['png']}")


def _fmt(s: dict | None) -> str:
    if not s:
        return "-"
    v = s["score"]
    return f"{100 * v:.1f}%" if s.get("higher_is_better", True) and v <= 1 else f"{v:.3f}"


def check_ready() -> None:
    """Fail fast, before any work, when a part of the embedded default is missing."""
    from factory.seeds.sources import wiki_file
    from factory.teacher.server import find_model

    wiki_file("en-us")
    find_model()
    for mod in ("llama_cpp.server", "datatrove", "ray", "torch"):
        try:
            __import__(mod)
        except ImportError as e:
            raise FactoryError(f"{mod} is not installed ({e})", where="demo", fix="run `make demo` (it installs .venv)") from None
