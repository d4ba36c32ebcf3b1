"""The `factory` command: one subcommand per stage, registered by the modules in this package."""

from __future__ import annotations

import importlib
import os
import sys

import typer

from factory.core.errors import FactoryError, stop_on_sigterm, stopped

app = typer.Typer(no_args_is_help=True, add_completion=False, help="Synthetic pretraining data factory.")

# One module per command group, in data-flow order. Each defines `register(app)`.
GROUPS = ["seeds", "teacher", "recipes", "generate", "curate", "review", "tokenize", "mix", "train", "evaluate", "ablate", "cluster", "demo"]


def _register() -> None:
    for name in GROUPS:
        importlib.import_module(f"factory.cli.{name}").register(app)


_register()


def main() -> None:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    stop_on_sigterm()  # SIGTERM ends a command as Ctrl-C does: every stage's clean-up runs
    try:
        app()
    except FactoryError as e:
        typer.secho(f"error: {e}", fg="red", err=True)
        sys.exit(2)
    except (SystemExit, KeyboardInterrupt):
        stop = stopped()
        if stop is None:
            raise
        typer.secho(f"{stop} (what a stage finished is kept: rerun the command to resume)", fg="yellow", err=True)
        sys.exit(128 + stop.signum)
