"""What a curation run shows: one progress line and the summary on the terminal, datatrove's own
logs in the stage folder (in-process tasks here; the CLI's worker processes in test_executors)."""

from __future__ import annotations

import re

from factory.curate import load, run

from .corpus import lesson, records, syn, write_stage


def test_in_process_curation_keeps_datatrove_off_the_terminal(tmp_path, capfd, monkeypatch):
    monkeypatch.setenv("FACTORY_PROGRESS_EVERY_S", "0.5")
    rows = [syn(lesson(r), i) for i, r in enumerate(records(60)[:26])]
    cfg = load(None, inputs=[write_stage(tmp_path / "gen", rows)], out=str(tmp_path / "cur"))
    assert cfg.executor.workers == -1  # 26 documents: every task runs in this process
    m = run(cfg)
    out, err = capfd.readouterr()
    shown = (out + err).splitlines()
    assert m["counts"]["in"] == 26
    assert 1 <= len(shown) < 20 and not any("| INFO" in s or "| SUCCESS" in s for s in shown), "\n".join(shown)
    assert re.search(r"^curate (\d+)/\1 \(100%\) [\d.]+ tasks/s elapsed \d:\d\d:\d\d eta 0:00:00", err, re.M), err
    log = (tmp_path / "cur" / "datatrove.log").read_text()
    assert re.search(r"All \d+ tasks", log), log[:2000]  # the executors' summaries went here instead
    task_log = tmp_path / "cur" / "_work" / "logs" / "filter" / "logs" / "task_00000.log"
    assert "Launching pipeline for rank=0" in task_log.read_text()


def test_a_failing_task_leaves_stderr_and_the_console_as_they_were(tmp_path, capfd):
    import sys

    import pytest

    from factory.core.ui import console

    from . import faults

    rows = [syn(lesson(r), i) for i, r in enumerate(records(60)[:6])]
    cfg = load(None, inputs=[write_stage(tmp_path / "gen", rows)], out=str(tmp_path / "cur"))
    before = sys.stderr
    with pytest.raises(RuntimeError, match="injected failure on rank 0"):
        run(cfg, inject=lambda jobs: next(j for j in jobs if j.name == "filter").steps.insert(1, faults.FailRank(0, 1)))
    assert sys.stderr is before and console._file is None  # the console follows stderr again
    err = capfd.readouterr().err
    assert "| INFO" not in err
    log = (tmp_path / "cur" / "_work" / "logs" / "filter" / "logs" / "task_00000.log").read_text()
    assert "injected failure on rank 0" in log and (tmp_path / "cur" / "datatrove.log").exists()
