"""`factory curate [CONFIG.yaml] --in DIR --out DIR`: filter, dedup and decontaminate documents;
`factory curate calibrate LABELS --in GENERATED`: the filters against reviewers' labels, and a
cross-validated config."""

from __future__ import annotations

from typing import List, Optional

import typer
from typer.core import TyperGroup

from factory.core.ui import console, table


class _CurateGroup(TyperGroup):
    """`factory curate ...` runs curation (the `run` command) unless its first word names another
    command (`calibrate`), so `factory curate CONFIG --in ... --out ...` works as it always has."""

    def parse_args(self, ctx, args):
        if args and args[0] not in self.commands and args[0] not in ("--help", "-h"):
            args = ["run", *args]
        elif not args:
            args = ["run"]
        return super().parse_args(ctx, args)


curate_app = typer.Typer(cls=_CurateGroup, add_completion=False,
                         help="Curate documents (`factory curate [CONFIG] --in DIR --out DIR`, the `run` command), "
                              "or calibrate the filters against labels (`factory curate calibrate`).")


def curate(
    config: Optional[str] = typer.Argument(None, help="curation YAML (default: the packaged default.yaml)"),
    inputs: Optional[List[str]] = typer.Option(None, "--in", help="input stage folder (repeatable)"),
    out: Optional[str] = typer.Option(None, "--out", help="output stage folder (any fsspec URL)"),
    reference: Optional[List[str]] = typer.Option(None, "--reference", help="web/seed folder to dedup against"),
    bench: Optional[List[str]] = typer.Option(None, "--bench", help="benchmark JSONL file or folder to decontaminate against"),
    address: Optional[str] = typer.Option(None, "--address", help="run on Ray: a cluster's HOST:PORT, or `local` for "
                                          "a Ray of its own (default: the config's executor; RAY_ADDRESS inside a job)"),
    tasks: Optional[int] = typer.Option(None, help="datatrove tasks per stage"),
    set_: Optional[List[str]] = typer.Option(None, "--set", help="override, e.g. --set filters.faithfulness.enabled=false "
                                             "(repeatable)"),
) -> None:
    """Curate documents with datatrove: quality and synthetic filters, dedup, decontamination."""
    import os

    from factory.curate import config as C
    from factory.curate import run
    from factory.curate.logs import LOG

    cfg = C.load(config)
    data = cfg.model_dump()
    if inputs:
        data["inputs"] = list(inputs)
    if out:
        data["out"] = out
    if reference:
        data["dedup"]["reference"] = list(reference)
    if bench:
        data["decont"]["benchmarks"] = list(bench)
    if address:
        data["executor"]["ray"] = True
        data["executor"]["ray_address"] = None if address == "local" else address
    elif os.environ.get("RAY_ADDRESS") and not cfg.executor.ray_address:  # inside a Ray job: use the cluster
        data["executor"]["ray"] = True
        data["executor"]["ray_address"] = os.environ["RAY_ADDRESS"]
    if tasks:
        data["executor"]["tasks"] = tasks
    if set_:  # the same `section.key=value` overrides as `factory train --set`
        from factory.core.errors import FactoryError
        from factory.core.merge import deep_merge
        from train.config import ConfigError, parse_overrides

        try:
            data = deep_merge(data, parse_overrides(set_))
        except ConfigError as e:
            raise FactoryError(str(e), field="--set", fix="write --set section.key=value") from None
    cfg = C.validate_config(data, config or str(C.DEFAULT_YAML))
    m = run(cfg)
    c = m["counts"]
    rows = [["in", c.get("in", 0)], ["kept", c.get("kept", 0)]]
    rows += [[f"dropped: {k}", v] for k, v in sorted(m["dropped"].items(), key=lambda kv: -kv[1])]
    console.print(table(f"curate -> {cfg.out} ({m.get('executor')})", ["count", "docs"], rows))
    console.print(f"report: {cfg.out.rstrip('/')}/report.md; datatrove's logs: {cfg.out.rstrip('/')}/{LOG}")


def calibrate(
    labels: str = typer.Argument(..., help="labels.jsonl (as `factory review` writes it)"),
    inputs: str = typer.Option(..., "--in", help="the generate stage folder the labeled documents are in"),
    out: Optional[str] = typer.Option(None, "--out", help="where to write calibration.json, the plot and the "
                                      "chosen config (default: the labels' folder)"),
    config: Optional[str] = typer.Option(None, "--config", help="today's curate YAML (default: the config of the "
                                         "curate stage beside GENERATED, else the packaged default)"),
    curated: Optional[str] = typer.Option(None, "--curated", help="the curate stage folder that read GENERATED "
                                          "(default: found beside it)"),
    folds: int = typer.Option(5, help="k of the k-fold cross-validation; 0: the report only, no chosen config"),
    min_clean_recall: float = typer.Option(0.8, help="the share of clean documents a chosen setting must keep"),
    reviewer: Optional[str] = typer.Option(None, help="only this reviewer's labels (default: all; a document is "
                                           "defective when at least half of its reviewers say so)"),
) -> None:
    """Each filter's precision and recall of "drop" against labels, threshold sweeps, and a
    cross-validated curate config written beside the labels."""
    from factory.core.errors import FactoryError
    from factory.curate.calibrate import calibrate as run_calibration

    if not 0 <= min_clean_recall <= 1:
        raise FactoryError(f"{min_clean_recall} is not a share", field="--min-clean-recall", fix="give 0 to 1, e.g. 0.8")
    res = run_calibration(labels, inputs, out, config, curated, folds, min_clean_recall, reviewer)
    rep = res.report
    f = lambda v: "-" if v is None else f"{v:.3f}"  # noqa: E731
    rows = [[name, "on" if r["enabled"] else "off", r["drops"], f(r["precision"]), f(r["recall"]), r["verdict"]]
            for name, r in rep["filters"].items()]
    lab = rep["labels"]
    console.print(table(f"filters against {lab['found']} labeled documents ({lab['clean']} clean, {lab['defective']} "
                        f"defective; base rate {f(lab['defective'] / max(1, lab['found']))})",
                        ["filter", "today", "drops", "precision", "recall", "verdict"], rows))
    t = rep["today"]["recomputed"]
    lines = [["today's settings", t["kept"], f(t["defect_share"]), f(t["clean_recall"])]]
    cv = rep["cross_validation"]
    if cv:
        h = cv["held_out"]
        lines.append([f"calibrated, held out ({cv['folds']}-fold)", h["kept"], f(h["defect_share"]), f(h["clean_recall"])])
    console.print(table("kept set", ["settings", "kept", "defect share", "clean recall"], lines))
    if rep["chosen"]:
        console.print("changes: " + (" ".join(f"--set {s}" for s in rep["chosen"]["set"]) or "none"))
    for k, p in res.files.items():
        console.print(f"{k}: {p}")


def register(app: typer.Typer) -> None:
    curate_app.command("run")(curate)
    curate_app.command("calibrate")(calibrate)
    app.add_typer(curate_app, name="curate")
