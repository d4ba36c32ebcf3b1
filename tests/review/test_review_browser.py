"""The review page in a real headless browser: Debian's Chromium driven by Playwright (the system
browser; Playwright's own download does not work here). Load a run, filter to rejected, open a
document, label three by keyboard, reload: the labels are still there. A screenshot is saved to
runs/tests/review_page.png.

CI needs the browser first: `apt-get install -y chromium` (as root), and the `test` extra
(`playwright`); without either the test is skipped with the reason."""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

import pytest

from factory.review.server import Review, Server
from tests.review.runfolder import make_run

ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = ROOT / "runs" / "tests"


def chromium() -> str | None:
    for p in (os.environ.get("CHROMIUM"), "/usr/bin/chromium", shutil.which("chromium"), shutil.which("chromium-browser")):
        if p and Path(p).exists():
            return p
    return None


@pytest.fixture
def browser():
    exe = chromium()
    if exe is None:
        pytest.skip("no Chromium: apt-get install -y chromium (Debian's package; Playwright's download does not work here)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.skip("playwright is not installed: pip install -e '.[test]'")
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=exe, headless=True, args=["--no-sandbox", "--disable-gpu"])
        try:
            yield b
        finally:
            b.close()


def expect(locator):
    from playwright.sync_api import expect as _expect

    return _expect(locator)


def wait_lines(path: Path, n: int, timeout_s: float = 10) -> list[dict]:
    end = time.time() + timeout_s
    while time.time() < end:
        if path.exists():
            lines = [json.loads(x) for x in path.read_text().splitlines() if x.strip()]
            if len(lines) >= n:
                return lines
        time.sleep(0.05)
    raise AssertionError(f"{path} has fewer than {n} labels")


def test_filter_open_label_three_by_keyboard_reload(tmp_path, browser):
    root = tmp_path / "run"
    truth = make_run(root, seeds=6)
    rejected = [r for r in truth["requests"] if r["status"] == "rejected"]
    srv = Server(Review(str(root), "alice"), "127.0.0.1", 0)
    url = srv.start_thread()
    errors: list[str] = []
    try:
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.goto(url)
        page.wait_for_selector("body[data-ready='1']", timeout=10_000)
        assert page.inner_text("td[data-funnel='requests']") == str(len(truth["requests"]))

        page.select_option("#f-status", "rejected")
        expect(page.locator("#pageinfo")).to_contain_text(f"({len(rejected)} entries)")
        rows = page.locator("#list tbody tr")
        assert rows.count() == len(rejected)
        assert set(page.locator("#list tbody tr td:nth-child(3)").all_inner_texts()) == {"rejected"}

        first = rows.nth(0).get_attribute("data-id")
        rows.nth(0).click()  # open a document: beside its seed, with what the check saw
        page.wait_for_selector("#detail .seed")
        doc = next(r for r in truth["requests"] if r["id"] == first)
        seed = next(s for s in truth["seed_rows"] if s["meta"]["seed_id"] == doc["seed_id"])
        assert page.inner_text("#detail .seed").strip() == seed["text"].strip()
        if doc["reason"] in ("unfaithful", "meta_commentary"):
            assert page.locator("#detail mark").count() >= 1

        labelled = []
        for key, name in (("u", "unfaithful"), ("m", "meta"), ("c", "clean")):
            current = page.locator("#list tbody tr.open").get_attribute("data-id")
            page.keyboard.press(key)  # labels the open document and opens the next one
            expect(page.locator("#saved")).to_have_text(f"saved {name} for {current[:12]}")
            labelled.append((current, name))
        lines = wait_lines(root / "labels.jsonl", 3)
        assert [(x["id"], x["label"]) for x in lines] == labelled and {x["reviewer"] for x in lines} == {"alice"}

        page.reload()
        page.wait_for_selector("body[data-ready='1']", timeout=10_000)
        page.select_option("#f-label", "labeled")
        expect(page.locator("#pageinfo")).to_contain_text("(3 entries)")
        shown = dict(zip(page.locator("#list tbody tr").evaluate_all("rs => rs.map(r => r.dataset.id)"),
                         page.locator("#list tbody tr td.mylabel").all_inner_texts()))
        assert shown == dict(labelled)
        assert "3 labeled by you" in page.inner_text("#who")
        page.locator("#list tbody tr").nth(0).click()
        page.wait_for_selector("#detail .labelbar button.on")
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / "review_page.png"), full_page=True)
        assert not errors, errors
    finally:
        srv.stop_thread()
