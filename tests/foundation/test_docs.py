"""The guide (docs/guide, MkDocs): `mkdocs build --strict` succeeds (a broken link or anchor, or a page
left out of the nav, is an error: docs/mkdocs.yml's `validation`), and every page is in the nav."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
CONFIG = ROOT / "docs" / "mkdocs.yml"
GUIDE = ROOT / "docs" / "guide"


def nav_pages(nav) -> list[str]:
    out = []
    for item in nav:
        value = next(iter(item.values())) if isinstance(item, dict) else item
        out += nav_pages(value) if isinstance(value, list) else [value]
    return out


def test_every_page_is_in_the_nav_once():
    cfg = yaml.safe_load(CONFIG.read_text())
    assert cfg["docs_dir"] == "guide"
    pages = nav_pages(cfg["nav"])
    assert len(pages) == len(set(pages)), pages
    assert sorted(pages) == sorted(p.name for p in GUIDE.glob("*.md"))


def test_mkdocs_build_strict(tmp_path):
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    p = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "-q", "-f", str(CONFIG), "-d",
                        str(tmp_path / "site")], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stdout + p.stderr
    assert "WARNING" not in p.stderr, p.stderr
    for page in GUIDE.glob("*.md"):
        html = tmp_path / "site" / ("index.html" if page.stem == "index" else f"{page.stem}/index.html")
        assert html.exists(), html


def test_readme_links_into_the_guide_resolve():
    """The README is the front door: each of its links into docs/guide names a page that exists."""
    import re

    text = (ROOT / "README.md").read_text()
    links = re.findall(r"\]\((docs/guide/[^)#\s]+)", text)
    assert len(links) >= 10, links
    for link in links:
        assert (ROOT / link).exists(), link
