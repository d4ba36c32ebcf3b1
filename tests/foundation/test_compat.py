"""Each private API in factory/core/compat.py, exercised against the installed library: a release that
moves one fails here, naming the library, its version and the entry (CHECKED: the versions it was checked on)."""

from __future__ import annotations

import importlib.metadata as md
import zipfile

import pytest

from factory.core import compat


def why(lib: str, entry: str) -> str:
    return f"{lib} {md.version(lib)}: compat.{entry} (checked on {lib} {compat.CHECKED[lib]})"


def test_ray_packs_a_working_dir_with_its_ignore_rules(tmp_path):
    src = tmp_path / "wd"
    (src / "runs").mkdir(parents=True)
    (src / "keep.py").write_text("x = 1\n")
    (src / "runs" / "big.bin").write_bytes(b"0" * 10)
    (src / "skip.log").write_text("no\n")
    (src / ".gitignore").write_text("*.log\n")
    out = compat.ray_package_working_dir(src, tmp_path / "wd.zip", ["runs"], include_gitignore=True)
    names = {n.split("/", 1)[-1] for n in zipfile.ZipFile(out).namelist()}
    assert "keep.py" in names and "skip.log" not in names and not any("big.bin" in n for n in names), why("ray", "ray_package_working_dir")


def test_ray_reloads_its_auth_settings():
    """In a fresh process (this one may hold a connected Ray, which keeps the config it connected with)."""
    import subprocess
    import sys

    code = "import ray; from factory.core.compat import ray_reload_auth; assert not ray.is_initialized(); ray_reload_auth()"
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, why("ray", "ray_reload_auth") + "\n" + r.stderr[-2000:]


def test_torch_dcp_reads_back_what_it_wrote_to_an_fsspec_url(tmp_path):
    import torch
    import torch.distributed.checkpoint as dcp

    state = {"w": torch.arange(6, dtype=torch.float32)}
    url = f"file://{tmp_path}/ckpt"
    dcp.save(state, storage_writer=compat.dcp_fsspec_writer(url, sync_files=False))
    back = {"w": torch.zeros(6)}
    dcp.load(back, storage_reader=compat.dcp_fsspec_reader(url))
    assert torch.equal(back["w"], state["w"]), why("torch", "dcp_fsspec_writer")


def test_datatrove_runs_one_rank_with_its_completion_marker(tmp_path):
    from datatrove.executor.local import LocalPipelineExecutor

    seen = []

    def step(data, rank: int = 0, world_size: int = 1):
        seen.append(rank)
        yield from data or ()

    ex = LocalPipelineExecutor(pipeline=[step], tasks=2, logging_dir=str(tmp_path / "logs"))
    compat.datatrove_run_rank(ex, 1)
    assert seen == [1] and (tmp_path / "logs" / "completions" / "00001").exists(), why("datatrove", "datatrove_run_rank")


def test_datatrove_language_model_loads_lazily():
    from datatrove.pipeline.filters.language_filter import LanguageFilter

    f = LanguageFilter(languages=["en"])
    assert compat.fasttext_loaded(f.model) is False, why("datatrove", "fasttext_loaded")
    assert hasattr(f.model, "_model"), why("datatrove", "fasttext_loaded")


@pytest.mark.parametrize("pinned", [True, False])
def test_rich_console_tells_the_file_it_was_pinned_to(tmp_path, pinned):
    from rich.console import Console

    f = open(tmp_path / "out.txt", "w")
    c = Console(file=f) if pinned else Console()
    assert compat.rich_console_file(c) is (f if pinned else None), why("rich", "rich_console_file")
    f.close()
