"""`report.html` from a real `robopolicy eval`, opened in a real headless Chromium."""

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = [pytest.mark.slow, pytest.mark.skipif(CHROMIUM is None, reason="Chromium is not installed (README: Install)")]


@pytest.fixture(scope="module")
def eval_folder(toy_checkpoint, tmp_path_factory):
    out = tmp_path_factory.mktemp("report") / "eval"
    run = subprocess.run([sys.executable, "-m", "robopolicy.cli", "eval", "--checkpoint", str(toy_checkpoint),
                          "--env", "test/reach", "--episodes", "6", "--videos", "4", "--workers", "1",
                          "--out", str(out), "--no-progress"], capture_output=True, text=True, timeout=600,
                         env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert run.returncode == 0, run.stderr[-2000:]
    return out


def test_eval_report_loads_plays_its_videos_and_shows_the_summary(eval_folder, tmp_path):
    from PIL import Image
    from playwright.sync_api import sync_playwright

    summary = json.loads((eval_folder / "eval.json").read_text())
    n_videos = len(summary["videos"])
    assert n_videos >= 2
    problems = []
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=["--autoplay-policy=no-user-gesture-required"])
        page = browser.new_page(viewport={"width": 1200, "height": 900})
        page.on("console", lambda m: problems.append(f"console {m.type}: {m.text}") if m.type == "error" else None)
        page.on("pageerror", lambda e: problems.append(f"page error: {e}"))
        page.on("requestfailed", lambda r: problems.append(f"request failed: {r.url}"))
        page.goto((eval_folder / "report.html").as_uri(), wait_until="load")
        text = page.inner_text("#summary")
        assert f"{summary['successes']} of {summary['episodes']} episodes" in text
        assert page.locator("#episodes tr").count() == 1 + summary["episodes"]
        videos = page.locator("video")
        assert videos.count() == n_videos
        for i in range(n_videos):  # each video decodes and its playback clock advances
            played = videos.nth(i).evaluate("""v => new Promise(resolve => {
                const done = ok => resolve({ok, error: v.error && v.error.code, ready: v.readyState, t: v.currentTime});
                v.addEventListener('error', () => done(false));
                v.addEventListener('timeupdate', () => { if (v.currentTime > 0) done(true); });
                v.play().catch(() => done(false));
                setTimeout(() => done(false), 15000);
            })""")
            assert played["ok"], played
        assert page.evaluate("() => document.querySelector('img').naturalWidth") > 0  # the success plot loaded
        shot = tmp_path / "summary.png"
        page.locator("#summary").screenshot(path=str(shot))
        browser.close()
    assert problems == []
    pixels = np.asarray(Image.open(shot).convert("L"))
    assert pixels.shape[1] > 300 and (pixels < 100).mean() > 0.01  # dark text on the light page: it rendered
